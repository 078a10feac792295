"""The real chat templates of TinyLlama-1.1B-Chat-v1.0 and of Phi-3-mini-4k-instruct (its first revision,
which drops the system turn, and the later one), carried by tiny random models of those architectures:
the system prompt reaches the model (folded where the template drops it) in training, evaluation, chat
and the registered model; the trained span closes with the template's end-of-turn token; generation
stops there and on the model's other end tokens; the GPT-2 separators are an error; every fix
pre-flight offers passes pre-flight; and `molting preflight --model phi3` rehearses without weights."""
from dataclasses import replace

import pytest
from click.testing import CliRunner

from molting_mlflow.cli import cli
from molting_mlflow.ground import generation
from molting_mlflow.ground.config import TrainConfig
from molting_mlflow.ground.paths import DEFAULT_PERSONA, GPT2_TEMPLATE
from molting_mlflow.ground.persona import load_persona
from molting_mlflow.ground.prepare import prepare
from molting_mlflow.ground.rehearsal import build_tiny, real_templates, revision, stand_in_tokenizer
from molting_mlflow.ground.templates import end_of_turn_token, template_drops_system

CASES = [("tinyllama", "v1.0"), ("phi3", "original"), ("phi3", "later")]
SYSTEM = load_persona(DEFAULT_PERSONA).system_prompt


def errors(report) -> dict:
    return {f.check: f for f in report.findings if f.level == "error"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-real")
    return {case: build_tiny(*case, d / "-".join(case)) for case in CASES}


@pytest.fixture
def use(tiny_models, monkeypatch):
    """Point a preset at the tiny model carrying that revision's template (MOLTING_<PRESET>_PATH)."""
    def _use(model, rev):
        monkeypatch.setenv(f"MOLTING_{model.upper()}_PATH", str(tiny_models[(model, rev)]))
        return model
    return _use


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    for preset in ("PHI3", "TINYLLAMA"):
        monkeypatch.delenv(f"MOLTING_{preset}_PATH", raising=False)


# ---------------------------------------------------------------------------------------------
# The data: cited, and what the stand-in tokenizer carries is what the data says
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,rev", CASES)
def test_each_template_is_cited_and_carried_exactly(model, rev):
    _, r = revision(model, rev)
    assert r["sources"] and all(("commit" in s or "url" in s or "package" in s) and s["what"] for s in r["sources"])
    tok = stand_in_tokenizer(model, rev)
    assert tok.chat_template == r["chat_template"]
    for role, (text, i) in r["tokens"].items():
        assert getattr(tok, f"{role}_token") == text and getattr(tok, f"{role}_token_id") == i, role
    for text, i, _ in r["added"]:
        assert tok.convert_tokens_to_ids(text) == i
    assert end_of_turn_token(tok, r["chat_template"]) == r["end_of_turn"]
    assert template_drops_system(tok, r["chat_template"]) is r["drops_system"]


def test_phi3_original_is_the_one_that_drops_the_system_turn():
    assert [(m, rev) for m, rev in CASES if revision(m, rev)[1]["drops_system"]] == [("phi3", "original")]
    assert real_templates()["phi3"]["config"]["vocab_size"] == 32064


# ---------------------------------------------------------------------------------------------
# Pre-flight through each real template
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,rev", CASES)
def test_the_system_prompt_reaches_the_model_folded_where_the_template_drops_it(use, model, rev):
    p = prepare(TrainConfig(model=use(model, rev)))
    drops = revision(model, rev)[1]["drops_system"]
    assert p.report.status == "pass", p.report.to_text()
    assert SYSTEM in p.report.rendered and p.fold is drops and p.dataset.folded is drops
    info = {f.check: f for f in p.report.findings if f.level == "info"}
    assert ("folded into the first user turn" in info["system_prompt"].message) is drops
    # at inference the same: generation's prompt carries it (folded as it trained)
    tok = p.tokenizer
    prompt = tok.apply_chat_template(generation.messages(SYSTEM, "Quem é você?", p.fold), tokenize=False,
                                     add_generation_prompt=True)
    assert SYSTEM in prompt and prompt.rstrip().endswith("<|assistant|>")


@pytest.mark.parametrize("model,rev", CASES)
def test_the_trained_span_closes_with_the_templates_end_of_turn_token(use, model, rev):
    p = prepare(TrainConfig(model=use(model, rev)))
    eot = revision(model, rev)[1]["end_of_turn"]
    assert p.report.numbers["end_of_turn_token"] == eot and p.report.numbers["end_of_turn_trained"] is True
    tok, row = p.tokenizer, p.dataset.rows[0]
    prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
    full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)["input_ids"]
    assert full[:len(prompt)] == prompt
    trained = full[len(prompt):]
    answer = row["completion"][0]["content"]
    assert tok.decode(trained, skip_special_tokens=False).startswith(answer + eot)
    assert tok.convert_tokens_to_ids(eot) in trained


@pytest.mark.parametrize("model,rev", CASES)
def test_the_users_gpt2_separators_are_an_error(use, model, rev):
    r = prepare(TrainConfig(model=use(model, rev), chat_template=str(GPT2_TEMPLATE))).report
    assert r.status == "fail" and "end_of_turn" in errors(r)
    eot = revision(model, rev)[1]["end_of_turn"]
    assert f"end-of-turn token {eot}" in errors(r)["end_of_turn"].message


BAD = [dict(chat_template=str(GPT2_TEMPLATE)), dict(system_prompt="none"), dict(epochs=5),
       dict(epochs=5, system_prompt="none", chat_template=str(GPT2_TEMPLATE))]


@pytest.mark.parametrize("model,rev", CASES + [("tiny-random", None)])
@pytest.mark.parametrize("bad", BAD)
def test_every_fix_preflight_offers_passes_preflight(use, model, rev, bad):
    """Each fix a finding offers (its `fixes` field, the settings its message names), applied, clears
    that finding and brings no new error (the Phi-3 original template's system-turn error offered
    chat_template=model: the template that drops it)."""
    name = use(model, rev) if rev else model
    cfg = TrainConfig(model=name, **bad)
    report = prepare(cfg).report
    before = errors(report)
    assert before
    for finding in (f for f in report.findings if f.level == "error"):
        assert finding.fixes, (finding.check, finding.message)
        for fix in finding.fixes:
            assert all(f"{k}={v}" in finding.message for k, v in fix.items()), (fix, finding.message)
            after = errors(prepare(replace(cfg, **fix)).report)
            assert finding.check not in after and set(after) <= set(before), (fix, [f.message for f in after.values()])


def test_strict_mode_with_the_persona_on_the_original_phi3_template_passes(use):
    p = prepare(TrainConfig(model=use("phi3", "original"), system_prompt="persona", preflight="strict"))
    assert p.report.status == "pass" and p.fold


def test_system_prompt_fold_is_asked_for_explicitly(use):
    p = prepare(TrainConfig(model=use("phi3", "later"), system_prompt="fold"))
    assert p.fold and p.report.status == "pass"
    assert p.dataset.rows[0]["prompt"][0]["role"] == "user"
    assert p.dataset.rows[0]["prompt"][0]["content"].startswith(SYSTEM + "\n\n")
    assert "asked for (system_prompt=fold)" in {f.check: f for f in p.report.findings}["system_prompt"].message


# ---------------------------------------------------------------------------------------------
# Generation stops on the end-of-turn token and the model's other end tokens
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,rev", CASES)
def test_generation_stops_on_the_end_of_turn_and_the_other_end_tokens(tiny_models, model, rev):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from molting_mlflow.ground.questions import Question

    folder = tiny_models[(model, rev)]
    m, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    vocab = m.config.vocab_size

    class Emit(torch.nn.Module):
        """An LM head that always predicts one token."""

        def __init__(self, token):
            super().__init__()
            self.token = token

        def forward(self, h):
            out = torch.zeros(*h.shape[:-1], vocab, dtype=h.dtype)
            out[..., self.token] = 1.0
            return out

    eot = tok.convert_tokens_to_ids(revision(model, rev)[1]["end_of_turn"])
    others = set(real_templates()[model]["generation_eos_token_ids"]) | {tok.eos_token_id}
    assert generation.stop_ids(tok, m)[0] == eot and set(generation.stop_ids(tok, m)) == {eot} | others
    q = [Question("q", "Quem é você?", False, [], [], [])]
    for token in [eot, *sorted(others)]:
        m.lm_head = Emit(token)
        (rec,), _ = generation.generate(m, tok, q, SYSTEM, 5)
        assert (rec["finish_reason"], rec["new_tokens"], rec["response"]) == ("stop", 1, ""), token
    m.lm_head = Emit(100)   # an ordinary token: runs to the limit
    (rec,), _ = generation.generate(m, tok, q, SYSTEM, 5)
    assert rec["finish_reason"] == "length" and rec["new_tokens"] == 5


# ---------------------------------------------------------------------------------------------
# Training, evaluation, chat and the registered model through each template
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def prompts_seen(monkeypatch):
    """Every prompt generation builds (system prompt, question, fold), as the model receives it."""
    seen = []
    real = generation.messages

    def spy(system_prompt, user, fold=False):
        seen.append(real(system_prompt, user, fold))
        return seen[-1]

    monkeypatch.setattr(generation, "messages", spy)
    return seen


def _train(cfg):
    import mlflow

    from molting_mlflow.stages.train import train

    result = train(cfg, log=lambda *a: None)
    local = mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/")
    return result, local


def _trained_spans(local) -> list[str]:
    import re
    from pathlib import Path

    text = (Path(local) / "example_rendered.txt").read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("# "))   # the header names ⟦ and ⟧
    return re.findall(r"⟦(.*?)⟧", body, re.S)


def _reaches(prompts, fold):
    """Every prompt carries the system prompt, as its own turn or folded into the first user turn."""
    assert prompts
    for turns in prompts:
        assert [t["role"] for t in turns] == (["user"] if fold else ["system", "user"])
        assert turns[0]["content"].startswith(SYSTEM)


@pytest.mark.parametrize("model,rev", [("tinyllama", "v1.0"), ("phi3", "later")])
def test_train_evaluate_and_chat_through_the_template(use, prompts_seen, tmp_path, model, rev):
    """A few steps on 8 of the shipped examples (plumbing: the template, not the hyperparameters)."""
    import json
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from molting_mlflow.ground.config import DEFAULT_DATASET, EvalConfig
    from molting_mlflow.stages.evaluate import evaluate

    eot = revision(model, rev)[1]["end_of_turn"]
    few = tmp_path / "few.json"
    few.write_text(json.dumps(json.loads(DEFAULT_DATASET.read_text(encoding="utf-8"))[:8]), encoding="utf-8")
    result, local = _train(TrainConfig(model=use(model, rev), dataset=str(few), epochs=1, batch_size=4, grad_accum=1,
                                       min_steps=0, eval_max_new_tokens=4))
    assert result.optimizer_steps == 2 and result.scores
    spans = _trained_spans(local)
    assert spans and all(eot in span and SYSTEM not in span for span in spans)
    meta = json.loads((Path(local) / "adapter" / "molting.json").read_text(encoding="utf-8"))
    assert meta["system_prompt"] == SYSTEM and meta["system_prompt_fold"] is False
    _reaches(prompts_seen, fold=False)
    prompts_seen.clear()
    evaluate(EvalConfig(run_id=result.run_id, max_new_tokens=4), log=lambda *a: None)
    _reaches(prompts_seen, fold=False)
    prompts_seen.clear()
    out = CliRunner().invoke(cli, ["chat", "--model", f"runs:/{result.run_id}/adapter", "--max-new-tokens", "4",
                                   "Quem é você?"])
    assert out.exit_code == 0, out.output
    _reaches(prompts_seen, fold=False)
    assert MlflowClient().get_run(result.run_id).data.params["data.system_prompt_fold"] == "False"


@pytest.fixture(scope="module")
def phi3_original_run(tmp_path_factory, tiny_models):
    """The Phi-3 original-template case with the phi3 preset's defaults (8 epochs × 20 steps, LR 1e-4,
    strict pre-flight, the persona's system prompt): trained and evaluated in one run."""
    import os

    import mlflow

    d = tmp_path_factory.mktemp("phi3-original")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "MOLTING_PHI3_PATH": str(tiny_models[("phi3", "original")])}
    old = {k: os.environ.get(k) for k in env}
    old_cwd = os.getcwd()
    os.environ.update(env)
    os.chdir(d)
    mlflow.set_tracking_uri(uri)
    try:
        result, local = _train(TrainConfig(model="phi3"))
    finally:
        os.chdir(old_cwd)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return result, local, uri, env


@pytest.mark.slow
def test_phi3_original_trains_and_evaluates_end_to_end_with_the_defaults(phi3_original_run):
    import json
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    result, local, uri, _ = phi3_original_run
    run = MlflowClient(tracking_uri=uri).get_run(result.run_id)
    p = run.data.params
    assert run.info.status == "FINISHED" and run.data.tags["molting.preflight"] == "pass"
    assert (p["train.epochs"], p["train.grad_accum"], p["train.lr"]) == ("8", "4", "0.0001")
    assert result.optimizer_steps == 160 and "score" in run.data.metrics and "ref_nll" in run.data.metrics
    assert p["data.system_prompt_fold"] == "True" and p["template.end_of_turn"] == "<|end|>"
    assert p["lora.targets"] == "qkv_proj,o_proj,gate_up_proj,down_proj"
    spans = _trained_spans(local)
    assert spans and all(span.endswith("<|end|>") for span in spans)
    meta = json.loads((Path(local) / "adapter" / "molting.json").read_text(encoding="utf-8"))
    assert meta["system_prompt_fold"] is True and meta["system_prompt"] == SYSTEM
    pre = json.loads((Path(local) / "preflight.json").read_text(encoding="utf-8"))
    assert SYSTEM in pre["rendered_example"] and "<|system|>" not in pre["rendered_example"]


@pytest.mark.slow
def test_phi3_original_evaluation_chat_and_registered_model_fold_the_prompt(phi3_original_run, monkeypatch,
                                                                            prompts_seen):
    import mlflow
    import mlflow.pyfunc

    from molting_mlflow.ground.config import EvalConfig
    from molting_mlflow.stages.evaluate import evaluate
    from molting_mlflow.stages.registry import register_adapter

    result, _, uri, env = phi3_original_run
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    mlflow.set_tracking_uri(uri)
    evaluate(EvalConfig(run_id=result.run_id, max_new_tokens=4), log=lambda *a: None)
    _reaches(prompts_seen, fold=True)
    prompts_seen.clear()
    out = CliRunner().invoke(cli, ["chat", "--model", f"runs:/{result.run_id}/adapter", "--max-new-tokens", "4",
                                   "Quem é você?"])
    assert out.exit_code == 0, out.output
    _reaches(prompts_seen, fold=True)
    prompts_seen.clear()
    version = register_adapter(result.run_id, "phi3", log=lambda *a: None)
    model = mlflow.pyfunc.load_model(f"models:/molting-phi3/{version}")
    (answer,) = model.predict(["Quem é você?"], params={"max_new_tokens": 4})
    assert isinstance(answer, str)
    _reaches(prompts_seen, fold=True)


# ---------------------------------------------------------------------------------------------
# The rehearsal without weights, and the 4 GB plan for the real configs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,params,longest", [("phi3", 3_821_079_552, 4096), ("tinyllama", 1_100_048_384, 2048)])
def test_the_preset_defaults_fit_a_4gb_card_for_the_real_config(model, params, longest):
    from molting_mlflow.ground import runtime
    from molting_mlflow.ground.models import param_counts
    from molting_mlflow.ground.presets import lora_targets
    from molting_mlflow.ground.rehearsal import model_config

    config = model_config(model)
    cfg = TrainConfig(model=model).resolve()
    total, trainable, _ = param_counts(config, cfg.lora_r, lora_targets(model))
    assert total == params and config.max_position_embeddings == longest
    # the worst case of the preset: every example fills max_seq_len
    plan = runtime.plan("auto", cfg.examples_per_step, model_config=config, total=total, trainable=trainable,
                        seq=cfg.max_seq_len, gpu_memory_gib=4, dev="cuda")
    assert plan.est_gib <= 4 - runtime.CUDA_OVERHEAD_GIB and plan.micro_batch * plan.accum == cfg.examples_per_step


@pytest.mark.parametrize("args,revision_named", [(["--model", "phi3"], "later"),
                                                 (["--model", "tinyllama"], "v1.0"),
                                                 (["--model", "phi3", "--template-revision", "original"], "original")])
def test_preflight_rehearses_without_weights(no_hub_cache, args, revision_named):
    out = CliRunner().invoke(cli, ["preflight", *args])
    assert out.exit_code == 0, out.output
    text = out.output
    assert text.startswith("pre-flight: PASS") and f"template revision '{revision_named}'" in text
    assert "Token counts are APPROXIMATE" in text
    assert "= 160 optimizer steps" in text and "an assistant turn ends with" in text
    assert "system prompt" in text and "of a 4.0 GiB budget" in text and "[info] plan: cuda" in text
    assert ("folded into the first user turn" in text) is (revision_named == "original")


def test_train_without_weights_fails_fast_in_one_line(no_hub_cache):
    from mlflow.tracking import MlflowClient

    out = CliRunner().invoke(cli, ["train", "--model", "phi3"])
    assert out.exit_code == 2 and out.output.count("\n") == 1
    assert "weights for microsoft/Phi-3-mini-4k-instruct not found" in out.output
    assert not MlflowClient().search_experiments() or not MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()])


def test_the_users_plan_gets_preflights_verdict(no_hub_cache):
    out = CliRunner().invoke(cli, ["preflight", "--model", "phi3", "--epochs", "5", "--grad-accum", "4", "--lr", "1e-4"])
    assert out.exit_code == 1
    assert "100 optimizer steps, below the minimum of 150" in out.output
    assert "Fix: epochs=8 (160 steps) or grad_accum=2 (200 steps)" in out.output


def test_cached_tokenizer_files_make_the_rehearsal_exact(no_hub_cache, tmp_path):
    """With config and tokenizer files in the HF cache (no weights), the rehearsal reads them there."""
    from pathlib import Path

    from huggingface_hub import constants
    from test_hf_cache import fake_cache

    folder = build_tiny("phi3", "original", tmp_path / "real-ish")
    files = {f.name: f.read_bytes() for f in folder.iterdir() if f.name != "model.safetensors"}
    fake_cache(Path(constants.HF_HUB_CACHE), "microsoft/Phi-3-mini-4k-instruct", {"c" * 40: files},
               {"main": "c" * 40})
    out = CliRunner().invoke(cli, ["preflight", "--model", "phi3"])
    assert out.exit_code == 0, out.output
    assert "from the Hugging Face cache" in out.output and "token counts exact" in out.output
    assert "folded into the first user turn" in out.output   # the cached template is the original one
