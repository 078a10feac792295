"""End-to-end train on tiny-random, checked through the MLflow client (plumbing: no score claims)."""
import json
import re
from pathlib import Path

import pytest
from helpers import store_in, use_store
from mlflow.tracking import MlflowClient

from molting_mlflow.ground.config import DEFAULT_DATASET, TrainConfig
from molting_mlflow.ground.data import load_dataset
from molting_mlflow.ground.rubric import DIMENSIONS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One short tiny-random train (20 steps, evaluated) shared by the assertions below."""
    import mlflow

    from molting_mlflow.stages.train import train

    d = tmp_path_factory.mktemp("tiny")
    with store_in(d) as uri:
        result = train(TrainConfig(model="tiny-random", epochs=2, min_steps=0, eval_max_new_tokens=8),
                       log=lambda *a: None)
    return result, MlflowClient(tracking_uri=uri), d


def test_run_finished_with_preflight_tag(tiny_run):
    result, client, _ = tiny_run
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["molting.preflight"] == "pass" and run.data.tags["molting.plumbing_only"] == "true"
    assert client.get_experiment(run.info.experiment_id).name == "molting"


def test_resolved_config_logged_as_params(tiny_run):
    result, client, _ = tiny_run
    p = client.get_run(result.run_id).data.params
    # 79 examples / batch 8 = 10 steps an epoch × 2 epochs
    assert p["train.epochs"] == "2" and p["train.batch_size"] == "8" and p["train.grad_accum"] == "1"
    assert p["train.optimizer_steps"] == "20" and p["train.lr"] == "0.001" and p["train.seed"] == "42"
    assert p["train.lora_r"] == "8" and p["lora.targets"].startswith("q_proj,k_proj")
    assert p["model.name"] == "tiny-random" and p["model.revision"] == "random-init"
    assert len(p["data.sha256"]) == 64 and p["data.examples"] == "79"
    assert p["data.system_prompt_source"] == "persona" and p["data.system_prompts_added"] == "79"
    assert p["template.source"] == "model" and p["template.end_of_turn"] == "<|im_end|>"
    assert p["train.device"] == "cpu" and p["train.precision"] == "fp32" and p["train.micro_batch"] == "8"
    assert p["code.version"].startswith("0.1.0")


def test_loss_logged_at_every_optimizer_step(tiny_run):
    result, client, _ = tiny_run
    run = client.get_run(result.run_id)
    hist = client.get_metric_history(result.run_id, "loss")
    assert [m.step for m in hist] == list(range(1, 21))
    assert run.data.metrics["optimizer_steps"] == 20 == len(hist)
    assert len(client.get_metric_history(result.run_id, "learning_rate")) == 20
    assert len(client.get_metric_history(result.run_id, "grad_norm")) == 20
    assert run.data.metrics["final_loss"] == pytest.approx(sum(m.value for m in hist[-10:]) / 10)
    for m in ("train_tokens", "train_runtime_s", "train_tokens_per_s", "peak_memory_mb"):
        assert run.data.metrics[m] > 0


def test_artifacts_and_dataset_input(tiny_run):
    result, client, _ = tiny_run
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"adapter", "loss_curve.png", "preflight.json", "preflight.txt", "example_rendered.txt",
            "eval_results.json"} <= names
    adapter = {Path(a.path).name for a in client.list_artifacts(result.run_id, "adapter")}
    assert {"adapter_config.json", "adapter_model.safetensors", "molting.json", "tokenizer.json"} <= adapter
    example = client.download_artifacts(result.run_id, "example_rendered.txt")
    text = Path(example).read_text(encoding="utf-8")
    answer = load_dataset(str(DEFAULT_DATASET), None).rows[0]["completion"][-1]["content"]
    body = text.split("\n\n", 1)[1]  # after the header, which names the marks
    # the loss falls on example 0's answer and its end-of-turn token, and nowhere else
    assert [s.rstrip("\n") for s in re.findall("⟦(.*?)⟧", body, flags=re.S)] == [answer + "<|im_end|>"], text
    pre = json.loads(Path(client.download_artifacts(result.run_id, "preflight.json")).read_text())
    assert pre["status"] == "pass" and pre["numbers"]["optimizer_steps"] == 20
    run = client.get_run(result.run_id)
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "dataset_personality_v1.json"


def test_evaluation_metrics_on_the_train_run(tiny_run):
    result, client, _ = tiny_run
    m = client.get_run(result.run_id).data.metrics
    for d in (*DIMENSIONS, "score"):
        assert 0 <= m[d] <= (10 if d == "score" else 2)
    assert m["score"] == pytest.approx(sum(m[d] for d in DIMENSIONS))
    rows = json.loads(Path(client.download_artifacts(result.run_id, "eval_results.json")).read_text())
    assert len(rows["data"]) == 8 and "response" in rows["columns"] and "reasons" in rows["columns"]


def test_adapter_loads_back_and_changes_outputs(tiny_run):
    """The saved adapter loads with PeftModel on a fresh base and moves its logits."""
    import torch
    from peft import PeftModel

    from molting_mlflow.ground.models import build_tiny_random

    result, client, _ = tiny_run
    path = client.download_artifacts(result.run_id, "adapter")
    base, tok = build_tiny_random()
    ids = tok("Quem é você?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, path).eval()
        after = model(ids).logits
        with model.disable_adapter():
            disabled = model(ids).logits
    assert torch.allclose(before, disabled)
    assert (after - before).abs().max() > 1e-4


def test_compare_table(tiny_run, monkeypatch):
    from click.testing import CliRunner

    from molting_mlflow.cli import cli

    result, client, d = tiny_run
    use_store(monkeypatch, client.tracking_uri)
    r = CliRunner().invoke(cli, ["compare", "--csv", "runs.csv"])
    assert r.exit_code == 0, r.output
    header = r.output.splitlines()[0].split()
    assert header[:10] == ["run_id", "name", "score", "D1", "D2", "D3", "D4", "D5", "steps", "loss"]
    assert result.run_id[:8] in r.output
    import pandas as pd

    assert len(pd.read_csv("runs.csv")) == 1
    r = CliRunner().invoke(cli, ["compare", "--experiment", "nope"])
    assert r.exit_code == 2 and "no experiment named 'nope'" in r.output


def test_marked_example_keeps_multibyte_characters_whole():
    """A character split over byte-level tokens (🐢 here) is decoded whole in its span, not shown as �."""
    from types import SimpleNamespace

    from molting_mlflow.ground.models import tiny_tokenizer
    from molting_mlflow.stages.train import _marked_example

    tok = tiny_tokenizer()
    prompt, answer = tok.encode("Oi"), tok.encode(" Sou o Cláudio 🐢<|im_end|>")
    assert len(tok.encode("🐢")) > 1  # the case under test: a character split over tokens
    row = {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}
    text = _marked_example(SimpleNamespace(train_dataset=[row]), tok)
    assert "Oi⟦ Sou o Cláudio 🐢<|im_end|>⟧" in text and "\ufffd" not in text
