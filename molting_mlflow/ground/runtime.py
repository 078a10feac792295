"""The runtime plan: where a run computes and how. One owner for device, threads, precision,
memory plan, batch plan and the trainer's speed settings.

`plan(...)` decides once, before a weight loads; the plan then hands the loader its arguments
(`loader_kwargs`), the trainer its arguments (`trainer_kwargs`), the run its params (`params`) and
the registry its `quantization` tag. train, evaluate and the registry all stand on it.

Precision modes are rows of PRECISIONS; adding one is one row:
  fp32  the base and the LoRA in float32: the same numbers on every CPU.
  bf16  the base in bfloat16, LoRA weights in float32. On CUDA the trainer autocasts to bf16 (faster
        there than fp32 LoRA matmuls: smol 8.2k vs 6.4k tokens/s, Phi-3-mini 8.2k vs 7.0k at 16
        examples a step, H200); on a CPU it does not (autocast's casts cost more than they save:
        115 vs 151 tokens/s on smol), the bf16 base computes in bf16 and peft runs each LoRA in
        fp32. Only fast on a CPU with native bf16 (AVX-512 BF16 or AMX); elsewhere PyTorch emulates
        it, ~50× slower.
  nf4   QLoRA: NF4 4-bit base with double quantisation, bf16 compute, gradient checkpointing and
        paged AdamW 8-bit: the smallest memory, for cards that cannot hold the bf16 base.
`auto` picks per machine: fp32 on a CPU (bf16 measured slower there for a whole run, evaluation
included, even with AMX); on CUDA bf16 where the model and its batches fit the memory budget, else nf4.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

from molting_mlflow.ground.errors import MoltingError


class PlanError(MoltingError, ValueError):
    """A runtime setting that cannot work on this machine (the message says which and the fix)."""


@dataclass(frozen=True)
class Precision:
    name: str
    help: str
    base_dtype: str               # the frozen base's weights ("nf4" computes in bf16)
    quantized: bool               # bitsandbytes 4-bit base (CUDA only)
    cuda_autocast: bool           # trainer bf16 autocast on CUDA (never on a CPU: slower there)
    gradient_checkpointing: bool  # recompute activations in backward: memory for time
    base_bytes_per_param: float   # memory estimate: the base's bytes per parameter
    quantization_tag: str         # the registry's `quantization` tag


PRECISIONS: dict[str, Precision] = {p.name: p for p in [
    Precision("fp32", "float32 base and LoRA (the same numbers on every CPU)", "float32", False, False, False, 4.0,
              "none (fp32 base, fp32 LoRA)"),
    Precision("bf16", "bfloat16 base, float32 LoRA weights", "bfloat16", False, True, False, 2.0,
              "none (bf16 base, fp32 LoRA)"),
    Precision("nf4", "QLoRA: NF4 double-quant base, bf16 compute, gradient checkpointing, paged AdamW 8-bit",
              "bfloat16", True, True, True, 0.53, "nf4-double-quant/bf16-compute"),
]}
AUTO = "auto"   # a precision: the plan picks one (plan())
PRECISION_CHOICES = (AUTO, *PRECISIONS)

# Memory the CUDA context, cuBLAS workspaces and the allocator's fragmentation take beyond what
# PyTorch reports as allocated: a budget of B GiB leaves B - this for the estimate.
CUDA_OVERHEAD_GIB = 0.5


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------

def device() -> str:
    """cuda when torch sees a GPU, else cpu; MOLTING_DEVICE=cpu forces the CPU."""
    import torch

    want = os.environ.get("MOLTING_DEVICE", "auto")
    if want not in ("auto", "cpu", "cuda"):
        raise PlanError(f"MOLTING_DEVICE={want!r} is invalid: expected auto, cpu or cuda")
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise PlanError("MOLTING_DEVICE=cuda but torch sees no CUDA device; unset it or install a CUDA build of torch")
    return want


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_native_bf16() -> str | None:
    """Which native bf16 the CPU has ("amx_bf16", "avx512_bf16"), or None (bf16 is emulated there)."""
    flags = cpu_flags()
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


THREADS_ENV = "MOLTING_THREADS"
# How long the CPU is watched before the first thread count is chosen, seconds: long enough to see a
# process that keeps a core busy (it shows as ~1.0 core), short against any run's start-up.
LOAD_SAMPLE_S = 0.5


@dataclass(frozen=True)
class Threads:
    """torch's CPU threads and why: a count asked for (MOLTING_THREADS), or the cores other processes leave."""
    n: int
    cores: int
    others: float | None      # cores' worth of CPU other processes used while it looked (None: asked for)

    @property
    def why(self) -> str:
        if self.others is None:
            return f"{THREADS_ENV}={self.n} asked for"
        if self.n == self.cores:
            return f"all {self.cores} cores: other processes use ~{self.others:.1f} of them ({THREADS_ENV}=N sets them)"
        return (f"{self.n} of {self.cores} cores: other processes keep ~{self.others:.1f} busy, and threads that "
                f"share a core with them wait on it at every step ({THREADS_ENV}=N sets them)")


def _asked_threads() -> int:
    """MOLTING_THREADS as a number; 0 (or unset): choose from the load."""
    raw = os.environ.get(THREADS_ENV, "0") or "0"
    if not raw.isdigit():
        raise PlanError(f"{THREADS_ENV}={raw!r} is invalid: expected a whole number of threads (0 = as many as the "
                        "cores other processes leave free)")
    return int(raw)


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall clock, CPU seconds all processes used, CPU seconds this process and its children used): two
    snapshots give the cores other processes kept busy between them (others_busy)."""
    import psutil

    total, me = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = total.user + total.nice + total.system + getattr(total, "irq", 0.0) + getattr(total, "softirq", 0.0)
    return time.monotonic(), busy, me.user + me.system + me.children_user + me.children_system


def others_busy(before: tuple, after: tuple) -> float:
    """Cores' worth of CPU that other processes used between two cpu_snapshot()s."""
    wall = after[0] - before[0]
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall if wall > 0 else 0.0


def fitting_threads(others: float, cores: int) -> int:
    """The threads that share no core with another process's load: the cores it leaves, rounded; at least 1.
    Two threads on two cores with one core busy elsewhere ran a smol step 10–20× slower than one thread."""
    return max(1, min(cores, round(cores - others)))


_chosen: list[Threads] = []        # this process's choice, made once (a watcher may change torch's later)


def threads() -> Threads:
    """torch's CPU threads for this process: MOLTING_THREADS where set, else the cores other processes leave
    free, watched for LOAD_SAMPLE_S once a process."""
    asked, cores = _asked_threads(), os.cpu_count() or 1
    if asked:
        return Threads(asked, cores, None)
    if not _chosen:
        before = cpu_snapshot()
        time.sleep(LOAD_SAMPLE_S)
        others = others_busy(before, cpu_snapshot())
        _chosen.append(Threads(fitting_threads(others, cores), cores, others))
    return _chosen[0]


def set_threads() -> Threads:
    import torch

    t = threads()
    torch.set_num_threads(t.n)
    return t


def gpu_total_gib() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2 ** 30


def gpu_free_gib() -> float:
    """What the first visible card has free now (other processes' memory excluded)."""
    import torch

    return torch.cuda.mem_get_info(0)[0] / 2 ** 30


# ---------------------------------------------------------------------------------------------
# Memory estimates (GiB allocated at the training peak), calibrated on H100/H200 measurements
# ---------------------------------------------------------------------------------------------

def _dims(model_config):
    tc = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return tc, tc.hidden_size, tc.num_hidden_layers, tc.vocab_size, getattr(tc, "intermediate_size", 4 * tc.hidden_size)


def estimate_gib(precision: str, model_config, total: int, trainable: int, micro_batch: int, seq: int) -> float:
    """Peak allocated GiB of one training step.

    bf16, no checkpointing: every layer keeps its activations, ~(16·hidden + 4·intermediate) bf16
    values a token a layer (measured: TRL b16 Phi-3-mini 27 GiB, SmolLM2 4.3 GiB).
    nf4, checkpointing: layer inputs kept, one layer recomputed in backward (measured: TinyLlama
    1.38 GiB, Phi-3-mini 3.03 GiB at seq 512, batch 1)."""
    tc, h, layers, vocab, inter = _dims(model_config)
    p = PRECISIONS[precision]
    tokens = micro_batch * seq
    emb = vocab * h * (1 if getattr(tc, "tie_word_embeddings", False) else 2)
    lora = trainable * (16 if not p.quantized else 10)      # fp32 weight + grad + Adam moments (8-bit when paged)
    if p.quantized:
        weights = emb * 2 + (total - emb) * p.base_bytes_per_param   # bf16 embeddings, NF4 the rest
        acts = tokens * h * 2 * layers + tokens * (10 * h + 3 * inter) * 2
        acts += micro_batch * tc.num_attention_heads * seq ** 2 * 2 * 2
    else:
        weights = total * p.base_bytes_per_param
        acts = tokens * layers * (16 * h + 4 * inter) * (2 if p.base_dtype == "bfloat16" else 4)
    logits = tokens * vocab * 4 * 3 if p.quantized else tokens * min(vocab, 4096) * 4 * 2  # TRL's chunked head
    return 1.15 * (weights + lora + acts + logits) / 2 ** 30


def merged_eval_gib(precision: str, model_config, total: int, trainable: int) -> float:
    """Peak allocated GiB of decoding with the LoRA merged into a copy of its target weights: the
    base, the LoRA with its optimizer state (the trainer still holds them), and the merged copy of
    every linear layer outside the embeddings (all-linear targets: nearly the whole model)."""
    tc, h, layers, vocab, inter = _dims(model_config)
    p = PRECISIONS[precision]
    emb = vocab * h * (1 if getattr(tc, "tie_word_embeddings", False) else 2)
    weights = total * p.base_bytes_per_param
    return 1.15 * (2 * weights - emb * p.base_bytes_per_param + trainable * 16) / 2 ** 30


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _trl_head_switch():
    """TRL's module holding the fused LM head's "compact" switch (`_use_triton`), or None where this
    TRL has none."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return None
    return trl_utils if getattr(trl_utils, "_use_triton", None) is not None else None


def answer_logits_only() -> bool:
    """The output layer only where the loss is. TRL's fused LM head projects only the positions that
    carry a label on CUDA, and every position elsewhere (a Neuron device would recompile for each
    new count). A CPU recompiles nothing, and the output layer on prompt tokens (49,152 words a token
    for smol) is arithmetic whose loss is zero: project the answers only there too. Loss and
    gradients are unchanged (tests/test_gpu_sweep_plan.py). False where this TRL has no such switch
    (then every position is projected, as TRL does); the run logs which (train.answer_logits_only)."""
    trl_utils = _trl_head_switch()
    if trl_utils is None:
        return False
    original = trl_utils._use_triton
    if not getattr(original, "molting_answers_only", False):
        def answers_only(device) -> bool:     # "compact": score hidden_states[label_mask] only
            return device.type == "cpu" or original(device)

        answers_only.molting_answers_only = True
        trl_utils._use_triton = answers_only
    return True


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    device: str                 # cpu / cuda
    precision: str              # a PRECISIONS key
    why: str                    # one sentence: why this precision and micro-batch
    threads: Threads            # torch's CPU threads and why (a GPU run's data and logging threads too)
    examples_per_step: int      # batch_size × grad_accum: the optimizer's batch, a hyperparameter
    micro_batch: int            # examples in one forward pass (a divisor of examples_per_step)
    est_gib: float | None       # estimated peak GPU memory (None on a CPU)
    budget_gib: float | None    # the memory budget it was planned against
    cpu_bf16: str | None = None  # the CPU's native bf16 (recorded on CPU runs)
    # Evaluation decodes with the LoRA merged into a copy of its target weights (CUDA, unquantized
    # base, the copy within the budget): half the kernels a decoding step (generation.merged_lora).
    eval_merge: bool = False
    eval_gib: float | None = None   # estimated peak while decoding merged (None: not merging)

    @property
    def spec(self) -> Precision:
        return PRECISIONS[self.precision]

    @property
    def accum(self) -> int:
        """Micro-batches an optimizer step: 8 examples a step in micro-batches of 4 = 2."""
        return self.examples_per_step // self.micro_batch

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def attn_implementation(self) -> str:
        # On a CPU at these lengths (≤ 300 tokens) the eager kernels beat SDPA's flash kernel, whose
        # bf16 backward is slow there (smol step: 0.48 s eager vs 0.54 s sdpa, bf16; 0.59 vs 0.65 fp32).
        return "sdpa" if self.cuda else "eager"

    def loader_kwargs(self) -> dict:
        """from_pretrained arguments for the base."""
        import torch

        kw: dict = {"dtype": getattr(torch, self.spec.base_dtype), "attn_implementation": self.attn_implementation}
        if self.spec.quantized:
            from transformers import BitsAndBytesConfig

            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
        if self.cuda:
            kw["device_map"] = {"": 0}
        return kw

    def configure_backends(self) -> None:
        """Process-wide kernel choices for this plan. On CUDA, SDPA's cuDNN backend builds a new graph for
        every new sequence length (every micro-batch here): flash and memory-efficient kernels do not."""
        if self.cuda:
            import torch

            torch.backends.cuda.enable_cudnn_sdp(False)
        answer_logits_only()

    def optimizer(self) -> str:
        if self.spec.quantized:
            return "paged_adamw_8bit"
        return "adamw_torch_fused" if self.cuda else "adamw_torch"

    def trainer_kwargs(self) -> dict:
        """SFTConfig arguments that decide speed and memory, not what is learned (the learning
        arguments, epochs, LR, seed, stay with TrainConfig)."""
        kw = dict(per_device_train_batch_size=self.micro_batch, gradient_accumulation_steps=self.accum,
                  use_cpu=not self.cuda, bf16=self.cuda and self.spec.cuda_autocast,
                  gradient_checkpointing=self.spec.gradient_checkpointing, optim=self.optimizer(),
                  dataloader_num_workers=0)
        if self.micro_batch > 1:
            # similar lengths share a micro-batch, so little of it is padding
            kw["train_sampling_strategy"] = "group_by_length"
        return kw

    def params(self) -> dict:
        p = {"train.device": self.device, "train.precision": self.precision, "train.precision_why": self.why,
             "train.micro_batch": self.micro_batch, "train.accum_steps": self.accum,
             "train.optimizer": self.optimizer(), "train.gradient_checkpointing": self.spec.gradient_checkpointing,
             "train.attn_implementation": self.attn_implementation, "train.answer_logits_only": _trl_head_switch() is not None}
        if self.est_gib is not None:
            p.update({"train.est_gpu_memory_gib": round(self.est_gib, 2), "train.gpu_memory_budget_gib": self.budget_gib,
                      "train.eval_merge": self.eval_merge})
        if not self.cuda:
            p["train.cpu_bf16"] = self.cpu_bf16 or "none"
        return p

    @property
    def peak_gib(self) -> float | None:
        """The run's estimated peak: training's, or the merged evaluation's where that is higher."""
        if self.est_gib is None:
            return None
        return max(self.est_gib, self.eval_gib or 0.0)

    def describe(self) -> str:
        mem = (f"; est. peak {self.est_gib:.1f} GiB of a {self.budget_gib:.1f} GiB budget"
               if self.est_gib is not None else "")
        cpu = "" if self.cuda else f"; {self.threads.n} CPU thread(s): {self.threads.why}"
        return (f"{self.device}, {self.precision} ({self.spec.help}); {self.examples_per_step} examples an optimizer "
                f"step in micro-batches of {self.micro_batch}{mem}{cpu}. Why: {self.why}")


def plan(precision: str, examples_per_step: int, *, model_config=None, total: int = 0, trainable: int = 0,
         seq: int = 512, gpu_memory_gib: float | None = None, dev: str | None = None,
         quantizable: bool = True, cpu_micro_batch: int | None = None, fixed: str | None = None) -> Plan:
    """Choose precision and micro-batch for this machine. `seq`: the longest example in tokens (a
    micro-batch pads to its longest); `quantizable`: False for models bitsandbytes cannot load (tiny-random);
    `cpu_micro_batch`: on a CPU the micro-batch is the user's batch_size (no memory to plan for);
    `fixed`: what `auto` means for a model with one precision of its own (tiny-random: fp32)."""
    dev = dev or device()
    if precision not in PRECISION_CHOICES:
        raise PlanError(f"precision={precision!r} is invalid: expected one of {', '.join(PRECISION_CHOICES)}")
    n_threads = threads()
    if precision == AUTO and fixed:
        return Plan(dev, fixed, f"this model computes in {fixed} (plumbing only)", n_threads, examples_per_step,
                    cpu_micro_batch or 1 if dev == "cpu" else examples_per_step, None, None, cpu_native_bf16())
    if not quantizable and PRECISIONS[precision if precision != AUTO else "bf16"].quantized:
        raise PlanError(f"precision={precision} needs a model bitsandbytes can quantise; this one is not: "
                        "use precision=auto, bf16 or fp32")
    if dev == "cpu":
        return _cpu_plan(precision, examples_per_step, cpu_micro_batch or 1, n_threads)
    budget = float(gpu_memory_gib) if gpu_memory_gib else round(gpu_total_gib() * 0.92, 1)
    usable = budget - CUDA_OVERHEAD_GIB
    est = (lambda prec, m: estimate_gib(prec, model_config, total, trainable, m, seq)) if model_config is not None \
        else (lambda prec, m: 0.0)
    order = ["bf16", "nf4"] if precision == AUTO else [precision]
    if not quantizable:
        order = [p for p in order if not PRECISIONS[p].quantized] or ["bf16"]
    for prec in order:
        fits = [m for m in divisors(examples_per_step) if est(prec, m) <= usable]
        if fits:
            m = max(fits)
            why = (f"the {prec} base and micro-batches of {m} fit {budget:.1f} GiB (est. {est(prec, m):.1f} GiB)"
                   if precision == AUTO else f"precision={prec} asked for")
            if precision == AUTO and prec == "nf4":
                why = (f"the bf16 base does not fit {budget:.1f} GiB (est. {est('bf16', 1):.1f} GiB at micro-batch 1); "
                       f"NF4 at micro-batch {m} does (est. {est(prec, m):.1f} GiB)")
            eval_gib = (merged_eval_gib(prec, model_config, total, trainable)
                        if model_config is not None and not PRECISIONS[prec].quantized else None)
            merge = eval_gib is not None and eval_gib <= usable
            return Plan(dev, prec, why, n_threads, examples_per_step, m, est(prec, m), budget,
                        eval_merge=merge, eval_gib=eval_gib if merge else None)
    last = order[-1]
    raise PlanError(f"the model does not fit the GPU memory budget of {budget:.1f} GiB: {last} at micro-batch 1 "
                        f"needs about {est(last, 1):.1f} GiB. Fix: gpu_memory_gib=<more>, precision=nf4, or a "
                        "smaller max_seq_len")


def _cpu_plan(precision: str, examples_per_step: int, micro_batch: int, n_threads: Threads) -> Plan:
    native = cpu_native_bf16()
    if precision == "nf4":
        raise PlanError("precision=nf4 needs a CUDA GPU (bitsandbytes 4-bit training); on a CPU use "
                        "precision=auto, bf16 or fp32")
    if precision == AUTO:
        # fp32 on every CPU: with native bf16 (AMX) a bf16 base trained no faster over a whole default
        # run, and its evaluation (fp32 LoRA on a bf16 base, a token at a time) was several times slower
        # (docs/performance.md, side by side). bf16 is precision=bf16.
        prec = "fp32"
        why = (f"on a CPU fp32 is the faster whole run, even with native bf16 ({native})" if native else
               "this CPU has no native bf16 (no AVX-512 BF16 or AMX): bf16 would be emulated, ~50× slower")
    else:
        prec, why = precision, f"precision={precision} asked for"
        if prec == "bf16" and not native:
            why += " (this CPU has no native bf16: expect it to be far slower than fp32)"
    # No memory to plan on a CPU: the micro-batch is the user's batch_size, the rest accumulates.
    return Plan("cpu", prec, why, n_threads, examples_per_step, micro_batch, None, None, native)


# train.precision as earlier versions wrote it in an adapter's molting.json
_LEGACY = {"float32": "fp32", "bfloat16": "bf16", "float32+bf16-autocast": "fp32"}


def trained_precision(recorded: str) -> str:
    """A precision name for what an adapter's molting.json recorded (older spellings included)."""
    if recorded in PRECISIONS:
        return recorded
    if recorded.startswith("nf4"):
        return "nf4"
    if recorded not in _LEGACY:
        raise PlanError(f"the adapter's molting.json records precision {recorded!r}, which is none of "
                        f"{', '.join(PRECISIONS)}; set its 'precision' field to the one it trained in")
    return _LEGACY[recorded]


def eval_plan(recorded: str, quantizable: bool = True) -> Plan:
    """How to load a base for inference here. For a trained adapter (`recorded`: its molting.json
    precision), the precision it trained in where this machine can (the answers its run's own
    evaluation gave), else the nearest that runs well here: an NF4 adapter loads its base in bf16 on a
    GPU without bitsandbytes, in fp32 on a CPU. "auto" (a bare base): bf16 on CUDA, fp32 on a CPU."""
    dev = device()
    native = "bf16" if dev == "cuda" else "fp32"   # what runs well here without 4-bit
    if recorded == AUTO:
        recorded = native
    prec = trained_precision(recorded)
    if prec == "nf4" and (dev == "cpu" or not quantizable):
        prec = native
    return Plan(dev, prec, f"trained in {recorded}", threads(), 1, 1, None, None,
                cpu_native_bf16() if dev == "cpu" else None, eval_merge=dev == "cuda" and not PRECISIONS[prec].quantized)


def quantization_tag(precision: str) -> str:
    """The registry's `quantization` tag for an adapter trained in `precision` (from its molting.json)."""
    return PRECISIONS[precision].quantization_tag if precision in PRECISIONS else precision


# ---------------------------------------------------------------------------------------------
# Trials per GPU: a sweep's trials are host- and launch-bound at these sizes, so several share a card
# ---------------------------------------------------------------------------------------------

CORES_PER_TRIAL = 2    # a trial's Python thread launching kernels, and one for its data and logging threads


def trials_per_gpu(peak_gib: float, budget_gib: float, cpu_cores: int, gpus: int) -> tuple[int, str]:
    """How many trials share one card, and why: as many as their planned peaks fit the card's budget
    (each process with its own CUDA context), and no more than the host's cores give
    CORES_PER_TRIAL each. 128 GiB free / (14.3 + 0.5) GiB a trial = 8; 16 cores / (2 × 1 GPU) = 8."""
    by_memory = int(budget_gib // (peak_gib + CUDA_OVERHEAD_GIB))
    by_cores = cpu_cores // (CORES_PER_TRIAL * max(1, gpus))
    k = max(1, min(by_memory, by_cores))
    limit = "memory" if by_memory <= by_cores else "CPU cores"
    return k, (f"{k} trial(s) a GPU, bound by {limit}: a trial peaks at ~{peak_gib:.1f} GiB (+{CUDA_OVERHEAD_GIB} "
               f"GiB CUDA context) of {budget_gib:.1f} GiB free → {by_memory}; {cpu_cores} CPU cores / "
               f"({CORES_PER_TRIAL} a trial × {gpus} GPU(s)) → {by_cores}")
