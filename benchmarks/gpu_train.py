"""GPU proof of the project's real train path: `molting_mlflow.train.train(TrainConfig(...))` on
random-init models of three real architectures (SmolLM2-135M, TinyLlama-1.1B, Phi-3-mini).

On CUDA that path loads the base in NF4 4-bit with double quant and bf16 compute, runs peft's
`prepare_model_for_kbit_training` with gradient checkpointing, trains a LoRA with TRL's SFTTrainer
and paged AdamW 8-bit, and logs everything to MLflow. This script changes nothing in the library:
it only builds each model folder, calls `train`, and reads the run back through `MlflowClient`.

No pretrained weights are reachable on the GPU machine, so each base is `from_config` (random init,
bf16) saved with `save_pretrained` beside the project's tiny-random tokenizer (a ChatML byte-level
BPE of ~1k tokens from `models.build_tiny_random()`). Its ids are below every vocab size here; the
embedding tables keep the architecture's full size, so memory and speed are the architecture's.
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

def build_folder(name: str, smoke: bool) -> tuple[Path, float]:
    import torch
    from transformers import AutoModelForCausalLM

    from molting_mlflow.models import build_tiny_random

    t = time.time()
    folder = WORK / f"rand-{name}{'-smoke' if smoke else ''}"
    tok = build_tiny_random()[1]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
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

        def on_train_begin(self, args, state, control, model=None, **kw):
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


def child(name: str, smoke: bool, out_json: Path) -> None:
    import torch
    import trl

    from molting_mlflow.config import TrainConfig
    from molting_mlflow.train import train

    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(WORK)  # the experiment's artifact root is ./mlruns of the working directory
    folder, build_s = build_folder(name, smoke)
    cuda = torch.cuda.is_available()
    before = torch.cuda.memory_allocated() if cuda else 0
    timer = make_step_timer()
    extra = {}
    if "callbacks" in inspect.signature(train).parameters:
        extra["callbacks"] = (timer,)  # the library takes extra TrainerCallbacks
    else:
        base = trl.SFTTrainer

        class TimedSFTTrainer(base):  # benchmark-only: the same trainer with one more callback
            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=list(callbacks or []) + [timer], **kw)

        trl.SFTTrainer = TimedSFTTrainer  # train._fit does `from trl import SFTTrainer` at call time
    kw = dict(TRAIN_KW, epochs=1) if smoke else dict(TRAIN_KW)
    t = time.time()
    result = train(TrainConfig(model=str(folder), **kw), **extra)
    total_s = time.time() - t
    rec = dict(arch=name, run_id=result.run_id, timer_hook="train(callbacks=)" if extra else "SFTTrainer subclass", build_s=round(build_s, 1), train_call_s=round(total_s, 1),
               allocated_before_train_mb=round(before / 2**20, 1),
               peak_reserved_mb=round(torch.cuda.max_memory_reserved() / 2**20, 1) if cuda else None,
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
    return dict(
        arch=rec["arch"], run_id=rec["run_id"], status=run.info.status, optimizer_steps=steps,
        train_runtime_s=m["train_runtime_s"], peak_memory_mb=m["peak_memory_mb"],
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
            f"| {LABEL.get(r['arch'], r['arch'])} | {r['params'] / 1e6:.1f}M | {r['trainable_params'] / 1e6:.2f}M "
            f"| {f(r['est_gpu_memory_gib'], '.2f')} | {r['peak_memory_mb'] / 1024:.2f} | {f(b.get('peak_gib'), '.2f')} "
            f"| {f(r['peak_reserved_mb'] and r['peak_reserved_mb'] / 1024, '.2f')} | {r['optimizer_steps']} "
            f"| {r['s_per_step_mean']:.3f} | {r['s_per_step_median']:.3f} | {f(b.get('trial_s_per_step'), '.3f')} "
            f"| {f(b.get('step_s'), '.3f')} | {r['train_tokens_per_s']:.0f} | {f(b.get('trial_tok_s'), '.0f')} "
            f"| {r['final_loss']:.3f} |")
    return "\n".join(lines)


def parent(archs: list[str], smoke: bool) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    out = os.environ.get("OUT")
    v = versions()
    print("versions:", json.dumps(v), flush=True)
    recs, failed = [], []
    for name in archs:
        js = WORK / f"{name}{'-smoke' if smoke else ''}.json"
        js.unlink(missing_ok=True)
        log = Path(out) / f"train_{name}.log" if out else WORK / f"train_{name}.log"
        cmd = [sys.executable, __file__, "--child", name, "--json", str(js)] + (["--smoke"] if smoke else [])
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
        recs.append(rec)
        print(f"    build {rec['build_s']} s, train() {rec['train_call_s']} s, run {rec['run_id']}", flush=True)
    rows = [read_back(r) for r in recs]
    for r in rows:
        print(json.dumps({k: r[k] for k in r}), flush=True)
    table = fmt_table(rows) if rows else "(no architecture finished)"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = [
        f"{when}, {v['device']}; " + ", ".join(f"{k} {v[k]}" for k in v if k not in ("device",)),
        "Real train path: molting_mlflow.train.train(TrainConfig(model=<folder>, epochs=2, batch_size=1, "
        "grad_accum=4, lr=2e-4, max_seq_len=512, min_steps=0, evaluate=False)) on the shipped 79-example dataset; "
        "numbers read back from the MLflow run (SQLite store).",
        "Random-init bases (from_config, bf16) with the project's tiny-random ChatML tokenizer (~1k tokens, ids "
        "below every vocab size): memory and speed are the architecture's; the losses mean nothing.",
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
    if failed:
        notes.append("FAILED: " + ", ".join(failed) + " (see train_<arch>.log)")
    detail = ["| model | steps | train_runtime_s | first step s | median s/step after 3 | median step-end interval s "
              "| tokens/epoch | mean tokens/example | precision | grad ckpt | optimizer | trainable counted |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        detail.append(f"| {LABEL.get(r['arch'], r['arch'])} | {r['optimizer_steps']} | {r['train_runtime_s']:.1f} "
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
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.smoke, Path(a.json))
        return 0
    return parent([x for x in a.archs.split(",") if x], a.smoke)


if __name__ == "__main__":
    sys.exit(main())
