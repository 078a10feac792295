"""TrainConfig: the one place a training run's settings live, validated on construction.

The CLI options and the MLproject parameters carry the same names; `resolve()` fills what the
user left to the preset, and `as_params()` is what the run logs as MLflow params, verbatim.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .persona import DATA_DIR, DEFAULT_PERSONA
from .presets import PRESETS

DEFAULT_DATASET = DATA_DIR / "dataset_personality_v1.json"
PREFLIGHT_MODES = ("strict", "warn")
# Below this many optimizer steps the user's TinyLlama run (50 steps) never learned the persona
# and smol did not either (50 steps: degenerate, 150: in persona). Overridable per run.
DEFAULT_MIN_STEPS = 150


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch. The trainer drops no partial batch: ceil(examples / batch)
    micro-batches, and an epoch ends with an optimizer step even if fewer than grad_accum remain."""
    return math.ceil(math.ceil(n_examples / batch_size) / grad_accum)


class ConfigError(ValueError):
    """A nonsense setting; the message names the field, the value and the expected form."""


@dataclass
class TrainConfig:
    model: str = "smol"                  # preset name, local folder or hub id in the HF cache
    dataset: str = str(DEFAULT_DATASET)  # JSON list or JSONL file of chat examples
    epochs: int | None = None            # None: the preset's default
    grad_accum: int | None = None        # examples per optimizer step = batch_size × grad_accum
    batch_size: int | None = None
    lr: float | None = None              # peak learning rate (linear decay after warmup)
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    max_seq_len: int | None = None       # tokens; longer examples are truncated (pre-flight counts them)
    warmup_ratio: float = 0.05
    seed: int = 42
    experiment: str = "molting"
    system_prompt: str = "persona"       # "persona": the persona's; "none": no system turn; else the text itself
    chat_template: str = "model"         # "model": the tokenizer's own; else a Jinja file
    preflight: str = "strict"            # strict: errors stop the run; warn: log them and train anyway
    min_steps: int = DEFAULT_MIN_STEPS
    persona: str = str(DEFAULT_PERSONA)
    evaluate: bool = True                # end the run by scoring its adapter with Rubric v1.0
    eval_max_new_tokens: int = 96        # token limit of each evaluation answer

    def __post_init__(self):
        def need(cond, name, form):
            if not cond:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: expected {form}")

        need(isinstance(self.model, str) and self.model.strip(), "model",
             f"a preset ({', '.join(PRESETS)}), a local folder or a hub id")
        for name in ("epochs", "grad_accum", "batch_size", "lora_r", "lora_alpha"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), name,
                 "a whole number ≥ 1 (or 'preset')")
        need(self.lr is None or (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr < 1),
             "lr", "a learning rate in (0, 1), e.g. 2e-4 (or 'preset')")
        need(self.max_seq_len is None or (isinstance(self.max_seq_len, int) and 16 <= self.max_seq_len <= 131072),
             "max_seq_len", "a token count between 16 and 131072 (or 'preset')")
        need(isinstance(self.lora_dropout, (int, float)) and 0 <= self.lora_dropout < 1, "lora_dropout", "a value in [0, 1)")
        need(isinstance(self.warmup_ratio, (int, float)) and 0 <= self.warmup_ratio < 1, "warmup_ratio", "a value in [0, 1)")
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", "a whole number ≥ 0")
        need(isinstance(self.min_steps, int) and self.min_steps >= 0, "min_steps", "a whole number ≥ 0")
        need(isinstance(self.evaluate, bool), "evaluate", "true or false")
        need(isinstance(self.eval_max_new_tokens, int) and 1 <= self.eval_max_new_tokens <= 4096,
             "eval_max_new_tokens", "a whole number in 1..4096")
        need(self.preflight in PREFLIGHT_MODES, "preflight", "one of: " + ", ".join(PREFLIGHT_MODES))
        need(isinstance(self.experiment, str) and self.experiment.strip(), "experiment", "a non-empty experiment name")
        need(isinstance(self.system_prompt, str) and self.system_prompt.strip(), "system_prompt",
             "'persona', 'none' or the prompt text")
        need(self.chat_template == "model" or Path(self.chat_template).is_file(), "chat_template",
             "'model' (the tokenizer's own) or an existing Jinja file, e.g. data/templates/gpt2_separators.jinja")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def resolve(self) -> "TrainConfig":
        """Fill every None from the preset (custom models take smol's training defaults)."""
        preset = PRESETS.get(self.model, PRESETS["smol"])
        filled = {f: getattr(preset, f) for f in ("epochs", "grad_accum", "batch_size", "lr", "max_seq_len",
                                                 "lora_r", "lora_alpha") if getattr(self, f) is None}
        return replace(self, **filled)

    def steps_per_epoch(self, n_examples: int) -> int:
        return steps_per_epoch(n_examples, self.batch_size, self.grad_accum)

    def optimizer_steps(self, n_examples: int) -> int:
        return self.steps_per_epoch(n_examples) * self.epochs

    def as_params(self) -> dict:
        """The resolved config as MLflow params, under `train.` keys (mlflow run logs the bare names as given)."""
        return {f"train.{k}": v for k, v in asdict(self).items()}
