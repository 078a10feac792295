"""The runtime plan: precision and micro-batch chosen per machine, with its reasons; preset defaults
that pass pre-flight on every device. No GPU needed: a memory budget plans for a card."""
import pytest
from transformers import LlamaConfig, Phi3Config

from molting_mlflow.ground import runtime
from molting_mlflow.ground.config import TrainConfig
from molting_mlflow.ground.presets import PRESETS

PHI3 = Phi3Config(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32064)
SMOL = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
PHI3_PARAMS, PHI3_LORA = 3_821_079_552, 25_165_824


def test_auto_on_a_big_card_is_bf16_in_micro_batches_of_the_whole_step():
    p = runtime.plan("auto", 4, model_config=PHI3, total=PHI3_PARAMS, trainable=PHI3_LORA, seq=260,
                     gpu_memory_gib=80, dev="cuda")
    assert p.precision == "bf16" and p.micro_batch == 4 and p.accum == 1
    assert p.trainer_kwargs()["bf16"] is True and p.trainer_kwargs()["gradient_checkpointing"] is False
    assert p.params()["train.precision"] == "bf16" and "fit" in p.why


def test_auto_on_a_4gb_card_falls_back_to_qlora_nf4_and_says_why():
    p = runtime.plan("auto", 4, model_config=PHI3, total=PHI3_PARAMS, trainable=PHI3_LORA, seq=260,
                     gpu_memory_gib=4, dev="cuda")
    assert p.precision == "nf4" and p.est_gib <= 4 - runtime.CUDA_OVERHEAD_GIB
    assert "does not fit" in p.why and p.optimizer() == "paged_adamw_8bit"
    assert p.trainer_kwargs()["gradient_checkpointing"] is True
    assert p.examples_per_step % p.micro_batch == 0 and p.micro_batch * p.accum == 4


def test_a_budget_nothing_fits_is_a_one_line_error_with_the_fix():
    with pytest.raises(runtime.PlanError, match="does not fit the GPU memory budget of 1.0 GiB.*Fix: gpu_memory_gib"):
        runtime.plan("auto", 4, model_config=PHI3, total=PHI3_PARAMS, trainable=PHI3_LORA, seq=260,
                     gpu_memory_gib=1, dev="cuda")


@pytest.mark.parametrize("flags,native", [({"avx2", "avx512f", "amx_bf16"}, "amx_bf16"),
                                          ({"avx2", "avx512_bf16"}, "avx512_bf16"), ({"avx2", "fma"}, "none")])
def test_auto_on_a_cpu_is_fp32_and_records_the_native_bf16(monkeypatch, flags, native):
    """fp32 on every CPU (bf16 measured slower for the whole run); bf16 on request, no autocast."""
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    p = runtime.plan("auto", 1, dev="cpu", cpu_micro_batch=1)
    assert p.precision == "fp32" and p.params()["train.cpu_bf16"] == native
    bf16 = runtime.plan("bf16", 1, dev="cpu", cpu_micro_batch=1)
    assert bf16.precision == "bf16" and ("far slower" in bf16.why) == (native == "none")
    assert bf16.trainer_kwargs()["bf16"] is False       # no autocast on a CPU: the bf16 base computes in bf16
    assert p.trainer_kwargs()["use_cpu"] is True


def test_nf4_on_a_cpu_is_refused():
    with pytest.raises(runtime.PlanError, match="nf4 needs a CUDA GPU"):
        runtime.plan("nf4", 1, dev="cpu")


def test_tiny_random_is_fp32_on_auto():
    p = runtime.plan("auto", 8, dev="cpu", cpu_micro_batch=8, quantizable=False, fixed="fp32")
    assert p.precision == "fp32" and p.micro_batch == 8


@pytest.mark.parametrize("recorded,native,expect", [
    ("fp32", None, "fp32"), ("float32", "amx_bf16", "fp32"), ("float32+bf16-autocast", None, "fp32"),
    ("bf16", "amx_bf16", "bf16"), ("nf4-double-quant/bf16-compute", "amx_bf16", "fp32"),
    ("nf4-double-quant/bf16-compute", None, "fp32"), ("auto", None, "fp32"), ("auto", "amx_bf16", "fp32")])
def test_an_adapter_evaluates_in_the_precision_it_trained_in(monkeypatch, recorded, native, expect):
    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: native)
    monkeypatch.setattr(runtime, "device", lambda: "cpu")
    assert runtime.eval_plan(recorded).precision == expect


@pytest.mark.parametrize("preset", [p for p in PRESETS if not PRESETS[p].only_for_plumbing])
def test_every_preset_default_passes_the_step_minimum(preset):
    """Fails when a preset's defaults drop below the minimum, e.g. tinyllama's epochs=8 → 5 in presets.py
    (79 / (1 × 4) = 20 steps an epoch × 5 = 100 < 150)."""
    cfg = TrainConfig(model=preset).resolve()
    assert cfg.optimizer_steps(79) >= cfg.min_steps, (preset, cfg.arithmetic(79))


@pytest.mark.parametrize("recorded,tag", [
    ("fp32", "none (fp32 base, fp32 LoRA)"), ("bf16", "none (bf16 base, fp32 LoRA)"),
    ("nf4", "nf4-double-quant/bf16-compute"), ("nf4-double-quant/bf16-compute", "nf4-double-quant/bf16-compute"),
    ("float32", "none (fp32 base, fp32 LoRA)"), ("bfloat16", "none (bf16 base, fp32 LoRA)")])
def test_the_registry_tag_names_the_precision_an_adapter_trained_in(recorded, tag):
    """registry.register_adapter's `quantization` tag for what an adapter's molting.json recorded (older
    spellings included). Fails when a row's tag changes (nf4's "nf4-double-quant/bf16-compute" → "nf4" in
    runtime.PRECISIONS) or an old spelling maps elsewhere (_LEGACY's "bfloat16": "bf16" → "fp32")."""
    assert runtime.quantization_tag(runtime.trained_precision(recorded)) == tag


# ---- torch's CPU threads: the cores other processes leave free ------------------------------

@pytest.mark.parametrize("others,cores,n", [(1.0, 2, 1), (0.2, 2, 2), (3.5, 2, 1), (0.0, 8, 8), (2.6, 8, 5)])
def test_threads_fit_the_cores_other_processes_leave(others, cores, n):
    """Fails when fitting_threads takes all the cores (the old default: 2 threads beside a busy core ran
    ~55× slower), stops rounding, or goes below one thread when others use more than every core."""
    assert runtime.fitting_threads(others, cores) == n


def test_a_busy_process_leaves_one_core_fewer(monkeypatch):
    """With MOLTING_THREADS unset and a child process spinning on one core, the threads chosen leave that
    core to it and say so. Fails when threads() takes every core again (`int(raw) or os.cpu_count()`)."""
    import os
    import subprocess
    import sys

    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: nothing to leave to another process")
    monkeypatch.delenv("MOLTING_THREADS", raising=False)
    monkeypatch.setattr(runtime, "_chosen", [])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        t = runtime.threads()
    finally:
        busy.kill()
        busy.wait()
    assert t.cores == cores and t.others is not None and t.others >= 0.7, t
    # other work on a shared machine may take more: never more than the cores the child leaves
    assert 1 <= t.n <= cores - 1, t
    if cores == 2:
        assert t.n == 1
    assert t.why.startswith(f"{t.n} of {cores} cores: other processes keep ~") and "busy" in t.why, t.why
    assert runtime.threads() is t           # chosen once a process: no second look


def test_molting_threads_is_taken_as_asked_without_a_look(monkeypatch):
    """MOLTING_THREADS=3 is 3 threads, on any machine and load, said as asked for; the load is not sampled.
    Fails when the count asked for is fitted to the load or capped at the cores."""
    monkeypatch.setenv("MOLTING_THREADS", "3")
    monkeypatch.setattr(runtime, "_chosen", [])
    monkeypatch.setattr(runtime, "cpu_snapshot", lambda: pytest.fail("sampled the load though threads were asked"))
    t = runtime.threads()
    assert (t.n, t.others, t.why) == (3, None, "MOLTING_THREADS=3 asked for")
