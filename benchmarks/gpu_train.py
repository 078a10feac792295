"""GPU proof of the project's real train path: `molting_mlflow.stages.train.train(TrainConfig(...))` on
random-init models of three real architectures (SmolLM2-135M, TinyLlama-1.1B, Phi-3-mini).

On CUDA that path loads the base in NF4 4-bit with double quant and bf16 compute, runs peft's
`prepare_model_for_kbit_training` with gradient checkpointing, trains a LoRA with TRL's SFTTrainer
and paged AdamW 8-bit, and logs everything to MLflow. This script changes nothing in the library:
it only builds each model folder, calls `train`, and reads the run back through `MlflowClient`.

No pretrained weights are reachable on the GPU machine, so each base is `from_config` (random init,
bf16) saved with `save_pretrained` beside a ChatML byte-level BPE built exactly like the project's
tiny-random one (`models.build_tiny_random()`), but with 366 tokens instead of ~1k: that vocabulary
renders the shipped 79 examples (system prompt included) as 16,400 tokens, 160-250 an example,
the same work as the baseline's 79 random sequences of 120-280 tokens (16,381); the ~1k one gives
8,108 (half). Its ids are below every vocab size here; the embedding tables keep the
architecture's full size, so memory and speed are the architecture's.
Losses are meaningless (random weights); steps, time and memory are the point.

Each architecture trains in its own process (clean CUDA peak and allocator); the parent reads the
runs back from the SQLite store and prints a markdown table (also $OUT/gpu_train.md when $OUT is
set). Per-step wall times come from a TrainerCallback that this script alone adds, by handing
`train` a subclass of trl.SFTTrainer (the library is not touched).

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_train.py            # on the GPU machine
    python3 benchmarks/gpu_train.py --smoke                       # tiny shapes, CPU, checks the script
"""
from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("GPU_BENCH_DIR", "/tmp/gpu"))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{WORK}/mlflow.db")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXPERIMENT = "gpu"
TRAIN_KW = dict(epochs=2, batch_size=1, grad_accum=4, lr=2e-4, max_seq_len=512, min_steps=0, evaluate=False,
                experiment=EXPERIMENT)

# ../shared/bench (plain transformers + peft + bitsandbytes, same H100, 2026-11-24).
# step_s: one micro-batch (forward, backward, optimizer) of 512 random tokens, median of 10
# (gpu_baseline.py); trial_*: one epoch of 79 examples, batch 1 × grad_accum 4 = 20 optimizer steps
# (gpu_trial_baseline.py), so trial s/step = epoch s / 20.
BASELINE = {
    "smol": dict(peak_gib=0.44, step_s=None, trial_s_per_step=40.7 / 20, trial_tok_s=402),
    "tinyllama": dict(peak_gib=1.30, step_s=0.4093, trial_s_per_step=27.6 / 20, trial_tok_s=594),
    "phi3": dict(peak_gib=2.99, step_s=0.4086, trial_s_per_step=29.5 / 20, trial_tok_s=555),
}
LABEL = {"smol": "SmolLM2-135M", "tinyllama": "TinyLlama-1.1B", "phi3": "Phi-3-mini"}


def arch_config(name: str, smoke: bool):
    from transformers import LlamaConfig, Phi3Config

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2)  # the tiny-random tokenizer's
    if smoke:  # same families, toy sizes: checks this script on a CPU in seconds
        if name == "phi3":
            return Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=4, vocab_size=32064, **ids)
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=49152 if name == "smol" else 32000,
                           tie_word_embeddings=name == "smol", **ids)
    if name == "smol":
        return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                           max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, **ids)
    if name == "tinyllama":
        return LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                           rms_norm_eps=1e-5, **ids)
    if name == "phi3":
        return Phi3Config(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, **ids)
    raise SystemExit(f"unknown architecture {name!r}")


# ------------------------------------------------------------------------------------------------
# child: one architecture, one process
# ------------------------------------------------------------------------------------------------

BENCH_VOCAB = 366  # 16,400 tokens an epoch on the shipped dataset, as the baseline's 16,381


def bench_tokenizer(vocab_size: int = BENCH_VOCAB):
    """models.build_tiny_random()'s tokenizer (same corpus, specials, ChatML template, ids 0-2),
    with a smaller vocabulary so that examples have realistic lengths (see the module docstring)."""
    from molting_mlflow.ground.models import tiny_tokenizer

    tok = tiny_tokenizer(vocab_size)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    return tok


def build_folder(name: str, smoke: bool) -> tuple[Path, float]:
    import torch
    from transformers import AutoModelForCausalLM

    t = time.time()
    folder = WORK / f"rand-{name}{'-smoke' if smoke else ''}"
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return folder, 0.0  # built by an earlier child of this benchmark (deterministic: same config, seed)
    tok = bench_tokenizer()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(arch_config(name, smoke), dtype=torch.bfloat16)
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = 2
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    return folder, time.time() - t


def make_step_timer():
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step: on_step_begin (before the first micro-batch's forward)
        to on_step_end (after optimizer.step and zero_grad), synchronised; and end-to-end intervals,
        which also hold batch fetching, collation and the per-step logging (MLflow metrics)."""

        def __init__(self):
            self.steps, self.intervals, self.trainable = [], [], None
            self._t0 = self._last_end = None
            self.peak_reserved = None
            self.args = {}

        def on_train_end(self, args, state, control, **kw):
            if cuda:  # the allocator's peak over training only (the run's own reset is at train start)
                self.peak_reserved = torch.cuda.max_memory_reserved()

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.args = {k: str(getattr(args, k, None)) for k in (
                "bf16", "max_grad_norm", "gradient_checkpointing", "gradient_checkpointing_kwargs", "optim",
                "completion_only_loss", "padding_free", "lr_scheduler_type", "logging_steps")}
            if model is not None:
                self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            sync()
            self._last_end = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            now = time.perf_counter()
            self.steps.append(now - self._t0)
            self.intervals.append(now - self._last_end)
            self._last_end = now

    return StepTimer()


def make_profiler(first: int = 5, last: int = 7):
    """torch.profiler over optimizer steps first+1..last (CPU ops and CUDA kernels), printed at the end."""
    import torch
    from transformers import TrainerCallback

    class Prof(TrainerCallback):
        def __init__(self):
            self.prof = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == first and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == last and self.prof is not None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                ka = self.prof.key_averages()
                n = last - first
                kernels = sum(e.count for e in ka if getattr(e, "device_type", None) is not None
                              and "CUDA" in str(e.device_type))
                launches = sum(e.count for e in ka if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                                 "cuLaunchKernelEx"))
                print(f"\n##### profile of {n} optimizer steps: {kernels / n:.0f} GPU kernels/step, "
                      f"{launches / n:.0f} launch calls/step", flush=True)
                for key in ("self_cpu_time_total", "self_device_time_total"):
                    try:
                        print(f"\n##### by {key}\n" + ka.table(sort_by=key, row_limit=30, max_name_column_width=70),
                              flush=True)
                    except Exception as e:  # older torch: cuda_time_total
                        print(f"(table by {key} failed: {e})", flush=True)
                self.prof = None

    return Prof()


def child(name: str, smoke: bool, out_json: Path, evaluate: bool = False, sft: dict | None = None,
          profile: bool = False, epochs: int = 2) -> None:
    import torch
    import trl

    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages.train import train

    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(WORK)  # the experiment's artifact root is ./mlruns of the working directory
    folder, build_s = build_folder(name, smoke)
    cuda = torch.cuda.is_available()
    before = torch.cuda.memory_allocated() if cuda else 0
    timer = make_step_timer()
    cbs = (timer, make_profiler()) if profile else (timer,)
    sft = dict(sft or {})
    if sft.pop("_cudnn_sdp", True) is False:  # diagnosis only: keep SDPA off its cuDNN backend
        torch.backends.cuda.enable_cudnn_sdp(False)
    if sft:  # diagnosis only: override SFTConfig fields (train._fit does `from trl import SFTConfig` at call time)
        base_cfg = trl.SFTConfig

        class PatchedSFTConfig(base_cfg):
            def __init__(self, *a, **kw):
                kw.update(sft)
                super().__init__(*a, **kw)

        trl.SFTConfig = PatchedSFTConfig
    extra = {}
    if "callbacks" in inspect.signature(train).parameters:
        extra["callbacks"] = cbs  # the library takes extra TrainerCallbacks
    else:
        base = trl.SFTTrainer

        class TimedSFTTrainer(base):  # benchmark-only: the same trainer with one more callback
            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=list(callbacks or []) + list(cbs), **kw)

        trl.SFTTrainer = TimedSFTTrainer  # train._fit does `from trl import SFTTrainer` at call time
    kw = dict(TRAIN_KW, epochs=1) if smoke else dict(TRAIN_KW, epochs=epochs)
    kw["evaluate"] = evaluate  # the in-run evaluation (Rubric v1.0 generation) after training
    t = time.time()
    result = train(TrainConfig(model=str(folder), **kw), **extra)
    total_s = time.time() - t
    rec = dict(arch=name, sft=sft or {}, run_id=result.run_id, timer_hook="train(callbacks=)" if extra else "SFTTrainer subclass", build_s=round(build_s, 1), train_call_s=round(total_s, 1),
               allocated_before_train_mb=round(before / 2**20, 1),
               peak_reserved_mb=round(timer.peak_reserved / 2**20, 1) if timer.peak_reserved else None,
               evaluate=evaluate, scores=result.scores, trainer_args=timer.args,
               step_s=timer.steps, interval_s=timer.intervals, trainable_counted=timer.trainable,
               optimizer_steps=result.optimizer_steps, final_loss=result.final_loss)
    out_json.write_text(json.dumps(rec, indent=1))


# ------------------------------------------------------------------------------------------------
# parent: run the children, read the runs back, print the table
# ------------------------------------------------------------------------------------------------

def versions() -> dict:
    import importlib.metadata as md
    import platform

    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__}
    for p in ("transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "mlflow-skinny",
              "mlflow", "tokenizers", "safetensors", "pandas", "pyarrow", "numpy"):
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    v["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return v


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def read_back(rec: dict) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(rec["run_id"])
    m, p = run.data.metrics, run.data.params
    pre = json.loads(mlflow.artifacts.load_text(f"runs:/{rec['run_id']}/preflight.json"))
    n = pre["numbers"]
    steps = int(m["optimizer_steps"])
    st = rec["step_s"]
    ev = None
    if rec.get("evaluate"):  # the in-run evaluation: generation metrics and the per-question table
        tbl = json.loads(mlflow.artifacts.load_text(f"runs:/{rec['run_id']}/eval_results.json"))
        cols, data = tbl["columns"], tbl["data"]
        finish = [row[cols.index("finish_reason")] for row in data]
        ev = dict(questions=len(data), score=m.get("score"), gen_tokens=m.get("gen_tokens"),
                  gen_seconds=m.get("gen_seconds"), gen_tokens_per_s=m.get("gen_tokens_per_s"),
                  finish={k: finish.count(k) for k in sorted(set(finish))},
                  sample=data[0][cols.index("response")][:80] if data else None,
                  max_new_tokens=p.get("eval.max_new_tokens"))
    return dict(evaluation=ev, variant=rec.get("variant", ""), sft=rec.get("sft", {}), trainer_args=rec.get("trainer_args"),
        arch=rec["arch"], run_id=rec["run_id"], status=run.info.status, optimizer_steps=steps,
        train_runtime_s=m["train_runtime_s"], peak_memory_mb=m["peak_memory_mb"], model_load_s=m.get("model_load_s"),
        train_tokens=m.get("train_tokens"), train_tokens_per_s=m["train_tokens_per_s"], final_loss=m["final_loss"],
        precision=p.get("train.precision"), gradient_checkpointing=p.get("train.gradient_checkpointing"),
        optimizer=p.get("train.optimizer"), lora_targets=p.get("lora.targets"),
        params=n.get("params"), trainable_params=n.get("trainable_params"), trainable_counted=rec["trainable_counted"],
        est_gpu_memory_gib=n.get("est_gpu_memory_gib"), mean_tokens=n.get("mean_tokens"),
        tokens_per_epoch=n.get("train_tokens_per_epoch"),
        s_per_step_mean=m["train_runtime_s"] / steps,
        s_per_step_median=median(st), s_per_step_median_after3=median(st[3:]), first_step_s=st[0] if st else None,
        interval_median_s=median(rec["interval_s"]), peak_reserved_mb=rec["peak_reserved_mb"],
        allocated_before_train_mb=rec["allocated_before_train_mb"], build_s=rec["build_s"],
        train_call_s=rec["train_call_s"], timer_hook=rec.get("timer_hook"),
    )


def row_label(r: dict) -> str:
    return LABEL.get(r["arch"], r["arch"]) + (f" [{r['variant']}]" if r.get("variant") else "")


def fmt_table(rows: list[dict]) -> str:
    def f(x, spec):
        return "–" if x is None else format(x, spec)

    head = ("| model | params | trainable (pre-flight) | est. GiB (pre-flight) | peak GiB | baseline peak GiB "
            "| peak reserved GiB | opt. steps | s/step mean | s/step median | baseline s/step (trial) "
            "| baseline s/micro-step | tokens/s | baseline tokens/s (trial) | final loss |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        b = BASELINE.get(r["arch"], {})
        lines.append(
            f"| {row_label(r)} | {r['params'] / 1e6:.1f}M | {r['trainable_params'] / 1e6:.2f}M "
            f"| {f(r['est_gpu_memory_gib'], '.2f')} | {r['peak_memory_mb'] / 1024:.2f} | {f(b.get('peak_gib'), '.2f')} "
            f"| {f(r['peak_reserved_mb'] and r['peak_reserved_mb'] / 1024, '.2f')} | {r['optimizer_steps']} "
            f"| {r['s_per_step_mean']:.3f} | {r['s_per_step_median']:.3f} | {f(b.get('trial_s_per_step'), '.3f')} "
            f"| {f(b.get('step_s'), '.3f')} | {r['train_tokens_per_s']:.0f} | {f(b.get('trial_tok_s'), '.0f')} "
            f"| {r['final_loss']:.3f} |")
    return "\n".join(lines)


def parent(archs: list[str], smoke: bool, eval_arch: str = "", variants: list | None = None,
           profile: str | None = None, epochs: int = 2) -> int:
    variants = variants or [("", {})]
    WORK.mkdir(parents=True, exist_ok=True)
    out = os.environ.get("OUT")
    v = versions()
    print("versions:", json.dumps(v), flush=True)
    recs, failed = [], []
    jobs = [(name, label, over) for name in archs for label, over in variants]
    for name, label, over in jobs:
        tag = f"{name}-{label}" if label else name
        js = WORK / f"{tag}{'-smoke' if smoke else ''}.json"
        js.unlink(missing_ok=True)
        log = Path(out) / f"train_{tag}.log" if out else WORK / f"train_{tag}.log"
        cmd = [sys.executable, __file__, "--child", name, "--json", str(js), "--epochs", str(epochs)] \
            + (["--smoke"] if smoke else []) + (["--evaluate"] if name == eval_arch and label == variants[0][0] else []) \
            + (["--sft", json.dumps(over)] if over else []) + (["--profile-child"] if profile is not None and label == profile else [])
        name = tag
        print(f"\n=== {name}: {' '.join(cmd)}  (log: {log})", flush=True)
        t = time.time()
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        print(f"=== {name}: rc={rc} in {time.time() - t:.0f} s", flush=True)
        if rc != 0 or not js.is_file():
            failed.append(name)
            text = log.read_text(errors="replace")
            print("--- last 6000 characters of its log ---\n" + text[-6000:], flush=True)
            continue
        rec = json.loads(js.read_text())
        rec["variant"] = label
        recs.append(rec)
        print(f"    build {rec['build_s']} s, train() {rec['train_call_s']} s, run {rec['run_id']}", flush=True)
    rows = [read_back(r) for r in recs]
    for r in rows:
        print(json.dumps({k: r[k] for k in r}), flush=True)
    table = fmt_table(rows) if rows else "(no architecture finished)"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = [
        f"{when}, {v['device']}; " + ", ".join(f"{k} {v[k]}" for k in v if k not in ("device",)),
        f"Real train path: molting_mlflow.stages.train.train(TrainConfig(model=<folder>, epochs={epochs}, batch_size=1, "
        "grad_accum=4, lr=2e-4, max_seq_len=512, min_steps=0, evaluate=False" + (f"; True for {eval_arch}" if eval_arch
        in archs else "") + ")) on the shipped 79-example dataset; numbers read back from the MLflow run (SQLite store).",
        f"Random-init bases (from_config, bf16) with a ChatML byte-level BPE built like the project's tiny-random "
        f"one but of {BENCH_VOCAB} tokens, so the 79 examples are 16,400 tokens an epoch like the baseline's 16,381 "
        "(ids below every vocab size): memory and speed are the architecture's; the losses mean nothing.",
        "peak GiB = the run's peak_memory_mb (torch.cuda.max_memory_allocated over trainer.train(), weights "
        "included); peak reserved = the caching allocator's peak over the same span (a real card also needs "
        "the CUDA context, a few hundred MiB, on top).",
        "s/step mean = train_runtime_s / optimizer_steps (first steps' warm-up included); s/step median = "
        "median of per-optimizer-step wall times (4 micro-batches each) from a benchmark-only TrainerCallback.",
        "Baseline (../shared/bench): peak = plain-stack trial train peak; s/step (trial) = plain-stack epoch "
        "seconds / 20 optimizer steps of the same shape (batch 1 × grad_accum 4, 79 examples of 120-280 random "
        "tokens); s/micro-step = one 512-token forward+backward+optimizer step (the '~0.4 s'), not an optimizer "
        "step of 4 micro-batches.",
    ]
    for r in rows:
        ev = r["evaluation"]
        if ev:
            notes.append(
                f"In-run evaluation on {v['device']} ({LABEL.get(r['arch'], r['arch'])}, evaluate=True, same run, after the "
                f"measured training; 4-bit base + LoRA in memory): {ev['questions']} questions in one batch, greedy, "
                f"max_new_tokens {ev['max_new_tokens']}: {ev['gen_tokens']:.0f} tokens in {ev['gen_seconds']:.1f} s "
                f"({ev['gen_tokens_per_s']:.0f} tokens/s), finish {ev['finish']}, rubric score {ev['score']:.2f}/10 "
                f"(random weights: the answers are noise, e.g. {ev['sample']!r}); peak GiB and train numbers above "
                "are logged before it runs.")
    for lab, over in variants:
        if over:
            notes.append(f"[{lab}]: diagnosis only, the same train() with SFTConfig fields overridden: {json.dumps(over)}"
                         + (f"; torch.profiler over optimizer steps 6-7 (in this run's log)" if lab == profile else ""))
        elif profile is not None and lab == profile:
            notes.append(f"[{lab or 'default'}] carried torch.profiler over optimizer steps 6-7 (in its log)")
    if failed:
        notes.append("FAILED: " + ", ".join(failed) + " (see train_<arch>.log)")
    detail = ["| model | load (+quantise) s | steps | train_runtime_s | first step s | median s/step after 3 | median step-end interval s "
              "| tokens/epoch | mean tokens/example | precision | grad ckpt | optimizer | trainable counted |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        load = "–" if r["model_load_s"] is None else f"{r['model_load_s']:.1f}"
        detail.append(f"| {row_label(r)} | {load} | {r['optimizer_steps']} | {r['train_runtime_s']:.1f} "
                      f"| {r['first_step_s']:.2f} | {r['s_per_step_median_after3']:.3f} | {r['interval_median_s']:.3f} "
                      f"| {r['tokens_per_epoch']} | {r['mean_tokens']} | {r['precision']} "
                      f"| {r['gradient_checkpointing']} | {r['optimizer']} | {r['trainable_counted']} |")
    md = table + "\n\n" + "\n".join(detail) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print("\n" + md, flush=True)
    if out:
        Path(out, "gpu_train.md").write_text(md)
        Path(out, "gpu_train.json").write_text(json.dumps({"versions": v, "rows": rows, "raw": recs}, indent=1))
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="smol,tinyllama,phi3")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, 1 epoch: checks the script (CPU is fine)")
    ap.add_argument("--eval-arch", default="tinyllama",
                    help="the architecture whose run also evaluates itself in-run (evaluate=True); '' for none")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=JSON",
                    help="diagnosis: also run each arch with these SFTConfig overrides, e.g. nobf16='{\"bf16\": false}' "
                         "(LABEL= alone: the unchanged path; the key _cudnn_sdp: false turns torch's cuDNN SDPA "
                         "backend off in that process); repeatable")
    ap.add_argument("--profile", metavar="LABEL", help="profile optimizer steps 6-7 of this variant's runs")
    ap.add_argument("--sft", help=argparse.SUPPRESS)
    ap.add_argument("--profile-child", dest="profile_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.smoke, Path(a.json), a.evaluate, json.loads(a.sft) if a.sft else None, a.profile_child,
              a.epochs)
        return 0
    variants = []
    for v in a.variant:
        lab, _, js = v.partition("=")
        variants.append((lab, json.loads(js) if js.strip() else {}))
    return parent([x for x in a.archs.split(",") if x], a.smoke, a.eval_arch, variants, a.profile, a.epochs)


if __name__ == "__main__":
    sys.exit(main())
