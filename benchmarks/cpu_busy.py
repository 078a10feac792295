"""The default smol run on a busy laptop: `molting train` (the README's main job, smol's defaults) on a quiet
machine, then with one core kept busy by another process (a Python loop) twice, side by side in one run:
with the default threads (chosen from the load) and with MOLTING_THREADS=1. Prints one table and the CPU.

What it holds the default to: on the busy machine within 1.2× of the better of the two, and within 2× of the
quiet machine's time (its wall and its training time).

    python benchmarks/cpu_busy.py              # the default run: ~20–30 min on 2 cores
    python benchmarks/cpu_busy.py --epochs 1   # a shorter check of the same three
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BUSY = "while True: pass"          # one core's worth of someone else's work


def run(store: str, label: str, threads: str | None, busy: bool, epochs: str) -> dict:
    import mlflow

    env = {k: v for k, v in os.environ.items() if k != "MOLTING_THREADS"}
    env.update({"MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(ROOT), "GIT_PYTHON_REFRESH": "quiet"})
    if threads is not None:
        env["MOLTING_THREADS"] = threads
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        time.sleep(2 if busy else 0)          # the load is there before the run looks at it
        t = time.time()
        cmd = [sys.executable, "-m", "molting_mlflow.cli", "train", "--experiment", "cpu-busy"]
        if epochs:
            cmd += ["--epochs", epochs, "--min-steps", "0"]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - t
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    mlflow.set_tracking_uri(store)
    run_ = mlflow.search_runs(experiment_names=["cpu-busy"], output_format="list",
                              order_by=["attributes.start_time DESC"], max_results=1)[0]
    m, p = run_.data.metrics, run_.data.params
    steps = m.get("optimizer_steps", float("nan"))
    return {"label": label, "rc": r.returncode, "wall": wall, "train": m.get("train_runtime_s", float("nan")),
            "per_step": m.get("train_runtime_s", float("nan")) / steps if steps else float("nan"), "steps": steps,
            "threads": p.get("train.cpu_threads"), "why": p.get("train.cpu_threads_why", ""),
            "score": m.get("score", float("nan"))}


def main() -> None:
    from cpu_speed import cpu_line

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", default="", help="train this many epochs instead of smol's default (a shorter check)")
    a = ap.parse_args()
    store = f"sqlite:///{Path(tempfile.mkdtemp(prefix='molting-cpu-busy-')) / 'mlflow.db'}"
    rows = [run(store, "quiet, default threads", None, False, a.epochs),
            run(store, "one core busy, default threads", None, True, a.epochs),
            run(store, "one core busy, MOLTING_THREADS=1", "1", True, a.epochs)]
    print(f"\nsmol, `molting train`{' --epochs ' + a.epochs if a.epochs else ''}; {cpu_line()}\n")
    print("| machine, threads | rc | wall s | training s | s a step | steps | torch threads | score |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['rc']} | {r['wall']:.0f} | {r['train']:.0f} | {r['per_step']:.2f} | {r['steps']:.0f} | "
              f"{r['threads']} | {r['score']:.2f} |")
    quiet, default, one = rows
    best = min(default["wall"], one["wall"])
    print(f"\nbusy default / better of the two busy runs: {default['wall'] / best:.2f}× (≤ 1.2× wanted); "
          f"busy default / quiet: {default['wall'] / quiet['wall']:.2f}× wall, {default['train'] / quiet['train']:.2f}× "
          "training (≤ 2× wanted)")
    print(f"the busy default's threads: {default['why']}")


if __name__ == "__main__":
    main()
