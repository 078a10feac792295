"""A fresh SQLite store opened by several processes at once is created and migrated once (reaper.store_lock).

MLflow creates and migrates a new SQLite store in its store builder (SqlAlchemyStore.__init__), which our
`mlflow.tracking_store` entry point (runner_check.sql_store) wraps; under `mlflow run` the runner builds it before
any code of ours, so two runs started together on a fresh store migrated it twice and one ended with
`duplicate column name: step` (or alembic's "expected to match one row"). touch_store's lock covered only the
`molting` side. Measured: without the lock in sql_store the first test fails (every round) and the last; with
a lock that is not re-entrant (one flock a take), touch_store on a fresh store waits on itself for good and the
second, third and fourth tests fail (each bounded by a timeout, never a hang).
"""
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from molting_mlflow.store import reaper

# A process that opens the store the way any MLflow client does (MlflowClient → the `mlflow.tracking_store`
# registry → runner_check.sql_store) once the file `go` appears; `ready` says its imports (seconds) are done.
OPEN_AT_GO = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mlflow.tracking import MlflowClient
    uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    MlflowClient(uri).search_experiments()
""")


def head_revision(db: Path) -> list:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    finally:
        conn.close()


def test_processes_opening_a_fresh_store_at_once_migrate_it_once(tmp_path):
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    failures = []
    for round_ in range(2):
        folder = tmp_path / f"round{round_}"
        db, go = folder / "mlflow.db", tmp_path / f"go{round_}"
        ready = [tmp_path / f"ready{round_}.{k}" for k in range(3)]
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_GO, f"sqlite:///{db}", str(r), str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in ready]
        deadline = time.time() + 120
        while not all(r.exists() for r in ready) and time.time() < deadline:
            time.sleep(0.05)
        go.touch()                       # all three past their imports, polling for `go`: they open at once
        outs = [p.communicate(timeout=120)[0] for p in procs]
        failures += [f"round {round_}: exit {p.returncode}: {[l for l in out.splitlines() if 'Error' in l][-1:]}"
                     for p, out in zip(procs, outs) if p.returncode]
        if db.exists():
            assert len(head_revision(db)) == 1, f"round {round_}: {head_revision(db)}"
    assert not failures, "\n".join(failures)
    head = ScriptDirectory.from_config(_get_alembic_config(f"sqlite:///{db}")).get_current_head()
    assert head_revision(db) == [head]     # migrated to MLflow's head, once


def test_touch_store_on_a_fresh_store_does_not_wait_on_its_own_lock(tmp_path):
    # touch_store holds the lock while its client makes MLflow build the store, and sql_store takes it again
    db = tmp_path / "new" / "mlflow.db"
    code = "from molting_mlflow.store.reaper import touch_store; touch_store()"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"},
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and db.exists(), r.stderr[-2000:]


def another_process_can_lock(folder: Path) -> bool:
    """Whether another process could take the folder's flock now (without waiting)."""
    code = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], timeout=30)
    assert r.returncode in (0, 3)
    return r.returncode == 0


def within(seconds: float, fn) -> None:
    """fn() in a thread of this process; a lock that waits on itself fails the test instead of hanging it."""
    raised = []

    def call():
        try:
            fn()
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout=seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s: the lock waits on itself"
    if raised:
        raise raised[0]


def test_the_lock_nests_and_holds_until_the_outermost_leaves(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.chdir(tmp_path)

    def nested():
        with reaper.store_lock(db):
            assert not another_process_can_lock(tmp_path)
            with reaper.store_lock(Path("mlflow.db")):      # the same folder spelled relative: the same lock
                pass
            assert not another_process_can_lock(tmp_path)   # the inner exit left the outer's flock

    within(60, nested)
    assert another_process_can_lock(tmp_path) and not reaper._held


def test_threads_share_the_lock_so_mlflow_s_builder_lock_cannot_deadlock_with_it(tmp_path):
    # touch_store takes the folder's lock, then MLflow's _building_store_lock; a thread building a store takes
    # MLflow's lock, then (sql_store) the folder's. Held off by the first thread, it would hold MLflow's lock
    # that the first thread needs next.
    db = tmp_path / "mlflow.db"
    built = []
    other = threading.Thread(target=lambda: built.append(MlflowClient(f"sqlite:///{tmp_path / 'b.db'}")
                                                         .search_experiments()), daemon=True)
    with reaper.store_lock(db):
        other.start()
        other.join(timeout=60)
        assert not other.is_alive(), "a thread building a store in the locked folder waits on this thread"
        MlflowClient(f"sqlite:///{db}").search_experiments()
    assert built and [e.name for e in built[0]] == ["Default"]


def test_threads_wait_together_for_another_process_s_lock(tmp_path):
    db = tmp_path / "mlflow.db"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('held', flush=True)\nsys.stdin.read()\n", str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    inside = []

    def take():
        with reaper.store_lock(db):
            inside.append(time.time())

    threads = [threading.Thread(target=take, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1)
    assert inside == []                      # another process holds the store's first use
    released = time.time()
    holder.stdin.close()
    holder.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert len(inside) == 3 and min(inside) >= released and not reaper._held
    assert another_process_can_lock(tmp_path)        # the flock went with the last holder


@pytest.mark.parametrize("spelling", ["sqlite:///{tmp}/x/../mlflow.db", "sqlite:///{tmp}/mlflow.db"])
def test_sql_store_builds_under_the_lock(tmp_path, spelling, monkeypatch):
    # fails where sql_store builds outside reaper.store_lock (the runner's store creation unordered)
    from molting_mlflow.store import runner_check

    seen = []
    monkeypatch.setattr(runner_check, "_mlflow_sql_builder",
                        lambda: lambda *a, **kw: seen.append(not another_process_can_lock(tmp_path)))
    (tmp_path / "x").mkdir()
    runner_check.sql_store(spelling.format(tmp=tmp_path))
    assert seen == [True] and another_process_can_lock(tmp_path)
