"""The train stage: pre-flight, then TRL's SFTTrainer with a peft LoRA, every step in MLflow.

Order matters for the user: everything that can be wrong with the input (config, model, dataset,
template) is found before a run is opened or a weight is loaded, so a mistake costs seconds.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .data import ChatDataset, load_dataset
from .models import ModelSource, device, load_model, load_precision, load_tokenizer, resolve_model, sha256_file
from .evaluate import DEFAULT_QUESTIONS
from .persona import load_persona
from .preflight import PreflightReport, run_preflight
from .presets import lora_targets


class PreflightFailed(RuntimeError):
    """Pre-flight found errors and preflight=strict."""


@dataclass
class Prepared:
    """Everything known before training: resolved config, model source, data, template, report."""

    cfg: TrainConfig
    source: ModelSource
    dataset: ChatDataset
    tokenizer: object
    own_template: str
    template: str
    template_source: str
    system_prompt_text: str | None
    report: PreflightReport
    dev: str
    lora_targets: tuple | str


@dataclass
class TrainResult:
    run_id: str
    optimizer_steps: int
    final_loss: float
    train_runtime_s: float
    adapter_uri: str
    preflight: str
    losses: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)     # Rubric v1.0 summary when the run evaluated itself


def set_threads() -> int:
    """Pin torch's CPU threads (MOLTING_THREADS, default: all cores). Oversubscribed cores make
    torch dozens of times slower (seen here: 2 threads with one core busy ran ~55× slower)."""
    import torch

    n = int(os.environ.get("MOLTING_THREADS", "0") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def prepare(cfg: TrainConfig) -> Prepared:
    """Resolve and check everything; raises ConfigError/ModelError/DatasetError/PersonaError on bad input."""
    cfg = cfg.resolve()
    cpu_autocast()  # a bad MOLTING_CPU_AMP fails here, before a run opens
    persona = load_persona(cfg.persona)
    source = resolve_model(cfg.model)
    if cfg.system_prompt == "none":
        sp = None
    elif cfg.system_prompt == "persona":
        sp = persona.system_prompt
    else:
        sp = cfg.system_prompt
    ds = load_dataset(cfg.dataset, sp)
    if sp is not None:
        ds.system_prompt_source = ("dataset" if ds.system_prompts_added == 0 else
                                   "persona" if cfg.system_prompt == "persona" else "custom")
    tok = load_tokenizer(source)
    own = tok.chat_template
    if not own:
        from .models import ModelError
        raise ModelError(f"model '{cfg.model}': its tokenizer has no chat template; pass chat_template=<jinja file>")
    if cfg.chat_template == "model":
        template, template_source = own, "model"
    else:
        template = Path(cfg.chat_template).read_text(encoding="utf-8")
        template_source = f"file:{cfg.chat_template}"
    model_config = _model_config(source)
    dev = device()
    report = run_preflight(cfg, ds, tok, own, template, model_config, cuda=dev == "cuda")
    tok.chat_template = template
    targets = lora_targets(cfg.model, getattr(model_config, "model_type", None))
    return Prepared(cfg, source, ds, tok, own, template, template_source, sp, report, dev, targets)


def _model_config(source: ModelSource):
    if source.kind == "tiny-random":
        from .models import build_tiny_random
        return build_tiny_random()[0].config
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(source.path, local_files_only=True)


def run_params(p: Prepared, precision: str) -> dict:
    """The resolved config, logged verbatim: what trained, on what, from which data and template."""
    cfg = p.cfg
    params = cfg.as_params()
    params.update(p.source.as_params())
    params.update({
        "train.optimizer_steps": p.report.numbers["optimizer_steps"],
        "train.lr_schedule": "linear",
        "train.optimizer": "paged_adamw_8bit" if p.dev == "cuda" else "adamw_torch",
        "train.device": p.dev,
        "train.precision": precision,
        "train.gradient_checkpointing": p.dev == "cuda",
        "lora.targets": ",".join(p.lora_targets) if not isinstance(p.lora_targets, str) else p.lora_targets,
        "data.sha256": p.dataset.sha256,
        "data.examples": len(p.dataset),
        "data.format": p.dataset.source_format,
        "data.system_prompt_source": p.dataset.system_prompt_source,
        "data.system_prompts_added": p.dataset.system_prompts_added,
        "data.system_prompts_removed": p.dataset.system_prompts_removed,
        "template.source": p.template_source,
        "template.sha256": __import__("hashlib").sha256(p.template.encode()).hexdigest(),
        "template.end_of_turn": p.report.numbers.get("end_of_turn_token"),
    })
    return params


# Params that name where things are, or how the run was asked for, not what trains: left out of
# the fingerprint, so the same config from `mlflow run` (relative paths) and a sweep (absolute) match.
_NOT_IN_FINGERPRINT = {"train.experiment", "train.dataset", "train.persona", "train.chat_template",
                       "train.preflight", "train.min_steps", "train.cpu_threads", "model.source", "template.source"}


def fingerprint(p: Prepared, precision: str | None = None) -> str:
    """sha256 of everything that decides a run's adapter and scores: the resolved config, the model
    revision, the dataset, the system prompt text, the template, the persona, the questions and the
    device/precision. Training is seeded, so two runs with one fingerprint train the same adapter (up
    to floating-point reduction order) and a sweep may reuse a finished one instead of retraining."""
    import hashlib

    if precision is None:
        precision = training_precision(p)
    ident = {k: str(v) for k, v in run_params(p, precision).items() if k not in _NOT_IN_FINGERPRINT}
    ident.update({
        "system_prompt_text": p.system_prompt_text or "",
        "persona.sha256": sha256_file(Path(p.cfg.persona)),
        "questions.sha256": sha256_file(DEFAULT_QUESTIONS),
        "cpu_amp": str(cpu_autocast()),
    })
    return hashlib.sha256(json.dumps(ident, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def find_finished_run(fp: str, experiment: str):
    """A FINISHED, scored run of this experiment with fingerprint `fp` (an original, not a reuse), or None."""
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        return None
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list", order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.`molting.fingerprint` = '{fp}' and attributes.status = 'FINISHED'")
    return next((r for r in runs if "score" in r.data.metrics and "molting.reused_run_id" not in r.data.tags), None)


def cpu_dtype() -> str:
    """Weights' dtype on CPU: fp32 unless MOLTING_CPU_DTYPE says otherwise."""
    return os.environ.get("MOLTING_CPU_DTYPE", "float32")


def cpu_autocast() -> bool:
    """bf16 autocast on CPU (fp32 master weights) when MOLTING_CPU_AMP=bf16. Only pays on a CPU with
    native bf16 (avx512_bf16/AMX: 1.15× at batch 1, benchmarks/cpu_train.py); ~50× slower on AVX2."""
    from .config import ConfigError

    amp = os.environ.get("MOLTING_CPU_AMP", "").strip().lower()
    if amp not in ("", "off", "bf16"):
        raise ConfigError(f"MOLTING_CPU_AMP={amp!r} is invalid: expected bf16 or off (unset = off)")
    return amp == "bf16"


def cpu_precision(loaded: str) -> str:
    """What CPU training computes in, as train.precision records it: the weights' dtype (+ autocast)."""
    return f"{loaded}+bf16-autocast" if cpu_autocast() else loaded


def training_precision(p: Prepared) -> str:
    """train.precision: what the base loads in (load_precision), plus CPU autocast; one derivation
    for the logged param and the fingerprint a sweep looks up before loading."""
    loaded = load_precision(p.source, p.dev, cpu_dtype())
    return loaded if p.dev == "cuda" else cpu_precision(loaded)


def train(cfg: TrainConfig, log=print, *, nested: bool = False, tags: dict | None = None,
          callbacks: tuple = (), prepared: Prepared | None = None) -> TrainResult:
    """Train (and evaluate) in one MLflow run: attached to `mlflow run`'s, a new one, or a
    nested child of the active run (`nested=True`, the sweep's trials). `callbacks` are extra
    transformers TrainerCallbacks (the sweep's pruner)."""
    import mlflow

    from .tracking import stage_run

    t_start = time.time()
    p = prepared or prepare(cfg)
    cfg = p.cfg
    threads = set_threads()
    steps = p.report.numbers["optimizer_steps"]
    run_name = f"{cfg.model}-e{cfg.epochs}-b{cfg.batch_size}-ga{cfg.grad_accum}-lr{cfg.lr:g}"
    tags = {"molting.stage": "train", "molting.model": cfg.model, "molting.preflight": p.report.status,
            **(tags or {})}
    if p.source.preset is not None and p.source.preset.only_for_plumbing:
        tags["molting.plumbing_only"] = "true"
    with stage_run(cfg.experiment, run_name, tags, nested=nested) as run:
        run_id = run.info.run_id
        mlflow.log_text(p.report.to_json(), "preflight.json")
        mlflow.log_text(p.report.to_text() + "\n", "preflight.txt")
        log(p.report.to_text())
        if p.report.status == "fail" and cfg.preflight == "strict":
            mlflow.log_params(run_params(p, "not-loaded"))
            errors = [f for f in p.report.findings if f.level == "error"]
            raise PreflightFailed(f"pre-flight failed ({len(errors)} error(s)): {errors[0].message}"
                                  + (" (preflight=warn trains anyway)" if errors else ""))
        result = _fit(p, run_id, threads, log, callbacks)
        result.preflight = p.report.status
    log(f"\nrun {run_id}: {result.optimizer_steps} optimizer steps, final loss {result.final_loss:.4f}, "
        f"{result.train_runtime_s:.0f} s training ({time.time() - t_start:.0f} s in all)\n"
        f"adapter: {result.adapter_uri}\n"
        f"see it:  mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}  (then open http://127.0.0.1:5000)")
    return result


def _fit(p: Prepared, run_id: str, threads: int, log, callbacks: tuple = ()) -> TrainResult:
    import mlflow
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import TrainerCallback, set_seed
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTConfig, SFTTrainer

    cfg = p.cfg
    set_seed(cfg.seed)
    t_load = time.time()
    model, _ = load_model(p.source, p.dev, cpu_dtype())
    precision = training_precision(p)
    load_s = time.time() - t_load  # what a sweep would save per trial by keeping the base loaded
    if p.dev == "cuda":
        # QLoRA: casts norms to fp32 and turns on gradient checkpointing (it only acts in train mode).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    params = run_params(p, precision)
    params["train.cpu_threads"] = threads
    mlflow.log_params(params)
    fp = fingerprint(p, precision)
    # The dataset, as rows of the chat messages that train (system prompt included).
    df = pd.DataFrame({"prompt": [json.dumps(r["prompt"], ensure_ascii=False) for r in p.dataset.rows],
                       "completion": [json.dumps(r["completion"], ensure_ascii=False) for r in p.dataset.rows]})
    mlflow.log_input(mlflow.data.from_pandas(df, source=str(Path(p.dataset.path).resolve()),
                                             name=Path(p.dataset.path).name, digest=p.dataset.sha256[:16]),
                     context="training")

    targets = p.lora_targets if isinstance(p.lora_targets, str) else list(p.lora_targets)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    cuda = p.dev == "cuda"
    out_dir = tempfile.mkdtemp(prefix="molting-train-")
    args = SFTConfig(
        output_dir=out_dir, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_ratio, logging_steps=1, save_strategy="no", report_to="none",
        seed=cfg.seed, data_seed=cfg.seed, max_length=cfg.max_seq_len, completion_only_loss=True,
        use_cpu=not cuda, bf16=cuda or cpu_autocast(), gradient_checkpointing=cuda,
        optim="paged_adamw_8bit" if cuda else "adamw_torch", dataloader_num_workers=0,
        disable_tqdm=False, dataset_num_proc=None,
    )
    losses: list[tuple[int, float]] = []
    QuietProgress = _quiet_progress()

    class MlflowSteps(TrainerCallback):
        """loss, learning_rate and grad_norm at every optimizer step, step = global step."""

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            m = {k: float(logs[k]) for k in ("loss", "learning_rate", "grad_norm") if k in logs}
            mlflow.log_metrics(m, step=state.global_step, run_id=run_id)
            losses.append((state.global_step, m["loss"]))

    train_ds = Dataset.from_list(p.dataset.rows)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=p.tokenizer,
                         peft_config=lora, callbacks=[MlflowSteps(), *callbacks])
    trainer.remove_callback(ProgressCallback)  # it prints every step's log dict; keep the bar only
    trainer.add_callback(QuietProgress())
    mlflow.log_text(_marked_example(trainer, p.tokenizer), "example_rendered.txt")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    out = trainer.train()
    runtime = time.time() - t0
    steps = trainer.state.global_step
    tokens = p.report.numbers["train_tokens_per_epoch"] * cfg.epochs
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if cuda
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    # At batch 1 a step's loss is one example's: the mean of the last 10 steps says where training ended.
    tail = [v for _, v in losses[-10:]]
    final_loss = sum(tail) / len(tail) if tail else float("nan")
    mlflow.log_metrics({"optimizer_steps": steps, "train_tokens": tokens, "final_loss": final_loss,
                        "train_loss_mean": float(out.training_loss), "train_runtime_s": runtime,
                        "train_tokens_per_s": tokens / runtime if runtime else 0.0, "peak_memory_mb": peak_mb,
                        "model_load_s": load_s})
    mlflow.set_tag("molting.peak_memory", "cuda max_memory_allocated" if cuda else "process peak RSS")

    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        trainer.model.save_pretrained(adapter)
        # Inference uses the model's own template; a foreign training template is kept beside it.
        p.tokenizer.chat_template = p.own_template
        p.tokenizer.save_pretrained(adapter)
        if p.template != p.own_template:
            (adapter / "training_chat_template.jinja").write_text(p.template, encoding="utf-8")
        (adapter / "molting.json").write_text(json.dumps({
            "model": cfg.model, **p.source.as_params(), "device_trained": p.dev, "precision": params["train.precision"],
            "system_prompt": p.system_prompt_text, "template_source": p.template_source,
            "train_run_id": run_id}, ensure_ascii=False, indent=1))
        mlflow.log_artifacts(str(adapter), "adapter")
        curve = Path(tmp) / "loss_curve.png"
        _plot_losses(losses, curve, f"{cfg.model}: {steps} optimizer steps, final loss {final_loss:.3f}")
        mlflow.log_artifact(str(curve))
    import shutil
    shutil.rmtree(out_dir, ignore_errors=True)
    result = TrainResult(run_id, steps, final_loss, runtime, f"runs:/{run_id}/adapter", "", losses)
    if cfg.evaluate:
        result.scores = _evaluate_in_run(p, trainer.model, log)
    mlflow.set_tag("molting.fingerprint", fp)  # last: only a run that trained (and scored) carries it
    return result


def _evaluate_in_run(p: Prepared, model, log) -> dict:
    """Score the adapter still in memory (equal to the saved one: fp32 weights) on this run."""
    from .evaluate import format_summary, generate, score_and_log
    from .rubric import load_questions

    import mlflow

    questions = load_questions(DEFAULT_QUESTIONS)
    model.eval()
    p.tokenizer.chat_template = p.own_template
    records, stats = generate(model, p.tokenizer, questions, p.system_prompt_text, p.cfg.eval_max_new_tokens,
                              seed=p.cfg.seed)
    mlflow.log_param("eval.max_new_tokens", p.cfg.eval_max_new_tokens)
    scored = score_and_log(records, questions, load_persona(p.cfg.persona), stats)
    log(format_summary(scored))
    return scored["summary"]


def _quiet_progress():
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        """The progress bar, with the last loss as its postfix instead of a printed dict a step."""

        def on_log(self, args, state, control, logs=None, **kw):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

    return QuietProgress


def _marked_example(trainer, tok) -> str:
    """Example 0 as the trainer tokenized it, trained spans between ⟦ and ⟧. Each span is decoded
    whole: decoding token by token would split a multi-byte character (🦞 is 3 byte tokens) into �."""
    from itertools import groupby

    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    out = []
    for trained, span in groupby(zip(ids, labels), key=lambda il: il[1] != -100):
        text = tok.decode([i for i, _ in span])
        out.append(f"⟦{text}⟧" if trained else text)
    return ("# Example 0 exactly as it trains; loss only on the text between ⟦ and ⟧.\n"
            f"# {len(ids)} tokens, {sum(lab != -100 for lab in labels)} trained.\n\n" + "".join(out) + "\n")


def _plot_losses(losses, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
