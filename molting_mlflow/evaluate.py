"""The evaluate stage: answer the evaluation questions with a model (+ adapter), score them with
Rubric v1.0, log D1–D5, the score and a per-question table to MLflow.

Generation follows the rubric's contract: the model's own chat template, the training system
prompt, greedy and batched, stopping at the model's end-of-turn token; the new tokens are decoded
WITHOUT dropping special tokens (only the final end-of-turn is cut), so a leaked `<|endoftext|>`
stays visible to D4/D5; `finish_reason` is `stop` when the end-of-turn came, `length` otherwise.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .persona import DATA_DIR, Persona, load_persona
from .rubric import DIMENSIONS, Question, load_questions, score_responses

DEFAULT_QUESTIONS = DATA_DIR / "eval_questions.json"


class AdapterError(ValueError):
    """The adapter reference cannot be resolved; the message says which forms work."""


@dataclass
class EvalConfig:
    run_id: str = ""                 # a train run: evaluates runs:/<run_id>/adapter
    adapter: str = ""                # runs:/…, models:/… or a local adapter folder
    model: str = ""                  # with neither: the bare base model (baseline); default smol
    questions: str = str(DEFAULT_QUESTIONS)
    persona: str = str(DATA_DIR / "persona.yaml")
    max_new_tokens: int = 96
    batch_size: int = 8
    seed: int = 42
    experiment: str = "molting"

    def __post_init__(self):
        from .config import ConfigError

        if self.run_id and self.adapter:
            raise ConfigError("give run_id or adapter, not both")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
            raise ConfigError(f"max_new_tokens={self.max_new_tokens!r} is invalid: expected a whole number in 1..4096")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} is invalid: expected a whole number ≥ 1")


def end_of_turn_id(tok) -> int:
    from .preflight import end_of_turn_token

    eot = end_of_turn_token(tok, tok.chat_template)
    return tok.convert_tokens_to_ids(eot) if eot else tok.eos_token_id


def generate(model, tok, questions: list[Question], system_prompt: str | None, max_new_tokens: int,
             batch_size: int = 8, seed: int = 42) -> tuple[list[dict], dict]:
    """Greedy answers, one record per question: {"id", "response", "finish_reason", "new_tokens"}."""
    import torch

    torch.manual_seed(seed)
    eot = end_of_turn_id(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eot
    side, tok.padding_side = tok.padding_side, "left"
    records, n_new, t0 = [], 0, time.time()
    dev = next(model.parameters()).device
    try:
        for i in range(0, len(questions), batch_size):
            chunk = questions[i:i + batch_size]
            prompts = [tok.apply_chat_template(([{"role": "system", "content": system_prompt}] if system_prompt else [])
                                               + [{"role": "user", "content": q.question}],
                                               tokenize=False, add_generation_prompt=True) for q in chunk]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eot,
                                     pad_token_id=pad)
            for q, row in zip(chunk, out[:, enc["input_ids"].shape[1]:].tolist()):
                stop = eot in row
                ids = row[:row.index(eot)] if stop else row
                n_new += len(ids) + stop
                records.append({"id": q.id, "response": tok.decode(ids, skip_special_tokens=False),
                                "finish_reason": "stop" if stop else "length", "new_tokens": len(ids) + stop})
    finally:
        tok.padding_side = side
    secs = time.time() - t0
    return records, {"gen_tokens": n_new, "gen_seconds": secs, "gen_tokens_per_s": n_new / secs if secs else 0.0}


def score_and_log(records: list[dict], questions: list[Question], persona: Persona, stats: dict) -> dict:
    """Score generated answers and log metrics, the per-question table and generation stats to the active run."""
    import mlflow
    import pandas as pd

    scored = score_responses(questions, records, persona)
    s = scored["summary"]
    mlflow.log_metrics({d: s[d] for d in DIMENSIONS} | {"score": s["score"]} | stats)
    rows = [{"id": r["id"], "question": r["question"], "response": r["response"],
             "finish_reason": r["finish_reason"], **{d: r[d] for d in DIMENSIONS}, "score": r["score"],
             "reasons": "; ".join(r["reasons"])} for r in scored["results"]]
    mlflow.log_table(data=pd.DataFrame(rows), artifact_file="eval_results.json")
    return scored


def format_summary(scored: dict) -> str:
    s = scored["summary"]
    head = "  ".join(f"{d.split('_')[0].upper()} {s[d]:.2f}" for d in DIMENSIONS)
    lines = [f"rubric v1.0: score {s['score']:.2f}/10   ({head})"]
    for r in scored["results"]:
        lines.append(f"  {r['id']} {r['score']:>2}/10  {r['response'][:90]!r}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Standalone evaluation: resolve the adapter, rebuild its base, generate, score, log.
# ---------------------------------------------------------------------------------------------

def resolve_adapter(ref: str) -> Path:
    """runs:/<id>/adapter, models:/<name>@<alias> or /<version>, or a local folder → a local adapter folder."""
    if ref.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except Exception as e:  # MlflowException for missing runs/models, OSError for missing paths
            raise AdapterError(f"adapter {ref!r} not found ({str(e).splitlines()[0][:200]})") from None
    else:
        local = Path(ref).expanduser()
    for cand in (local, local / "artifacts" / "adapter", local / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise AdapterError(f"adapter {ref!r}: no adapter_config.json in {local}; pass run_id=<train run>, "
                       "adapter=runs:/<run>/adapter, models:/<name>@<alias> or a PEFT adapter folder")


def load_adapter_model(adapter_dir: Path):
    """Rebuild the base named in the adapter's molting.json (4-bit on CUDA) and apply the adapter."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from .models import device, load_model, resolve_model

    meta_path = adapter_dir / "molting.json"
    if not meta_path.is_file():
        raise AdapterError(f"{adapter_dir}: no molting.json (not written by molting train); cannot tell its base model")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    source = resolve_model(meta["model"])
    base, _ = load_model(source, device())
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(adapter_dir))
    return model, tok, meta


def evaluate(cfg: EvalConfig, log=print) -> dict:
    import mlflow

    from .tracking import stage_run
    from .train import set_threads

    persona = load_persona(cfg.persona)
    questions = load_questions(cfg.questions)
    set_threads()
    ref = f"runs:/{cfg.run_id}/adapter" if cfg.run_id else cfg.adapter
    tags = {"molting.stage": "evaluate"}
    if ref:
        adapter_dir = resolve_adapter(ref)
        model, tok, meta = load_adapter_model(adapter_dir)
        system_prompt = meta.get("system_prompt")
        tags.update({"molting.adapter": ref, "molting.model": meta["model"]})
        if meta.get("train_run_id"):
            tags["molting.train_run_id"] = meta["train_run_id"]
        name = f"eval-{meta['model']}-{(meta.get('train_run_id') or 'adapter')[:8]}"
    else:
        from .models import device, load_model, load_tokenizer, resolve_model

        model_name = cfg.model or "smol"
        source = resolve_model(model_name)
        model, _ = load_model(source, device())
        model.eval()
        tok = load_tokenizer(source)
        system_prompt = persona.system_prompt
        tags.update({"molting.baseline": "true", "molting.model": model_name})
        name = f"baseline-{model_name}"
    with stage_run(cfg.experiment, name, tags):
        mlflow.log_params({"eval.questions": cfg.questions, "eval.max_new_tokens": cfg.max_new_tokens,
                           "eval.seed": cfg.seed, "eval.system_prompt": (system_prompt or "none")[:500],
                           "eval.greedy": True})
        records, stats = generate(model, tok, questions, system_prompt, cfg.max_new_tokens, cfg.batch_size, cfg.seed)
        scored = score_and_log(records, questions, persona, stats)
    log(format_summary(scored))
    return scored
