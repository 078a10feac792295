"""A sweep's settings and its search space, ground for the sweep stage and the CLI (which builds
its options from them without importing the stage: `molting --help` does not load MLflow).

The search space is one row a searched parameter: the CLI's options, the MLproject's `search`
parameter and the trials all read it; adding a parameter is adding a row.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from molting_mlflow.ground.config import (DEFAULT_EXPERIMENT, DEFAULT_MODEL, DEFAULT_SEED, DEFAULT_TARGET, GPU_GIB_FORM,
                                          GPU_GIB_OK, SEED_FORM, SEED_OK, ConfigError, TrainConfig, check_fields,
                                          judge_base_url_opt, judge_opt, judge_timeout_opt, opt)
from molting_mlflow.ground.models import sha256_file
from molting_mlflow.ground.paths import sqlite_path
from molting_mlflow.ground.presets import PRESETS
from molting_mlflow.ground.rubric import RUBRIC
from molting_mlflow.ground.runtime import AUTO


def _storage_url(v) -> bool:
    """'' (the default beside the store) or a URL SQLAlchemy parses (optuna's RDB storage)."""
    if v == "":
        return True
    from sqlalchemy.engine import make_url  # here: the CLI imports this module, which `molting --help` need not load
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(v)
        return True
    except ArgumentError:
        return False


@dataclass(frozen=True)
class Space:
    name: str                      # the Optuna parameter (and the CLI option --<name>)
    kind: str                      # choice: values a,b,c | int: range lo,hi | log: log-uniform range lo,hi
    default: str                   # "" = not searched unless given
    help: str
    cast: Callable = float
    to_config: Callable = None     # value → TrainConfig fields (default: {name: value})
    fields: tuple = ()             # the TrainConfig fields it sets (default: (name,)): what reports show of a trial

    @property
    def config_fields(self) -> tuple[str, ...]:
        return self.fields or (self.name,)

    def parse(self, text: str) -> list:
        try:
            vals = [self.cast(x.strip()) for x in str(text).split(",") if x.strip()]
        except ValueError:
            vals = []
        ok = bool(vals) and (self.kind == "choice" or (len(vals) == 2 and vals[0] <= vals[1]))
        if self.kind == "log":
            ok = ok and 0 < vals[0] < vals[1] < 1
        if not ok:
            form = {"choice": "comma-separated choices", "int": "a range lo,hi with lo ≤ hi",
                    "log": "a range lo,hi with 0 < lo < hi < 1"}[self.kind]
            raise ConfigError(f"{self.name}={text!r} is invalid: expected {form}, e.g. {self.default or 'see --help'}")
        return vals

    def suggest(self, trial, vals: list):
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, vals)
        if self.kind == "int":
            return trial.suggest_int(self.name, *vals)
        return trial.suggest_float(self.name, *vals, log=True)

    def config(self, value) -> dict:
        return self.to_config(value) if self.to_config else {self.name: value}


def _models(value: str) -> dict:
    return {"model": value}


# The rows in order; every reader (the CLI's options, the trials, the report, the UI view, diagnose) reads this
# list when it runs, so a row added is searched and shown everywhere.
SEARCH_SPACE: list[Space] = [
    Space("grad_accum", "choice", "1,2,4,8", "Micro-batches an optimizer step, at the preset's batch_size (choices).",
          int),
    Space("epochs", "int", "1,4", "Passes over the data (range lo,hi).", int),
    Space("lr", "log", "2e-4,3e-3", "Peak learning rate (log-uniform range lo,hi).", float),
    Space("lora_r", "choice", "", "LoRA rank, alpha = 2 × rank (choices, e.g. 8,16,32).", int,
          lambda r: {"lora_r": r, "lora_alpha": 2 * r}, ("lora_r", "lora_alpha")),
    Space("models", "choice", "", "Presets compared in one study (choices, e.g. tinyllama,phi3); empty: --model.",
          str, _models, ("model",)),
]


class _ByName(Mapping):
    """SEARCH_SPACE by row name, as the list is when read."""

    def __getitem__(self, name):
        for s in SEARCH_SPACE:
            if s.name == name:
                return s
        raise KeyError(name)

    def __contains__(self, name):
        return any(s.name == name for s in SEARCH_SPACE)

    def __iter__(self):
        return iter([s.name for s in SEARCH_SPACE])

    def __len__(self):
        return len(SEARCH_SPACE)


SPACE: Mapping[str, Space] = _ByName()
CHAMPION_BY = ("rubric", "judge")      # what the registry's champion gate reads


def parse_search(text: str) -> dict[str, str]:
    """`grad_accum=1,2;lr=1e-4,1e-3` (the MLproject's `search` parameter) → {name: values}."""
    out = {}
    for part in filter(None, (p.strip() for p in re.split(r"[;\s]+", text or ""))):
        name, sep, vals = part.partition("=")
        if not sep or name not in SPACE:
            raise ConfigError(f"search={text!r} is invalid at {part!r}: expected name=values; names: "
                              + ", ".join(SPACE))
        out[name] = vals
    return out


@dataclass
class SweepConfig:
    """A sweep's settings, each field with its default, help and bound (config.opt, as TrainConfig);
    the trials' own settings are TrainConfig's, checked for each searched model on construction."""
    model: str = opt(DEFAULT_MODEL, "Preset, local folder or hub id (as train).")
    n_trials: int = opt(12, "New trials this sweep trains (a new study's reference trials included; "
                        "configurations pruned under min_steps before loading a weight not counted).",
                        lambda v: isinstance(v, int) and v >= 1, "a whole number ≥ 1")
    target: float = opt(DEFAULT_TARGET, "Rubric score to beat.", lambda v: 0 < float(v) <= RUBRIC.max_score,
                        lambda: f"a rubric score in (0, {RUBRIC.max_score}]")
    stop_at_target: bool = opt(False, "End the study once beaten.")
    storage: str = opt("", "Optuna storage (SQLAlchemy URL); default optuna.db beside a SQLite mlflow.db. "
                       "postgresql://… lets workers on several machines share one study.", _storage_url,
                       "a SQLAlchemy URL, e.g. sqlite:///optuna.db or postgresql://user@host/db")
    study_name: str = opt("", "Default molting-<model>-<hash of the experiment and the search settings>: the "
                          "same sweep again resumes its study, other settings start a new one. The same name "
                          "resumes a study (workers on several machines).")
    search: dict = opt(None, "{space name: values}; rows not given take their default.", factory=dict)
    enqueue_user: bool = opt(True, "The user's original configuration as a reference trial.")
    enqueue_default: bool = opt(False, "The preset's default configuration as a reference trial.")
    prune: bool = opt(True, "Stop trials whose epoch ref_nll is worse than the median.")
    reuse: bool = opt(True, "A trial whose exact config (fingerprint) already finished in the experiment reuses "
                      "that run.")
    register: bool = opt(True, "Register the best adapter.")
    seed: int = opt(DEFAULT_SEED, "Random seed (the sampler's, and every trial's).", SEED_OK, SEED_FORM)
    experiment: str = opt(DEFAULT_EXPERIMENT, "MLflow experiment name.")
    dataset: str = opt(TrainConfig.dataset, "Chat examples every trial trains on (as train); 'persona': the ones "
                       "the card names.")
    persona: str = opt(TrainConfig.persona, "Persona card every trial trains and is scored as (as train).")
    questions: str = opt(TrainConfig.questions, "Evaluation questions (as train); 'persona': the ones the card "
                         "names.")
    min_steps: int = opt(TrainConfig.min_steps, "Trials below it are pruned untrained.")
    workers: int = opt(0, "Processes sharing the study; 0 = trials_per_gpu × visible GPUs (1 on a CPU).",
                       lambda v: isinstance(v, int) and v >= 0, "a whole number ≥ 0 (0 = trials_per_gpu × visible GPUs)")
    trials_per_gpu: int = opt(0, "Trials sharing one GPU; 0 = as many as the card's free memory and the CPU cores "
                              "allow (runtime.trials_per_gpu).", lambda v: isinstance(v, int) and v >= 0,
                              "a whole number ≥ 0 (0 = as many as the card's memory and the CPU cores allow)")
    heartbeat_s: int = opt(10, "A worker's heartbeat, seconds; 3 missed beats fail its trial, which is retried once.",
                           lambda v: isinstance(v, int) and v >= 1, "a whole number of seconds ≥ 1")
    precision: str = opt(AUTO, "Every trial's precision (as train).")
    gpu_memory_gib: float = opt(0.0, "A card's memory budget for its trials, GiB (0 = its free memory).",
                                GPU_GIB_OK, GPU_GIB_FORM)
    judge: str = judge_opt()
    judge_base_url: str = judge_base_url_opt()
    judge_timeout_s: int = judge_timeout_opt()
    judge_finalists: int = opt(0, "Judge the N best searched trials by rubric with the judge and rank them by "
                               "judge.score too (0: none; needs judge).", lambda v: isinstance(v, int) and v >= 0,
                               "a whole number ≥ 0")
    champion_by: str = opt("rubric", "What the registry's champion gate reads: rubric (score) or judge (judge.score "
                           "of the finalists; needs judge_finalists).", lambda v: v in CHAMPION_BY,
                           "one of: " + ", ".join(CHAMPION_BY))

    def __post_init__(self):
        check_fields(self)
        if self.judge_finalists and not self.judge:
            raise ConfigError(f"judge_finalists={self.judge_finalists} needs a judge; give judge=<provider:/model>")
        if self.judge and not self.judge_finalists:    # a sweep judges its finalists, never every trial
            raise ConfigError(f"judge={self.judge} reads no trial with judge_finalists=0; give judge_finalists=<N ≥ 1> "
                              "(the N best trials by rubric are judged), or leave judge out")
        if self.champion_by == "judge" and not self.judge_finalists:
            raise ConfigError("champion_by=judge needs judged trials; give judge=<provider:/model> and "
                              "judge_finalists=<N ≥ 1>")
        unknown = set(self.search) - set(SPACE)
        if unknown:
            raise ConfigError(f"unknown searched parameter(s) {sorted(unknown)}; known: {', '.join(SPACE)}")
        ranges = {s.name: self.search.get(s.name) or self.default_range(s) for s in SEARCH_SPACE}
        self.space = {s.name: s.parse(ranges[s.name]) for s in SEARCH_SPACE if ranges[s.name]}
        for model in self.models():
            self.trial_config(model)

    def trial_config(self, model: str | None = None, **changes) -> TrainConfig:
        """A trial's TrainConfig before the search sets its parameters (`changes`: those, or a reference's):
        the sweep's data, persona, questions, seed, experiment, step minimum, precision and memory budget, for
        `model` (default: the study's first). Checked as TrainConfig checks any run's."""
        return TrainConfig(**{"model": model or self.models()[0], "dataset": self.dataset, "persona": self.persona,
                              "questions": self.questions, "seed": self.seed, "experiment": self.experiment,
                              "min_steps": self.min_steps, "precision": self.precision,
                              "gpu_memory_gib": self.gpu_memory_gib, **changes})

    def default_range(self, row: Space) -> str:
        """A row's range when none is given: the preset's own (Preset.sweep_search), else the table's. A
        study over several models (the `models` row) takes the table's."""

        preset = PRESETS.get(self.model)
        if self.search.get("models") or preset is None:
            return row.default
        return preset.sweep_search.get(row.name, row.default)

    def models(self) -> list[str]:
        return self.space.get("models") or [self.model]

    def resolved_storage(self) -> str:
        """The given URL; else optuna.db beside a SQLite MLflow store (sqlite:///…/mlflow.db), else here."""
        if self.storage:
            return self.storage
        import mlflow

        db = sqlite_path(mlflow.get_tracking_uri())
        folder = db.parent if db is not None else Path.cwd()
        return f"sqlite:///{folder.resolve() / 'optuna.db'}"

    def resolved_study(self, experiment: str | None = None) -> str:
        """The study's name: the one given, else default_study_name for `experiment` (the one the parent
        run is in; this config's by default)."""
        return self.study_name or default_study_name(self, experiment or self.experiment)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items()})


def default_study_name(sc: SweepConfig, experiment: str) -> str:
    """molting-<models>-<8 hex>: the hash of what defines the search — the experiment its runs go to,
    the data, the searched ranges, the step minimum, the seed, the precision, the reference trials
    and the pruning — so the same sweep run again resumes its study, and another experiment or other
    settings start a new one. n_trials, target, workers, reuse and registration do not define it."""

    data = Path(sc.dataset)
    ident = {"experiment": experiment, "models": sc.models(), "space": sc.space, "min_steps": sc.min_steps,
             "dataset": sha256_file(data) if data.is_file() else str(data), "seed": sc.seed,
             "precision": sc.precision, "enqueue_user": sc.enqueue_user, "enqueue_default": sc.enqueue_default,
             "prune": sc.prune}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return f"molting-{'-'.join(sc.models())}-{digest}"
