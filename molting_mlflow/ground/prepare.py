"""What a run is before it trains: the resolved config, the model source, the data, the template,
the runtime plan and the pre-flight report, found without loading a weight (`molting preflight`,
the train stage, and the sweep before it decides to reuse or train).

Ground for the train and sweep stages: a mistake in the input costs seconds here, not a run. Each
fact is found once, in the order below; pre-flight then checks what was found (preflight.run_preflight
reads the Prepared), and the run's params and fingerprint are read off it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from molting_mlflow.ground import bundle, runtime
from molting_mlflow.ground.config import TrainConfig
from molting_mlflow.ground.data import ChatDataset, check_system_prompt_fits, load_dataset
from molting_mlflow.ground.findings import PreflightReport
from molting_mlflow.ground.models import ModelError, ModelSource, ParamCounts, inspect_model, param_counts
from molting_mlflow.ground.persona import Persona, load_persona
from molting_mlflow.ground.preflight import run_preflight
from molting_mlflow.ground.presets import PRESETS, defaults_preset, lora_targets
from molting_mlflow.ground.questions import load_questions
from molting_mlflow.ground.rehearsal import REHEARSAL_GPU_GIB, stand_in
from molting_mlflow.ground.reuse import code_version, fingerprint
from molting_mlflow.ground.templates import TemplateFacts, facts, folds, training_template


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
    plan: runtime.Plan
    lora_targets: tuple | str
    fold: bool = False          # the system prompt goes into the first user turn (templates.folds)
    persona: Persona | None = None          # the card the run is scored against (bundle.py)
    questions: list = field(default_factory=list)   # its evaluation questions; [] when it has none
    facts: TemplateFacts | None = None      # what the two templates do (templates.facts)
    lengths: list = field(default_factory=list)          # each example's tokens through the training template
    prompt_lengths: list = field(default_factory=list)   # … its prompt's, up to where the answer starts
    counts: ParamCounts = ParamCounts(0, 0, 0)            # parameters, LoRA's, the rank limit (models.param_counts)
    note: str = ""              # how a rehearsal stood in for absent weights (rehearsal.stand_in)
    defaults_from: str = ""     # whose defaults a model that is no preset takes (presets.defaults_preset)
    report: PreflightReport = field(default_factory=PreflightReport)

    @cached_property
    def params(self) -> dict:
        """The resolved config, logged verbatim: what trained, on what, from which data and template, how."""
        targets = self.lora_targets if isinstance(self.lora_targets, str) else ",".join(self.lora_targets)
        params = {**self.cfg.as_params(), **self.source.as_params(), **self.plan.params()}
        params.update({
            "train.optimizer_steps": self.report.numbers["optimizer_steps"],
            "train.lr_schedule": "linear",
            "lora.targets": targets,
            "data.sha256": self.dataset.sha256,
            "data.examples": len(self.dataset),
            "data.format": self.dataset.source_format,
            "data.system_prompt_source": self.dataset.system_prompt_source,
            "data.system_prompts_added": self.dataset.system_prompts_added,
            "data.system_prompts_removed": self.dataset.system_prompts_removed,
            "data.system_prompt_fold": self.fold,
            "template.source": self.template_source,
            "template.sha256": hashlib.sha256(self.template.encode()).hexdigest(),
            "template.end_of_turn": self.report.numbers.get("end_of_turn_token"),
            "code.version": code_version(),
            **bundle.params(self.persona, self.cfg.questions),
        })
        return params

    def fingerprint(self) -> str:
        """What decides this run's adapter and scores (reuse.fingerprint): a sweep reuses a finished run with it."""
        return fingerprint(self.params, self.system_prompt_text)


def prepare(cfg: TrainConfig, rehearse: bool = False, template_revision: str | None = None) -> Prepared:
    """Resolve and check everything; raises ConfigError/ModelError/DatasetError/PersonaError/PlanError.
    rehearse: pre-flight without the weights, from the template and config alone (rehearsal.py),
    planned for a card (gpu_memory_gib, default 4 GB) with `template_revision` (None: today's)."""
    cfg = cfg.resolve()
    persona = load_persona(cfg.persona)
    questions = load_questions(cfg.questions) if cfg.questions else []
    model = stand_in(cfg.model, template_revision) if rehearse else inspect_model(cfg.model)
    tok = model.tokenizer
    own = tok.chat_template
    if not own:
        raise ModelError(f"model '{cfg.model}': its tokenizer has no chat template; pass chat_template=<jinja file>")
    sp = {"none": None, "persona": persona.system_prompt, "fold": persona.system_prompt}.get(cfg.system_prompt,
                                                                                           cfg.system_prompt)
    fold = folds(sp, cfg.system_prompt, tok, own)
    template, template_source = training_template(cfg.chat_template, tok)
    tf = facts(tok, own, template)
    check_system_prompt_fits(sp, tok, cfg.max_seq_len)
    ds = load_dataset(cfg.dataset, sp, fold)
    if sp is not None:
        ds.system_prompt_source = ("dataset" if ds.system_prompts_added == 0 else
                                   "persona" if cfg.system_prompt in ("persona", "fold") else "custom")
    lengths, prompt_lengths = ds.token_lengths(tok, template)
    model_type = getattr(model.config, "model_type", None)
    targets = lora_targets(cfg.model, model_type)
    defaults_from = "" if cfg.model in PRESETS else defaults_preset(cfg.model)[1]
    counts = param_counts(model.config, cfg.lora_r, targets)
    budget = cfg.gpu_memory_gib or (REHEARSAL_GPU_GIB if rehearse else None)
    plan = runtime.plan(cfg.precision, cfg.examples_per_step, model_config=model.config, total=counts.total,
                        trainable=counts.trainable, seq=min(max(lengths), cfg.max_seq_len), dev=model.device,
                        gpu_memory_gib=budget, quantizable=model.source.quantizable,
                        cpu_micro_batch=cfg.batch_size, fixed=model.source.auto_precision)
    p = Prepared(cfg, model.source, ds, tok, own, template, template_source, sp, plan, targets, fold, persona,
                 questions, tf, lengths, prompt_lengths, counts, model.note, defaults_from)
    p.report = run_preflight(p)
    tok.chat_template = template
    return p
