"""GPU speed of the project's own `train()` (training + in-run evaluation + logging) beside the plain
baselines of ../shared/bench, all in one device call, printed as one markdown table.

Random-init models of the real architectures (SmolLM2-135M, TinyLlama-1.1B, Phi-3-mini; no weights
are reachable on the GPU machine: speed and memory come from the architecture), each behind its
preset (MOLTING_<PRESET>_PATH), so `train()` runs with the preset's defaults for a GPU unless a
variant overrides them. The tokenizer is benchmarks/gpu_train.py's 366-token ChatML BPE: the shipped
79 examples with the system prompt are ~16.4k tokens an epoch, the baselines' size.

Each configuration trains in its own process (a clean CUDA peak); numbers are read back from the
MLflow run (`train_tokens_per_s`, `train_runtime_s`, `gen_seconds`, `eval_seconds`, `peak_memory_mb`, …);
on CUDA the training's peak is given both allocated (the run's peak_memory_mb) and reserved by the caching
allocator (torch.cuda.max_memory_reserved, read by a callback at training's end), and the process's memory
on the card as the driver counts it (CUDA context included).

    python3 benchmarks/gpu_speed.py                                   # every arch, preset defaults
    python3 benchmarks/gpu_speed.py --archs phi3 --variant '4gib={"gpu_memory_gib": 4}'
    python3 benchmarks/gpu_speed.py --baselines ../shared/bench       # also run the shared baselines
    python3 benchmarks/gpu_speed.py --mlflow-run phi3                 # also time `mlflow run . -e train`
    python3 benchmarks/gpu_speed.py --smoke --archs smol --variant 'e1={"epochs": 1, "min_steps": 0}' \
        --mlflow-run smol                                             # toy shapes, checks the script on a CPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
WORK = Path(os.environ.get("GPU_BENCH_DIR", "/tmp/gpu"))
os.environ.setdefault("GPU_BENCH_DIR", str(WORK))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{WORK}/mlflow.db")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LABEL = {"smol": "SmolLM2-135M", "tinyllama": "TinyLlama-1.1B", "phi3": "Phi-3-mini"}


def child(arch: str, variant: str, overrides: dict, smoke: bool) -> None:
    """One train() with the preset `arch` on the random-init folder; prints one JSON line."""
    import mlflow
    from gpu_train import build_folder

    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages.train import train

    folder, _ = build_folder(arch, smoke)
    os.environ[f"MOLTING_{arch.upper()}_PATH"] = str(folder)
    patches = {k: overrides.pop(k) for k in list(overrides) if k.startswith("_")}
    _patch(patches)
    kw = {"model": arch, "experiment": "gpu-speed", **overrides}
    mem = MemoryAtTrainEnd()
    t0 = time.time()
    r = train(TrainConfig(**kw), log=lambda *a: None, callbacks=(mem.callback(),))
    wall = time.time() - t0
    after_eval = cuda_peaks()                     # training and the in-run evaluation
    run = mlflow.get_run(r.run_id)
    m, p = run.data.metrics, run.data.params
    evals = eval_again(r.run_id, static=patches.get("_static_cache"))
    print("RESULT " + json.dumps({
        "arch": arch, "variant": variant, "wall_s": round(wall, 1), "precision": p["train.precision"],
        "examples_per_step": int(p["train.batch_size"]) * int(p["train.grad_accum"]),
        "micro_batch": int(p["train.micro_batch"]), "epochs": int(p["train.epochs"]), "steps": int(m["optimizer_steps"]),
        "tok_s": round(m["train_tokens_per_s"]), "train_s": round(m["train_runtime_s"], 1),
        "load_s": round(m["model_load_s"], 2), "gen_s": round(m.get("gen_seconds", float("nan")), 2),
        "eval_s": round(m.get("eval_seconds", float("nan")), 2),
        "peak_gib": round(m["peak_memory_mb"] / 1024, 2), "est_gib": p.get("train.est_gpu_memory_gib"),
        # training's window (train() resets the peaks just before trainer.train()): allocated is the run's
        # peak_memory_mb; reserved is what the caching allocator held, the card's share without the CUDA
        # context; nvml: this process's memory on the card at training's end, the context included
        "train_peak_allocated_gib": mem.peaks.get("allocated_gib"),
        "train_peak_reserved_gib": mem.peaks.get("reserved_gib"), "train_end_nvml_gib": mem.peaks.get("nvml_gib"),
        "peak_allocated_with_eval_gib": after_eval.get("allocated_gib"),
        "peak_reserved_with_eval_gib": after_eval.get("reserved_gib"),
        "eval_again_s": evals, "phases": {k: round(v, 2) for k, v in m.items() if k.startswith("time_")}}), flush=True)


def cuda_peaks() -> dict:
    """Peak allocated and reserved GiB since the last reset of the peaks; this process's GiB on the card
    as the driver counts it (CUDA context included); {} without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {}
    torch.cuda.synchronize()
    out = {"allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        used = [x.usedGpuMemory for x in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if x.pid == os.getpid() and x.usedGpuMemory]
        out["nvml_gib"] = round(used[0] / 2**30, 2) if used else None
    except Exception:              # pid namespaces (a container) can hide the process from the driver
        out["nvml_gib"] = None
    return out


class MemoryAtTrainEnd:
    """A TrainerCallback's reading of cuda_peaks() at training's end, before the adapter is logged and the
    in-run evaluation starts: the window of the run's peak_memory_mb, with the reserved peak beside it."""
    def __init__(self):
        self.peaks: dict = {}

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class Peaks(TrainerCallback):
            def on_train_end(self, args, state, control, **kw):
                outer.peaks = cuda_peaks()

        return Peaks()


def _patch(patches: dict) -> None:
    """Exploration knobs, not settings: `_autocast` puts bf16 autocast back on CUDA (as before)."""
    from dataclasses import replace

    from molting_mlflow.ground import runtime

    if "_autocast" in patches:
        runtime.PRECISIONS["bf16"] = replace(runtime.PRECISIONS["bf16"], cuda_autocast=bool(patches["_autocast"]))


def eval_again(run_id: str, static=None) -> dict:
    """The saved adapter on a fresh load: the evaluate stage's generation unmerged, then merged into
    copies (generation.merged_lora, as train's in-run evaluation does) twice, cold and warm; and how
    many of the merged answers' tokens equal the unmerged ones (bf16 rounds the merged weights, and
    random-init logits are nearly flat, so greedy tokens may part; fp32 equality is a CPU test)."""
    from molting_mlflow.ground.generation import generate, merged_lora
    from molting_mlflow.ground.models import load_adapter_model, resolve_adapter
    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS
    from molting_mlflow.ground.questions import load_questions

    model, tok, meta, plan = load_adapter_model(resolve_adapter(f"runs:/{run_id}/adapter"))
    qs = load_questions(DEFAULT_QUESTIONS)
    unmerged, s_unmerged = generate(model, tok, qs, meta.get("system_prompt"), 96, static=static)
    if not plan.eval_merge:                       # an NF4 base: its 4-bit weights take no merged copy
        return {"unmerged_s": round(s_unmerged["gen_seconds"], 2), "merged_s": [], "token_agreement": None,
                "answers_equal": None}
    times = []
    with merged_lora(model):
        for _ in range(2):
            merged, stats = generate(model, tok, qs, meta.get("system_prompt"), 96, static=static)
            times.append(round(stats["gen_seconds"], 2))
    same = total = 0
    for u, m in zip(unmerged, merged):
        a, b = tok(u["response"])["input_ids"], tok(m["response"])["input_ids"]
        same += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        total += max(len(a), len(b))
    return {"unmerged_s": round(s_unmerged["gen_seconds"], 2), "merged_s": times,
            "token_agreement": round(same / total, 3) if total else None,
            "answers_equal": sum(u["response"] == m["response"] for u, m in zip(unmerged, merged))}


def run_child(arch: str, variant: str, overrides: dict, smoke: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", arch, "--name", variant, "--overrides", json.dumps(overrides)]
    cmd += ["--smoke"] if smoke else []
    t = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        said = (out.stderr or out.stdout).strip().splitlines() or [f"rc {out.returncode}, no output"]
        if os.environ.get("OUT"):              # the error's context, beside the table's one line
            with open(Path(os.environ["OUT"], "gpu_speed_errors.log"), "a", encoding="utf-8") as f:
                f.write(f"## {arch} {variant}: rc {out.returncode}\n" + "\n".join(said[-40:]) + "\n")
        return {"arch": arch, "variant": variant, "error": said[-1][:300], "wall_s": round(time.time() - t, 1)}
    return json.loads(lines[-1][len("RESULT "):])


def baselines(folder: Path, archs: list[str]) -> list[str]:
    """The shared baselines as they print themselves (their own tables/JSON), run in this call."""
    out = []
    for script, args in (("gpu_trial_baseline.py", [a for a in archs if a != "tinyllama"]), ("gpu_fast.py", archs)):
        t = time.time()
        r = subprocess.run([sys.executable, script, *args], cwd=folder, capture_output=True, text=True,
                           env={**os.environ, "MOLTING_SRC": str(ROOT), "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"})
        out.append(f"### {script} {' '.join(args)} ({time.time() - t:.0f} s, rc {r.returncode})\n")
        out.append("\n".join(r.stdout.strip().splitlines()[-25:]) + "\n" + ("\n".join(r.stderr.strip().splitlines()[-5:])
                                                                        if r.returncode else ""))
    return out


def time_mlflow_run(arch: str, smoke: bool) -> str:
    """Wall time of the design card's command on a random-init model folder (not the preset name: the
    folder takes its architecture's defaults), and where it went: training and evaluation as the
    run logged them (train_runtime_s; eval_seconds: answers and ref_nll), the rest outside them, and of
    that rest what the run timed itself (time_*_s: process start to train(), run open, params, trainer
    setup, adapter logging, evaluation logging). Targets (the issue): ≤ 60 s wall, ≤ 15 s outside."""
    import mlflow
    from gpu_train import build_folder

    folder, _ = build_folder(arch, smoke)
    extra = ["-P", "epochs=1", "-P", "min_steps=0"] if smoke else []     # a CPU: one epoch, to check the script
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local",
                        "--experiment-name", "gpu-mlflow-run", "-P", f"model={folder}", *extra], cwd=ROOT,
                       capture_output=True, text=True)
    wall = time.time() - t
    tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
    runs = mlflow.search_runs(experiment_names=["gpu-mlflow-run"], output_format="list",
                              order_by=["attributes.start_time DESC"], max_results=1)
    phases = ""
    if runs:
        m, p = runs[0].data.metrics, runs[0].data.params
        train_s, eval_s = m.get("train_runtime_s", 0.0), m.get("eval_seconds", m.get("gen_seconds", 0.0))
        outside = wall - train_s - eval_s
        timed = {k[len("time_"):-2]: round(v, 1) for k, v in sorted(m.items())
                 if k.startswith("time_") and k != "time_in_train_s"}
        untimed = wall - m.get("time_in_train_s", 0.0) - m.get("time_before_train_s", 0.0)
        phases = (f"; training {train_s:.1f} s, evaluation {eval_s:.1f} s (generation {m.get('gen_seconds', 0):.2f} s), "
                  f"outside them {outside:.1f} s (targets: ≤ 60 s wall: {'met' if wall <= 60 else 'not met'}; "
                  f"≤ 15 s outside: {'met' if outside <= 15 else 'not met'})\n"
                  f"    outside, as the run timed it (s): {timed}, model_load_s {m.get('model_load_s', 0):.1f}; "
                  f"neither in train() nor before it in the child (`mlflow run`'s own process start and run creation, "
                  f"the run's end, the exits): {untimed:.1f} s\n"
                  f"    defaults: {p.get('train.epochs')} epochs × {p.get('train.grad_accum')} grad_accum × "
                  f"{p.get('train.batch_size')} = {int(m.get('optimizer_steps', 0))} steps, "
                  f"max_seq_len {p.get('train.max_seq_len')}, precision {p.get('train.precision')}")
    text = (f"`mlflow run . -e train -P model=<random-init {arch} folder>`{' ' + ' '.join(extra) if extra else ''}: "
            f"rc {r.returncode}, {wall:.1f} s wall{phases}\n" + "\n".join("    " + ln for ln in tail))
    if os.environ.get("OUT"):               # as it goes: a later timeout still returns it
        Path(os.environ["OUT"], "mlflow_run.md").write_text(text + "\n", encoding="utf-8")
    return text


def table(rows: list[dict]) -> str:
    head = ("| arch | variant | precision | examples/step | micro-batch | steps | train tok/s | train s | load s | "
            "in-run eval s (answers; answers + ref_nll) | again: unmerged s, merged cold/warm s, bf16 token agreement | "
            "training peak GiB allocated / reserved (process on the card, nvml) | peak with evaluation, allocated / "
            "reserved | est GiB | train() wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {LABEL.get(r['arch'], r['arch'])} | {r['variant']} | error: {r['error']} |")
            continue
        lines.append(f"| {LABEL.get(r['arch'], r['arch'])} | {r['variant']} | {r['precision']} | {r['examples_per_step']} | "
                     f"{r['micro_batch']} | {r['steps']} | {r['tok_s']:,} | {r['train_s']} | {r['load_s']} | "
                     f"{r['gen_s']}; {r.get('eval_s')} | {_again(r.get('eval_again_s'))} | {r['peak_gib']} / "
                     f"{r.get('train_peak_reserved_gib')} ({r.get('train_end_nvml_gib')}) | "
                     f"{r.get('peak_allocated_with_eval_gib')} / {r.get('peak_reserved_with_eval_gib')} | "
                     f"{r['est_gib']} | {r['wall_s']} |")
    return "\n".join(lines)


def _again(e) -> str:
    if not e:
        return ""
    if not e["merged_s"]:                      # an NF4 base (or a CPU): decoded unmerged only
        return f"{e['unmerged_s']} (unmerged only: no merged copy of this base)"
    return (f"{e['unmerged_s']}, {'/'.join(map(str, e['merged_s']))}, {e['token_agreement']} "
            f"({e['answers_equal']}/8 answers equal)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="smol,tinyllama,phi3")
    ap.add_argument("--variant", action="append", default=[], help="name=JSON of TrainConfig overrides")
    ap.add_argument("--baselines", default="", help="folder with the shared bench scripts (run them too)")
    ap.add_argument("--mlflow-run", default="", help="arch whose `mlflow run . -e train` wall time to measure")
    ap.add_argument("--smoke", action="store_true", help="toy shapes, checks the script on a CPU")
    ap.add_argument("--child"), ap.add_argument("--name"), ap.add_argument("--overrides")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if a.child:
        return child(a.child, a.name, json.loads(a.overrides), a.smoke)
    variants = [v.split("=", 1) for v in a.variant] or [["preset", "{}"]]
    rows, t0 = [], time.time()
    for arch in a.archs.split(","):
        for name, js in variants:
            rows.append(run_child(arch, name, json.loads(js), a.smoke))
            print(json.dumps(rows[-1]), flush=True)
            if os.environ.get("OUT"):            # as it goes: a timeout still returns the rows done
                Path(os.environ["OUT"], "gpu_speed.md").write_text(table(rows) + "\n", encoding="utf-8")
    report = [f"# gpu_speed ({time.strftime('%Y-%m-%d %H:%M')}, {gpu_name()})", "", table(rows), "",
              "Seconds outside the training loop, by phase (time_*_s metrics of each run):"]
    report += [f"- {LABEL.get(r['arch'], r['arch'])} {r['variant']}: {r.get('phases')}" for r in rows] + [""]
    if a.mlflow_run:
        report.append(time_mlflow_run(a.mlflow_run, a.smoke))
    if a.baselines:
        report += baselines(Path(a.baselines), a.archs.split(","))
    report.append(f"total {time.time() - t0:.0f} s")
    text = "\n".join(report)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_speed.md").write_text(text + "\n", encoding="utf-8")


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
