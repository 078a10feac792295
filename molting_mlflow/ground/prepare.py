"""What a run is before it trains: the resolved config, the model source, the data, the template,
the runtime plan and the pre-flight report, found without loading a weight (`molting preflight`,
the train stage, and the sweep before it decides to reuse or train).

Ground for the train and sweep stages: a mistake in the input costs seconds here, not a run.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from molting_mlflow.ground import bundle, runtime
from molting_mlflow.ground.config import ConfigError, TrainConfig
from molting_mlflow.ground.data import ChatDataset, load_dataset
from molting_mlflow.ground.errors import unreadable
from molting_mlflow.ground.models import ModelError, ModelSource, build_tiny_random, load_tokenizer, resolve_model
from molting_mlflow.ground.persona import Persona, load_persona
from molting_mlflow.ground.preflight import (Finding, PreflightReport, count_params, leak_findings, lora_rank_limit,
                                             run_preflight)
from molting_mlflow.ground.presets import PRESETS, defaults_preset, lora_targets
from molting_mlflow.ground.rehearsal import (REHEARSAL_GPU_GIB, describe, rehearsal_config, rehearsal_source,
                                             rehearsal_tokenizer)
from molting_mlflow.ground.reuse import code_version, fingerprint
from molting_mlflow.ground.questions import load_questions
from molting_mlflow.ground.templates import check_chat_template, facts, folds


@dataclass
class Prepared:
    """Everything known before training: resolved config, model source, data, template, plan, report."""

    cfg: TrainConfig
    source: ModelSource
    dataset: ChatDataset
    tokenizer: object
    own_template: str
    template: str
    template_source: str
    system_prompt_text: str | None
    report: PreflightReport
    plan: runtime.Plan
    lora_targets: tuple | str
    fold: bool = False          # the system prompt goes into the first user turn (templates.folds)
    persona: Persona | None = None          # the card the run is scored against (bundle.py)
    questions: list = field(default_factory=list)   # its evaluation questions; [] when it has none

    def fingerprint(self) -> str:
        """What decides this run's adapter and scores (reuse.fingerprint): a sweep reuses a finished run with it."""
        return fingerprint(run_params(self), self.system_prompt_text)


def prepare(cfg: TrainConfig, rehearse: bool = False, template_revision: str | None = None) -> Prepared:
    """Resolve and check everything; raises ConfigError/ModelError/DatasetError/PersonaError/PlanError.
    rehearse: pre-flight without the weights, from the template and config alone (rehearsal.py),
    planned for a card (gpu_memory_gib, default 4 GB) with `template_revision` (None: today's)."""
    if rehearse:
        source, dev = rehearsal_source(cfg.model, template_revision), "cuda"
    else:
        source, dev = resolve_model(cfg.model), runtime.device()
    cfg = cfg.resolve()
    persona = load_persona(cfg.persona)
    tok = _tokenizer(source, rehearse, template_revision)
    own = tok.chat_template
    if not own:
        raise ModelError(f"model '{cfg.model}': its tokenizer has no chat template; pass chat_template=<jinja file>")
    sp = {"none": None, "persona": persona.system_prompt, "fold": persona.system_prompt}.get(cfg.system_prompt,
                                                                                           cfg.system_prompt)
    fold = folds(sp, cfg.system_prompt, tok, own)
    _check_system_prompt_fits(sp, tok, cfg)
    ds = load_dataset(cfg.dataset, sp, fold)
    if sp is not None:
        ds.system_prompt_source = ("dataset" if ds.system_prompts_added == 0 else
                                   "persona" if cfg.system_prompt in ("persona", "fold") else "custom")
    if cfg.chat_template == "model":
        template, template_source = own, "model"
    else:
        template, template_source = _template_file(cfg.chat_template, tok), f"file:{cfg.chat_template}"
    model_config = _model_config(source, rehearse)
    total, trainable = count_params(model_config, cfg)
    lengths = [len(tok.apply_chat_template(ds.messages(i), chat_template=template, tokenize=True)["input_ids"])
               for i in range(len(ds))]
    prompt_lengths = [len(tok.apply_chat_template(row["prompt"], chat_template=template, tokenize=True,
                                                  add_generation_prompt=True)["input_ids"]) for row in ds.rows]
    budget = cfg.gpu_memory_gib or (REHEARSAL_GPU_GIB if rehearse else None)
    plan = runtime.plan(cfg.precision, cfg.examples_per_step, model_config=model_config, total=total,
                        trainable=trainable, seq=min(max(lengths), cfg.max_seq_len), dev=dev,
                        gpu_memory_gib=budget, quantizable=source.quantizable,
                        cpu_micro_batch=cfg.batch_size, fixed=source.auto_precision)
    report = run_preflight(cfg, ds, tok, own, template, facts(tok, own, template), lengths, plan, total, trainable,
                           lora_rank_limit(model_config, cfg), prompt_lengths)
    questions = load_questions(cfg.questions) if cfg.questions else []
    report.findings[:0] = bundle.findings(persona, cfg.questions, questions)
    report.findings += leak_findings(questions, ds)
    if rehearse:
        report.findings.insert(0, Finding("rehearsal", "info", describe(source, template_revision)))
    if cfg.model not in PRESETS:
        report.add("defaults", "info", f"settings left at 'preset' take {defaults_preset(cfg.model)[1]} defaults")
    tok.chat_template = template
    targets = lora_targets(cfg.model, getattr(model_config, "model_type", None))
    return Prepared(cfg, source, ds, tok, own, template, template_source, sp, report, plan, targets, fold,
                    persona, questions)


def _check_system_prompt_fits(sp: str | None, tok, cfg: TrainConfig) -> None:
    """A system prompt of max_seq_len tokens or more leaves no room for any turn after it: said once, before
    every example is rendered and tokenized with it (two renders an example; a 1 MB prompt took minutes)."""
    if not sp:
        return
    n = len(tok.encode(sp, add_special_tokens=False))
    if n >= cfg.max_seq_len:
        raise ConfigError(f"the system prompt is {n:,} tokens, and max_seq_len={cfg.max_seq_len}: no turn of the "
                          "dataset fits after it; shorten the card's system_prompt (a few sentences) or raise "
                          "max_seq_len")


def _template_file(path: str, tok) -> str:
    """The training template's text, checked (templates.check_chat_template) before anything renders with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"chat_template={path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"chat_template={unreadable(path, e)}") from None
    check_chat_template(text, tok, f"chat_template={path}")
    return text


def _tokenizer(source: ModelSource, rehearse: bool, template_revision: str | None):
    if rehearse:
        return rehearsal_tokenizer(source, template_revision)
    return load_tokenizer(source)


def _model_config(source: ModelSource, rehearse: bool = False):
    if rehearse:
        return rehearsal_config(source)
    if source.built:
        return build_tiny_random()[0].config
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(source.path, local_files_only=True)


def run_params(p: Prepared) -> dict:
    """The resolved config, logged verbatim: what trained, on what, from which data and template, how."""
    params = {**p.cfg.as_params(), **p.source.as_params(), **p.plan.params()}
    params.update({
        "train.optimizer_steps": p.report.numbers["optimizer_steps"],
        "train.lr_schedule": "linear",
        "lora.targets": ",".join(p.lora_targets) if not isinstance(p.lora_targets, str) else p.lora_targets,
        "data.sha256": p.dataset.sha256,
        "data.examples": len(p.dataset),
        "data.format": p.dataset.source_format,
        "data.system_prompt_source": p.dataset.system_prompt_source,
        "data.system_prompts_added": p.dataset.system_prompts_added,
        "data.system_prompts_removed": p.dataset.system_prompts_removed,
        "data.system_prompt_fold": p.fold,
        "template.source": p.template_source,
        "template.sha256": hashlib.sha256(p.template.encode()).hexdigest(),
        "template.end_of_turn": p.report.numbers.get("end_of_turn_token"),
        "code.version": code_version(),
        **bundle.params(p.persona, p.cfg.questions),
    })
    return params
