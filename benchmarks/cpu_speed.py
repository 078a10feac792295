"""The default smol run on this CPU, today's code against an earlier commit's, side by side in one
run: `mlflow run . -e train --env-manager local` in each checkout (the earlier one a temporary git
worktree), one after the other, into one store, with the same threads. Prints one table (wall,
training time, tokens/s, evaluation time, precision, score) and the CPU's model and bf16 flags.

    MOLTING_THREADS=2 python benchmarks/cpu_speed.py                  # against 2e92989 (fp32, the path before the runtime plan)
    python benchmarks/cpu_speed.py --baseline <commit> --repeat 2
    python benchmarks/cpu_speed.py --baseline f94a87a --baseline-venv /tmp/vb   # a commit of the old, flat layout
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


def cpu_line() -> str:
    from molting_mlflow.ground.runtime import cpu_flags, cpu_model

    flags = cpu_flags()
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{cpu_model()}; {os.cpu_count()} cores; flags: {', '.join(have) or 'none of avx2/avx512/bf16/amx'}"


def run(tree: Path, store: str, label: str, venv: Path | None = None) -> dict:
    import mlflow

    from molting_mlflow.ground.rubric import UNTAGGED_RUBRIC_VERSION

    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(tree), "GIT_PYTHON_REFRESH": "quiet"}
    python = sys.executable
    if venv is not None:           # the earlier commit installed in its own venv: its entry points, its plugins
        python, env["PATH"] = str(venv / "bin" / "python"), f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
    t = time.time()
    r = subprocess.run([python, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local",
                        "--experiment-name", "cpu-speed"], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.time() - t
    mlflow.set_tracking_uri(store)
    run_ = mlflow.search_runs(experiment_names=["cpu-speed"], output_format="list",
                              order_by=["attributes.start_time DESC"], max_results=1)[0]
    m, p = run_.data.metrics, run_.data.params
    return {"label": label, "rc": r.returncode, "wall_s": wall, "train_s": m.get("train_runtime_s", float("nan")),
            "tok_s": m.get("train_tokens_per_s", float("nan")), "gen_s": m.get("gen_seconds", float("nan")),
            "precision": p.get("train.precision"), "dropout": p.get("train.lora_dropout"),
            "steps": m.get("optimizer_steps"), "score": m.get("score", float("nan")),
            "rubric": run_.data.tags.get("molting.rubric_version", UNTAGGED_RUBRIC_VERSION)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="2e92989", help="the earlier commit to compare against")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each, alternating")
    ap.add_argument("--baseline-venv", type=Path, default=None,
                    help="a venv with the earlier commit installed (pip install <its checkout>): needed when the "
                    "package's layout changed since, as this checkout's editable install would lend the earlier "
                    "code its modules (its own MLflow plugins among them)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="molting-cpu-speed-"))
    old = tmp / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), a.baseline], check=True,
                   capture_output=True)
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    # the store exists before either run, so both open the same kind of store: on a fresh one under `mlflow
    # run`, f94a87a's entry point waited on a lock of the store's folder that it held itself (/proc/locks:
    # one process, the same flock held and awaited), fixed since by the re-entrant store lock
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({store!r}).search_experiments()"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = []
    try:
        for i in range(a.repeat):
            rows.append(run(old, store, f"{a.baseline} (before)", a.baseline_venv))
            rows.append(run(ROOT, store, "this checkout"))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    print(f"\nsmol, default `mlflow run . -e train --env-manager local`, MOLTING_THREADS="
          f"{os.environ.get('MOLTING_THREADS', 'all')}; {cpu_line()}\n")
    print("| code | rc | wall s | training s | train tokens/s | evaluation s | precision | LoRA dropout | steps | score (rubric) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['rc']} | {r['wall_s']:.0f} | {r['train_s']:.0f} | {r['tok_s']:.0f} | {r['gen_s']:.1f} | "
              f"{r['precision']} | {r['dropout']} | {r['steps']:.0f} | {r['score']:.2f} (v{r['rubric']}) |")
    before = [r["wall_s"] for r in rows if "before" in r["label"]]
    now = [r["wall_s"] for r in rows if "before" not in r["label"]]
    print(f"\nwall, before / now: {sum(before) / sum(now):.2f}×  (scores of the two rubric versions are not comparable)")


if __name__ == "__main__":
    main()
