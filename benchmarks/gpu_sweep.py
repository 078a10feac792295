"""Several trials on one GPU against one trial a GPU, in one device call, printed as one table.

Random-init Phi-3-mini behind the phi3 preset (MOLTING_PHI3_PATH; no score claim: random weights
learn nothing), the same trials (seeded sampler, no pruning, no reuse, no reference trials) run with
`molting sweep --trials-per-gpu 1` and then with the automatic number of trials a GPU
(`--trials-per-gpu 0`, the runtime plan's), into one MLflow store, each with its own study; then,
optionally, a longer sweep with the automatic number. Read back from the stores: wall time, trials
per hour, the share of each trial's wall spent outside training and evaluation, every trial number
once, and no run left RUNNING. Each row is written to $OUT as it comes.

    python3 benchmarks/gpu_sweep.py --n-trials 16 --then 20          # one GPU: 1 a GPU, auto, then 20 at auto
    python3 benchmarks/gpu_sweep.py --gpus-first 1 --n-trials 16     # several GPUs: 1 GPU at auto, then all at auto
    python3 benchmarks/gpu_sweep.py --smoke --arch smol --n-trials 2     # toy shapes, checks the script on a CPU
"""
from __future__ import annotations

import argparse
import os
import signal
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


def run_sweep(arch: str, per_gpu: int, n_trials: int, search: str, min_steps: int, tag: str,
              gpus: str | None = None, timeout_s: int = 0) -> dict:
    """One `molting sweep` in a child process: per_gpu trials a GPU (0: automatic) on `gpus` (None: all)."""
    import mlflow
    from optuna import load_study

    label = f"{per_gpu or 'auto'} a GPU" + (f", GPUs {gpus}" if gpus is not None else "")
    study = f"bench-{tag}-k{per_gpu}-n{n_trials}-{int(time.time())}"
    storage = f"sqlite:///{WORK}/optuna-{study}.db"
    cmd = [sys.executable, "-m", "molting_mlflow.cli", "sweep", "--model", arch, "--n-trials", str(n_trials),
           "--trials-per-gpu", str(per_gpu), "--search", search, "--min-steps", str(min_steps), "--prune", "false",
           "--reuse", "false", "--register", "false", "--enqueue-user", "false", "--study-name", study,
           "--storage", storage, "--experiment", "gpu-sweep", "--seed", "11"]
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else {})}
    log_path = Path(os.environ.get("OUT") or WORK, f"sweep-k{per_gpu}-n{n_trials}.log")
    t, timed_out = time.time(), False
    with open(log_path, "w", encoding="utf-8") as log:     # streamed: a timeout still leaves what it said
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s or None)
        except subprocess.TimeoutExpired:                # the sweep and its workers: one process group
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
    wall = time.time() - t
    if rc and not timed_out:
        return {"setting": label, "error": log_path.read_text(encoding="utf-8").strip().splitlines()[-1][:300]}
    if timed_out:
        label += f" (killed at {timeout_s} s)"
    trials = load_study(study_name=study, storage=storage).trials
    runs = mlflow.search_runs(experiment_names=["gpu-sweep"], output_format="list",
                              filter_string=f"tags.`molting.study` = '{study}'")
    parent = next((x for x in runs if x.data.tags.get("molting.stage") == "sweep"), None)
    if parent is None:
        return {"setting": label, "error": f"no sweep run in the store after {wall:.0f} s"}
    kids = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    numbers = [int(x.data.tags["molting.trial"]) for x in kids]
    shares = [x.data.metrics["trial_overhead_share"] for x in kids if "trial_overhead_share" in x.data.metrics]
    phases = {k: round(sum(x.data.metrics.get(k, 0) for x in kids) / max(1, len(kids)), 2) for k in (
        "trial_wall_s", "time_prepare_s", "time_trainer_setup_s", "train_runtime_s", "eval_seconds",
        "time_adapter_log_s", "model_load_s", "time_run_open_s", "time_eval_log_s", "time_in_train_s")}
    errors = sorted({x.data.tags.get("molting.error", "")[:160] for x in kids if x.info.status == "FAILED"})
    m = {"sweep_wall_s": wall, **parent.data.metrics}
    p = parent.data.params
    # a worker's costs, paid once before its first trial (Worker.preload: parent-run metrics, one a worker)
    worker = {k: sorted(v for name, v in parent.data.metrics.items() if name.startswith(k + "."))
              for k in ("worker_load_s", "worker_compile_s")}
    evals = [x.data.metrics["eval_seconds"] for x in kids if "eval_seconds" in x.data.metrics]
    return {"setting": label, "n_trials": n_trials, "workers": int(p["sweep.workers"]),
            "per_gpu": int(p["sweep.trials_per_gpu"]), "why": p.get("sweep.trials_per_gpu_why", ""),
            "wall_s": round(wall, 1), "sweep_wall_s": round(m["sweep_wall_s"], 1),
            "trials": len(trials), "complete": sum(t.state.name == "COMPLETE" for t in trials),
            "trials_per_hour": round(m.get("trials_per_hour", 0)), "overhead_mean": round(m.get("overhead_share_mean", -1), 3),
            "overhead_max": round(max(shares), 3) if shares else None,
            "numbers_once": sorted(numbers) == sorted(set(numbers)) == list(range(len(trials))),
            "running_left": sum(x.info.status == "RUNNING" for x in runs),
            "workers_seen": sorted({x.data.tags.get("molting.worker", "") for x in kids}),
            "gpus_seen": sorted({x.data.tags.get("molting.gpu", "") for x in kids}), "phases_mean_s": phases,
            "eval_s_mean": round(sum(evals) / len(evals), 2) if evals else None,
            "eval_s_max": round(max(evals), 2) if evals else None,
            **{f"{k}_{stat}": round(f(v), 1) if v else None
               for k, v in worker.items() for stat, f in (("mean", _mean), ("max", max))},
            "n_workers_compiled": len(worker["worker_compile_s"]), "errors": errors}


def _mean(v: list) -> float:
    return sum(v) / len(v)


def fmt(rows: list[dict], a) -> str:
    head = "| setting | trials | workers | wall s | sweep_wall_s | complete | trials/hour | overhead share mean / max | " \
           "eval s a trial, mean / max | worker load s mean / max | worker compile s mean / max (workers) | " \
           "every number once | RUNNING left | GPUs |"
    lines = [f"# gpu_sweep {a.arch} ({time.strftime('%Y-%m-%d %H:%M')}, {gpu_name()}), search {a.search!r}", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | error: {r['error']} |")
            continue
        lines.append(f"| {r['setting']} | {r['trials']} | {r['workers']} | {r['wall_s']} | {r['sweep_wall_s']} | "
                     f"{r['complete']} | {r['trials_per_hour']} | {r['overhead_mean']} / {r['overhead_max']} | "
                     f"{r['eval_s_mean']} / {r['eval_s_max']} | {r['worker_load_s_mean']} / {r['worker_load_s_max']} | "
                     f"{r['worker_compile_s_mean']} / {r['worker_compile_s_max']} ({r['n_workers_compiled']}) | "
                     f"{r['numbers_once']} | {r['running_left']} | {','.join(r['gpus_seen'])} |")
    lines += ["", "Mean seconds a trial, by phase:"] + [f"- {r['setting']}: {r.get('phases_mean_s')}" for r in rows]
    lines += ["", "Trials a GPU, as the sweep decided:"] + [f"- {r['setting']}: {r.get('why')}" for r in rows]
    lines += [f"errors ({r['setting']}): {r.get('errors')}" for r in rows if r.get("errors")]
    ok = [r for r in rows if "error" not in r and r["n_trials"] == a.n_trials]
    if len(ok) >= 2:
        lines.append(f"\n{ok[1]['setting']} / {ok[0]['setting']} wall ({a.n_trials} trials): "
                     f"{ok[1]['wall_s'] / ok[0]['wall_s']:.2f}× (target ≤ 0.35× with the automatic K against 1 a GPU"
                     + ("; a killed sweep's wall is its limit, not its time" if any("killed" in r["setting"] for r in ok)
                        else "") + ")")
    lines += ["", "Against the issue's targets:"] + [_targets(r) for r in rows if "error" not in r]
    return "\n".join(lines)


def _targets(r: dict) -> str:
    """A trial's evaluation inside a sweep ≤ 1.5 s at 1 a GPU, ≤ 3 s at the automatic K; a 20-trial sweep ≤ 6 min."""
    one = r["per_gpu"] == 1 and "1 a GPU" in r["setting"]
    limit = 1.5 if one else 3.0
    e = r["eval_s_mean"]
    out = f"- {r['setting']} ({r['n_trials']} trials, K={r['per_gpu']}): eval {e} s a trial against ≤ {limit} s: " + \
          ("–" if e is None else "met" if e <= limit else "not met")
    if r["n_trials"] >= 20:
        met = r["wall_s"] <= 360 and r["complete"] >= r["n_trials"] and "killed" not in r["setting"]
        out += f"; wall {r['wall_s']} s against ≤ 360 s: {'met' if met else 'not met'}"
    return out


def gpu_name() -> str:
    try:
        import torch

        return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    except (ImportError, RuntimeError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="phi3")
    ap.add_argument("--n-trials", type=int, default=16)
    ap.add_argument("--search", default="epochs=3,3;grad_accum=4;lr=1e-4,1e-3",
                    help="the trials' space: the preset's 4 examples a step (20 steps an epoch), 3 epochs")
    ap.add_argument("--min-steps", type=int, default=0)
    ap.add_argument("--gpus-first", default=None,
                    help="compare GPUs instead of trials a GPU: the first row on these (e.g. 0), automatic K")
    ap.add_argument("--then", type=int, default=0, help="then a sweep of this many trials at the automatic K")
    ap.add_argument("--then-search", default="", help="its search (default: --search)")
    ap.add_argument("--only-auto", action="store_true", help="the automatic number's row alone")
    ap.add_argument("--timeout", default="0",
                    help="kill a sweep after this many seconds, then read it back; one number for every row, or "
                         "one a row (e.g. 330,200,0), the last repeated; 0: no limit")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    from gpu_train import build_folder

    folder, _ = build_folder(a.arch, a.smoke)
    os.environ[f"MOLTING_{a.arch.upper()}_PATH"] = str(folder)
    if a.gpus_first is not None:
        plan = [(0, a.n_trials, a.search, a.gpus_first), (0, a.n_trials, a.search, None)]
    else:
        plan = [(1, a.n_trials, a.search, None)] * (not a.only_auto) + [(0, a.n_trials, a.search, None)]
    if a.then:
        plan.append((0, a.then, a.then_search or a.search, None))
    limits = [int(x) for x in str(a.timeout).split(",")]
    rows = []
    for i, (per_gpu, n, search, gpus) in enumerate(plan):
        rows.append(run_sweep(a.arch, per_gpu, n, search, a.min_steps, a.arch, gpus, limits[min(i, len(limits) - 1)]))
        print(rows[-1], flush=True)
        text = fmt(rows, a)
        if os.environ.get("OUT"):                 # as it goes: a timeout still returns the rows done
            Path(os.environ["OUT"], "gpu_sweep.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
