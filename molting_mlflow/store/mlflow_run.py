"""Under `mlflow run`: a run that Ctrl-C ended KILLED stays KILLED.

MLflow's project runner (mlflow/projects/__init__.py `_maybe_set_run_terminated`, MLflow 3.17) means
to leave alone a run that the entry point ended itself, but it compares the stored status, a string
('KILLED'), with RunStatus's integer codes, never finds it ended, and sets it FAILED whenever the
entry point exits non-zero (FINISHED on exit 0). So a run our process ended KILLED on Ctrl-C is set
FAILED a moment after we exit. `keep_killed` starts a small detached process that waits until the
`mlflow run` process has exited and then ends the run KILLED again; `molting.error` says
'interrupted' throughout. It is started before the run is ended here: the runner's own SIGTERM
(after Ctrl-C it cancels the entry point) may cut that ending short.

    python -m molting_mlflow.store.mlflow_run <run_id> <tracking uri> <pid> ...   (the watcher itself)
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from molting_mlflow.ground.paths import PACKAGE_DIR
from molting_mlflow.ground.tags import ERROR_TAG

WAIT_S = 120    # the runner sets FAILED within a second of our exit; a hung runner is left after this


def runner_pids() -> list[int]:
    """Our ancestors that are `mlflow run` processes (the runner that will overwrite the status), nearest first."""
    import psutil

    found = []
    for proc in psutil.Process().parents():
        try:
            cmd = proc.cmdline()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        # `mlflow run …`, `python …/bin/mlflow run …` or `python -m mlflow run …`
        head = [Path(c).name for c in cmd[:4]]
        if "mlflow" in head and "run" in head[head.index("mlflow") + 1:]:
            found.append(proc.pid)
    return found


def keep_killed(run_id: str, tracking_uri: str) -> bool:
    """Start the watcher for `run_id` if an `mlflow run` process is our ancestor; whether one was started."""
    pids = runner_pids()
    if not pids:
        return False
    root = str(PACKAGE_DIR.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.pop("MLFLOW_RUN_ID", None)
    subprocess.Popen([sys.executable, "-m", "molting_mlflow.store.mlflow_run", run_id, tracking_uri, *map(str, pids)],
                     env=env, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    return True


def _watch(run_id: str, tracking_uri: str, pids: list[int]) -> None:
    from mlflow.tracking import MlflowClient

    deadline = time.time() + WAIT_S
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    if ERROR_TAG not in run.data.tags:   # a second signal cut the entry point's own ending short
        client.set_tag(run_id, ERROR_TAG, "interrupted")
    if run.info.status != "KILLED":
        client.set_terminated(run_id, "KILLED")


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to read its exit code (it sets nothing any more)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    _watch(sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]])
