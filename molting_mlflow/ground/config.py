"""TrainConfig and EvalConfig: the one place a training run's and an evaluation's settings live, each
field with its default, its help and its bound side by side; validated on construction. Also the
defaults every stage shares (seed, experiment, step minimum, target, answer length) and `opt`, the
field they and SweepConfig (sweep_config.py) use.

The CLI options are generated from these fields (help text included), the MLproject parameters
carry the same names (a test checks), `resolve()` fills what the user left to the preset, and
`as_params()` is what the run logs as MLflow params, verbatim.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from molting_mlflow.ground.errors import MoltingError
from molting_mlflow.ground.paths import DEFAULT_DATASET, DEFAULT_PERSONA, DEFAULT_QUESTIONS
from molting_mlflow.ground.persona import resolve_paths
from molting_mlflow.ground.presets import PRESETS, defaults_preset
from molting_mlflow.ground.runtime import AUTO, PRECISION_CHOICES

__all__ = ["ConfigError", "TrainConfig", "steps_per_epoch", "step_fixes", "DEFAULT_DATASET", "DEFAULT_PERSONA",
           "DEFAULT_QUESTIONS", "DEFAULT_MODEL", "DEFAULT_MIN_STEPS", "DEFAULT_SEED", "DEFAULT_EXPERIMENT", "DEFAULT_TARGET",
           "DEFAULT_MAX_NEW_TOKENS", "PREFLIGHT_MODES", "check_fields", "opt", "whole", "EvalConfig"]

PREFLIGHT_MODES = ("strict", "warn")

# Facts every stage shares, each written here once; the configs' fields (train, evaluate, sweep), the
# CLI, the registry and diagnose use them by name. MLproject repeats the defaults: tests/test_mlproject.py
# checks that they agree.
# Below this many optimizer steps the user's TinyLlama run (50 steps) never learned the persona
# and smol did not either (50 steps: degenerate, 150: in persona). Overridable per run.
DEFAULT_MIN_STEPS = 150
# The model a run trains or evaluates when none is named: the real SmolLM2-135M, CPU-friendly.
DEFAULT_MODEL = "smol"
# Every stage's seed: data order and LoRA init (train), the sampler (sweep), generation (evaluate).
DEFAULT_SEED = 42
# The MLflow experiment the project's runs go to (under `mlflow run`, the run's own experiment wins).
DEFAULT_EXPERIMENT = "molting"
# The user's goal, a rubric score (of 10) above this: the sweep's target, the registry's bar for the
# `champion` alias, and what diagnose calls "below target".
DEFAULT_TARGET = 5.0
# Token limit of each evaluation answer (train's own evaluation and the evaluate stage).
DEFAULT_MAX_NEW_TOKENS = 96


class ConfigError(MoltingError, ValueError):
    """A nonsense setting; the message names the field, the value and the expected form."""


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch: ceil(examples / (batch_size × grad_accum)). The trainer drops no
    partial batch, and the last step of an epoch may see fewer examples (79 / (1 × 8) → 10 steps,
    the last of 7 examples). Equal to ceil(ceil(n / batch) / grad_accum), whatever micro-batch the
    runtime plan splits a step into."""
    return math.ceil(n_examples / (batch_size * grad_accum))


def _whole(lo: int):
    return lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= lo)


whole = _whole   # the bound "a whole number ≥ lo" for the other configs' fields (None passes: 'preset')
# A seed reaches numpy's and torch's generators, which take 0 ≤ seed < 2**32
SEED_OK = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32  # noqa: E731
SEED_FORM = f"a whole number in 0..{2**32 - 1}"
MAX_NEW_TOKENS = 4096     # an answer's token limit, at most (train's eval, evaluate, chat)
NEW_TOKENS_OK = lambda v: isinstance(v, int) and 1 <= v <= MAX_NEW_TOKENS  # noqa: E731
NEW_TOKENS_FORM = f"a whole number in 1..{MAX_NEW_TOKENS}"
MAX_GPU_GIB = 4096        # a memory budget past any card made (an H200 has 141 GiB); 0 = the card's own
GPU_GIB_OK = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_GPU_GIB  # noqa: E731
GPU_GIB_FORM = f"GiB in 0..{MAX_GPU_GIB} (0 = the card's memory)"


def opt(default, help: str, check=None, form="", preset: bool = False, factory=None):
    """A config field (TrainConfig, EvalConfig, SweepConfig): default, help (the CLI's), check and
    expected form (the error's; a function where it reads a table that may grow, e.g. the rubric's maximum),
    and whether `None` means the preset's default. `factory`: a mutable default's maker, in place of `default`."""
    meta = {"help": help, "check": check, "form": form, "preset": preset}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


# A model judge beside the rubric (judge.py): the same three settings for train, evaluate, rescore and the sweep
JUDGE_TIMEOUT_S = 60          # one call to the judge at most, seconds (a refused connection is said at once)


def judge_opt():
    return opt("", "A model that reads the answers beside the rubric, provider:/model (e.g. openai:/gpt-4.1-mini, or "
               "openai:/<served model> with judge_base_url for a local server); '': no judge (docs/judge.md).",
               lambda v: v == "" or (isinstance(v, str) and ":/" in v and v.split(":/", 1)[1].strip("/") != ""),
               "'' or provider:/model, e.g. openai:/gpt-4.1-mini")


def judge_base_url_opt():
    return opt("", "The judge's OpenAI-compatible server, its /v1 root (transformers serve, Ollama, vLLM, llama.cpp), "
               "e.g. http://127.0.0.1:8000/v1; '': the provider's own.",
               lambda v: v == "" or (isinstance(v, str) and v.startswith(("http://", "https://"))),
               "'' or an http(s) URL, e.g. http://127.0.0.1:8000/v1")


def judge_timeout_opt():
    return opt(JUDGE_TIMEOUT_S, "One call to the judge at most, seconds.",
               lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 600, "a whole number of seconds in 1..600")


def check_fields(config) -> None:
    """Every field's check, on construction: a ConfigError naming the field, the value and the form."""
    for f in fields(config):
        check = f.metadata.get("check")
        if check is not None and not check(getattr(config, f.name)):
            form = f.metadata["form"]
            raise ConfigError(f"{f.name}={getattr(config, f.name)!r} is invalid: expected {form() if callable(form) else form}")


@dataclass
class TrainConfig:
    model: str = opt(DEFAULT_MODEL, f"Preset ({', '.join(PRESETS)}), a local model folder, or a hub id in your HF cache. "
                     "tiny-random is random weights, for plumbing tests only.",
                     lambda v: isinstance(v, str) and v.strip() != "", "a preset, a local folder or a hub id")
    dataset: str = opt("persona", "Chat examples: JSON list or JSONL of messages / ShareGPT / Alpaca / "
                       "prompt-completion; 'persona': the file the persona card names (the shipped card: "
                       f"{DEFAULT_DATASET.relative_to(DEFAULT_DATASET.parent.parent)}).")
    epochs: int | None = opt(None, "Passes over the dataset ('preset': the preset's default).", _whole(1),
                             "a whole number ≥ 1 (or 'preset')", preset=True)
    grad_accum: int | None = opt(None, "batch_size × grad_accum examples make one optimizer step ('preset').",
                                 _whole(1), "a whole number ≥ 1 (or 'preset')", preset=True)
    batch_size: int | None = opt(None, "Examples per micro-batch as you split them; on a GPU the memory plan may "
                                 "regroup a step's batch_size × grad_accum examples ('preset').",
                                 _whole(1), "a whole number ≥ 1 (or 'preset')", preset=True)
    lr: float | None = opt(None, "Peak learning rate, linear decay after warmup ('preset').",
                           lambda v: v is None or (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v < 1),
                           "a learning rate in (0, 1), e.g. 2e-4 (or 'preset')", preset=True)
    lora_r: int | None = opt(None, "LoRA rank ('preset').", _whole(1), "a whole number ≥ 1 (or 'preset')", preset=True)
    lora_alpha: int | None = opt(None, "LoRA alpha ('preset').", _whole(1), "a whole number ≥ 1 (or 'preset')",
                                 preset=True)
    lora_dropout: float | None = opt(None, "LoRA dropout ('preset').",
                                     lambda v: v is None or (isinstance(v, (int, float)) and 0 <= v < 1),
                                     "a value in [0, 1) (or 'preset')", preset=True)
    max_seq_len: int | None = opt(None, "Token limit per example; longer ones are truncated ('preset').",
                                  lambda v: v is None or (isinstance(v, int) and 16 <= v <= 131072),
                                  "a token count between 16 and 131072 (or 'preset')", preset=True)
    warmup_ratio: float = opt(0.05, "Share of optimizer steps spent warming the learning rate up.",
                              lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a value in [0, 1)")
    seed: int = opt(DEFAULT_SEED, "Random seed (data order, LoRA init).", SEED_OK, SEED_FORM)
    experiment: str = opt(DEFAULT_EXPERIMENT, "MLflow experiment name (under `mlflow run`, the run's own "
                          "experiment wins).", lambda v: isinstance(v, str) and v.strip() != "",
                          "a non-empty experiment name")
    system_prompt: str = opt("persona", "'persona' (the persona's), 'none' (train without one, as the user did), "
                             "'fold' (into the first user turn, for templates that drop the system turn), or the text.",
                             lambda v: isinstance(v, str) and v.strip() != "",
                             "'persona', 'none', 'fold' or the prompt text")
    chat_template: str = opt("model", "'model' (the tokenizer's own) or a Jinja file, e.g. "
                             "data/templates/gpt2_separators.jinja.",
                             lambda v: v == "model" or Path(v).is_file(),
                             "'model' (the tokenizer's own) or an existing Jinja file, e.g. "
                             "data/templates/gpt2_separators.jinja")
    preflight: str = opt("strict", "strict: pre-flight errors stop the run; warn: log them and train anyway.",
                         lambda v: v in PREFLIGHT_MODES, "one of: " + ", ".join(PREFLIGHT_MODES))
    min_steps: int = opt(DEFAULT_MIN_STEPS, "Pre-flight minimum of optimizer steps.", _whole(0), "a whole number ≥ 0")
    persona: str = opt(str(DEFAULT_PERSONA), "Persona card (YAML): system prompt, language and the rubric's lists; "
                       "it may name its questions and dataset (docs/own-persona.md).")
    questions: str = opt("persona", "Evaluation questions (JSON, with reference answers) the run is scored on; "
                         "'persona': the file the persona card names (the shipped card: "
                         f"{DEFAULT_QUESTIONS.relative_to(DEFAULT_QUESTIONS.parent.parent)}).",
                         lambda v: isinstance(v, str), "'persona' or a questions file")
    evaluate: bool = opt(True, "End the run by scoring the adapter with the rubric (true/false).",
                         lambda v: isinstance(v, bool), "true or false")
    eval_max_new_tokens: int = opt(DEFAULT_MAX_NEW_TOKENS, "Token limit of each evaluation answer.",
                                   NEW_TOKENS_OK, NEW_TOKENS_FORM)
    precision: str = opt(AUTO, "auto (fp32 on a CPU; on a GPU bf16 where the model and its batches fit the "
                         "memory budget, else QLoRA nf4), bf16, nf4 (CUDA) or fp32.",
                         lambda v: v in PRECISION_CHOICES, "one of: " + ", ".join(PRECISION_CHOICES))
    gpu_memory_gib: float = opt(0.0, "GPU memory budget for the plan, GiB (0: the card's); 4 rehearses a 4 GB card "
                                "on a bigger one.", GPU_GIB_OK, GPU_GIB_FORM)
    judge: str = judge_opt()
    judge_base_url: str = judge_base_url_opt()
    judge_timeout_s: int = judge_timeout_opt()

    def __post_init__(self):
        check_fields(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @staticmethod
    def preset_fields() -> tuple[str, ...]:
        return tuple(f.name for f in fields(TrainConfig) if f.metadata.get("preset"))

    def resolve(self) -> "TrainConfig":
        """Fill every None from the preset's defaults (a model folder takes its architecture's preset:
        presets.defaults_preset), and dataset / questions left to the persona card ('persona') with the
        files it names (persona.resolve_paths)."""

        defaults = defaults_preset(self.model)[0].defaults()
        dataset, questions = resolve_paths(self.persona, self.dataset, self.questions)
        return replace(self, dataset=dataset, questions=questions,
                       **{f: defaults[f] for f in self.preset_fields() if getattr(self, f) is None})

    @property
    def run_name(self) -> str:
        """A resolved config's run name: smol-e2-b1-ga1-lr0.0005, then what else sets it apart from the default:
        the dataset's stem, no system prompt, a template file, a seed; two runs on different data are told
        apart in the UI's legends and in `molting compare`."""
        name = f"{self.model}-e{self.epochs}-b{self.batch_size}-ga{self.grad_accum}-lr{self.lr:.3g}"
        if Path(self.dataset).resolve() != DEFAULT_DATASET.resolve():
            name += f"-{Path(self.dataset).stem}"
        if self.system_prompt == "none":
            name += "-nosys"
        if self.chat_template != "model":
            name += f"-{Path(self.chat_template).stem}"
        if self.seed != DEFAULT_SEED:
            name += f"-s{self.seed}"
        return name

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def steps_per_epoch(self, n_examples: int) -> int:
        return steps_per_epoch(n_examples, self.batch_size, self.grad_accum)

    def optimizer_steps(self, n_examples: int) -> int:
        return self.steps_per_epoch(n_examples) * self.epochs

    def arithmetic(self, n_examples: int) -> str:
        """The step arithmetic in words, as pre-flight, diagnose and the sweep print it."""
        per = self.steps_per_epoch(n_examples)
        return (f"ceil({n_examples} examples / (batch {self.batch_size} × grad_accum {self.grad_accum})) = {per} "
                f"steps an epoch × {self.epochs} epochs = {per * self.epochs} optimizer steps")

    def too_few_steps(self, n_examples: int) -> str:
        """'50 optimizer steps, below the minimum of 150: ceil(79 examples / …)': what pre-flight's error and
        the sweep's step pruning both say of a config under min_steps."""
        return (f"{self.optimizer_steps(n_examples)} optimizer steps, below the minimum of {self.min_steps}: "
                f"{self.arithmetic(n_examples)}")

    def as_params(self) -> dict:
        """The resolved config as MLflow params, under `train.` keys (mlflow run logs the bare names as given)."""
        return {f"train.{k}": v for k, v in asdict(self).items()}


def step_fixes(cfg: TrainConfig, n_examples: int) -> list[tuple[str, TrainConfig]]:
    """Changes that bring a resolved config to its minimum of optimizer steps, each checked by the
    same arithmetic pre-flight applies (so every fix offered passes): more epochs; else fewer
    examples a step (grad_accum, then batch_size) at the same epochs. Empty when it passes."""
    if cfg.optimizer_steps(n_examples) >= cfg.min_steps:
        return []
    per = cfg.steps_per_epoch(n_examples)
    fixes = [(f"epochs={math.ceil(cfg.min_steps / per)}", replace(cfg, epochs=math.ceil(cfg.min_steps / per)))]
    for name in ("grad_accum", "batch_size"):
        for smaller in range(getattr(cfg, name) - 1, 0, -1):
            alt = replace(cfg, **{name: smaller})
            if alt.optimizer_steps(n_examples) >= cfg.min_steps:
                fixes.append((f"{name}={smaller}", alt))
                break
        else:
            continue
        break
    assert all(alt.optimizer_steps(n_examples) >= cfg.min_steps for _, alt in fixes)
    return fixes


def describe_fixes(cfg: TrainConfig, n_examples: int) -> str:
    """'epochs=15 (150 steps) or grad_accum=2 (200 steps)': the fixes with their step counts."""
    return " or ".join(f"{text} ({alt.optimizer_steps(n_examples)} steps)" for text, alt in step_fixes(cfg, n_examples))


@dataclass
class EvalConfig:
    """An evaluation's settings, each field with its default, help and bound (config.opt, as TrainConfig)."""
    run_id: str = opt("", "A train run: evaluates its adapter (runs:/<run_id>/adapter).")
    adapter: str = opt("", "runs:/…/adapter, models:/<name>@<alias>, or a local adapter folder.")
    model: str = opt("", "With no adapter: score this bare base model (baseline). Default smol.")
    questions: str = opt("", "Evaluation questions (JSON). Default: the ones the adapter's train run logged; "
                         "else the ones the persona card names.")
    persona: str = opt("", "Persona card (YAML) to score against. Default: the one the adapter's train run "
                       "logged; for a bare model, data/persona.yaml.")
    max_new_tokens: int = opt(DEFAULT_MAX_NEW_TOKENS, "Token limit of each answer.",
                              NEW_TOKENS_OK, NEW_TOKENS_FORM)
    batch_size: int = opt(8, "Questions generated together.", lambda v: isinstance(v, int) and v >= 1,
                          "a whole number ≥ 1")
    seed: int = opt(DEFAULT_SEED, "Random seed (torch's, before generating; greedy decoding draws nothing).",
                    SEED_OK, SEED_FORM)
    experiment: str = opt(DEFAULT_EXPERIMENT, "MLflow experiment name.")
    judge: str = judge_opt()
    judge_base_url: str = judge_base_url_opt()
    judge_timeout_s: int = judge_timeout_opt()

    def __post_init__(self):
        if self.run_id and self.adapter:
            raise ConfigError("give run_id or adapter, not both")
        check_fields(self)


@dataclass
class JudgeSettings:
    """The judge alone, for the commands that read answers already given (score, rescore)."""
    judge: str = judge_opt()
    judge_base_url: str = judge_base_url_opt()
    judge_timeout_s: int = judge_timeout_opt()

    def __post_init__(self):
        check_fields(self)
