"""A sweep on several GPUs against the same sweep on one, in one device call, printed as one table.

Random-init Phi-3-mini behind the phi3 preset (MOLTING_PHI3_PATH; no score claim: random weights
learn nothing), the same 16 trials (seeded sampler, no pruning, no reuse, no reference trials) run
with `molting sweep --workers 1` and then `--workers N` into one MLflow store, each with its own
study. Read back from the stores: wall time, trials per hour, the share of each trial's wall spent
outside training and evaluation, every trial number once, and no run left RUNNING.

    python3 benchmarks/gpu_sweep.py --workers 2 --n-trials 16
    python3 benchmarks/gpu_sweep.py --smoke --arch smol --n-trials 2     # toy shapes, checks the script on a CPU
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
WORK = Path(os.environ.get("GPU_BENCH_DIR", "/tmp/gpu"))
os.environ.setdefault("GPU_BENCH_DIR", str(WORK))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{WORK}/sweep-mlflow.db")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def run_sweep(arch: str, workers: int, n_trials: int, search: str, min_steps: int, tag: str) -> dict:
    import mlflow
    from optuna import load_study

    study = f"bench-{tag}-w{workers}-{int(time.time())}"
    storage = f"sqlite:///{WORK}/optuna-{study}.db"
    cmd = [sys.executable, "-m", "molting_mlflow.cli", "sweep", "--model", arch, "--n-trials", str(n_trials),
           "--workers", str(workers), "--search", search, "--min-steps", str(min_steps), "--prune", "false",
           "--reuse", "false", "--register", "false", "--enqueue-user", "false", "--study-name", study,
           "--storage", storage, "--experiment", "gpu-sweep", "--seed", "11"]
    t = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t
    if r.returncode:
        return {"workers": workers, "error": (r.stderr or r.stdout).strip().splitlines()[-1][:300]}
    trials = load_study(study_name=study, storage=storage).trials
    runs = mlflow.search_runs(experiment_names=["gpu-sweep"], output_format="list",
                              filter_string=f"tags.`molting.study` = '{study}'")
    parent = next(x for x in runs if x.data.tags.get("molting.stage") == "sweep")
    kids = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    numbers = [int(x.data.tags["molting.trial"]) for x in kids]
    shares = [x.data.metrics["trial_overhead_share"] for x in kids if "trial_overhead_share" in x.data.metrics]
    phases = {k: round(sum(x.data.metrics.get(k, 0) for x in kids) / max(1, len(kids)), 2) for k in (
        "trial_wall_s", "time_prepare_s", "time_trainer_setup_s", "train_runtime_s", "eval_seconds",
        "time_adapter_log_s", "model_load_s")}
    errors = sorted({x.data.tags.get("molting.error", "")[:160] for x in kids if x.info.status == "FAILED"})
    m = parent.data.metrics
    return {"workers": workers, "wall_s": round(wall, 1), "sweep_wall_s": round(m["sweep_wall_s"], 1),
            "trials": len(trials), "complete": sum(t.state.name == "COMPLETE" for t in trials),
            "trials_per_hour": round(m.get("trials_per_hour", 0)), "overhead_mean": round(m.get("overhead_share_mean", -1), 3),
            "overhead_max": round(max(shares), 3) if shares else None,
            "numbers_once": sorted(numbers) == sorted(set(numbers)) == list(range(len(trials))),
            "running_left": sum(x.info.status == "RUNNING" for x in runs),
            "workers_seen": sorted({x.data.tags.get("molting.worker", "") for x in kids}),
            "gpus_seen": sorted({x.data.tags.get("molting.gpu", "") for x in kids}), "phases_mean_s": phases,
            "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="phi3")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-trials", type=int, default=16)
    ap.add_argument("--search", default="epochs=3,5;grad_accum=16;lr=1e-4,1e-3",
                    help="the trials' space; 16 examples a step: 5 steps an epoch on the 79 examples")
    ap.add_argument("--min-steps", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    from gpu_train import build_folder

    folder, _ = build_folder(a.arch, a.smoke)
    os.environ[f"MOLTING_{a.arch.upper()}_PATH"] = str(folder)
    rows = [run_sweep(a.arch, 1, a.n_trials, a.search, a.min_steps, a.arch)]
    print(rows[-1], flush=True)
    rows.append(run_sweep(a.arch, a.workers, a.n_trials, a.search, a.min_steps, a.arch))
    print(rows[-1], flush=True)
    head = "| workers | wall s | sweep_wall_s | trials | complete | trials/hour | overhead share mean / max | " \
           "every number once | RUNNING left | workers | GPUs |"
    lines = [f"# gpu_sweep {a.arch} ({time.strftime('%Y-%m-%d %H:%M')}), search {a.search!r}", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workers']} | error: {r['error']} |")
            continue
        lines.append(f"| {r['workers']} | {r['wall_s']} | {r['sweep_wall_s']} | {r['trials']} | {r['complete']} | "
                     f"{r['trials_per_hour']} | {r['overhead_mean']} / {r['overhead_max']} | {r['numbers_once']} | "
                     f"{r['running_left']} | {','.join(r['workers_seen'])} | {','.join(r['gpus_seen'])} |")
    lines += ["", "Mean seconds a trial, by phase: " + "; ".join(f"{r['workers']} worker(s): {r.get('phases_mean_s')}"
                                                              for r in rows)]
    lines += [f"errors ({r['workers']} worker(s)): {r.get('errors')}" for r in rows if r.get("errors")]
    if all("error" not in r for r in rows):
        lines.append(f"\n{a.workers} workers / 1 worker wall: {rows[1]['wall_s'] / rows[0]['wall_s']:.2f}×")
    text = "\n".join(lines)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_sweep.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
