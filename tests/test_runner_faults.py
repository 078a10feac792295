"""Store faults under `mlflow run` (molting_mlflow/store/runner_check.py): MLflow's runner talks to the store before
our entry point starts, so a server that is down, a read-only or a locked SQLite store were MLflow's
traceback; now they are one `molting:` line, exit 2, within seconds, no run created. The check acts only in
an `mlflow run` of this project. Each `mlflow run` here stops before the entry point starts: seconds (the
locked store adds reaper.LOCK_WAIT_S, the wait for its lock).

Without the feature (the two entry points out of pyproject.toml, or `guard` returning at once) the three
`mlflow run` tests fail: a traceback at the runner's create_run, or minutes of retries past the bound.
"""
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import made_read_only, use_store
from mlflow.tracking import MlflowClient

from molting_mlflow.store import runner_check

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["run", ".", "-e", "train", "--env-manager", "local", "-P", "model=tiny-random"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_run(*args, env=None, timeout=60, console_script=False):
    """`mlflow run` of this project as a user types it; its output (stdout and stderr), exit code, seconds."""
    exe = [str(Path(sys.executable).parent / "mlflow")] if console_script else [sys.executable, "-m", "mlflow"]
    env = {**os.environ, **(env or {})}
    env.pop("MOLTING_DEBUG", None)
    t0 = time.time()
    try:
        r = subprocess.run([*exe, *TRAIN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mlflow run did not end within {timeout} s: {(e.stderr or b'')[-2000:]!r}")
    return r.stdout + r.stderr, r.returncode, time.time() - t0


def the_line(output: str) -> str:
    """The user's whole answer: one `molting:` line, no traceback, nothing from the entry point."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("molting: "), output[-3000:]
    return lines[0]


def no_runs(uri: str) -> str:
    client = MlflowClient(uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not found, [(r.info.run_id, r.info.status) for r in found]   # none created, so none RUNNING
    return "no run created (none RUNNING)"


@pytest.fixture
def store(tmp_path):
    """The test's SQLite store with the experiment `molting`, made up front (the README's --experiment-name)."""
    MlflowClient().create_experiment("molting")
    return tmp_path / "mlflow.db"


# ---------------------------------------------------------------------------------------------
# The three faults, under the real `mlflow run`
# ---------------------------------------------------------------------------------------------

@pytest.mark.faults
def test_server_down_under_mlflow_run_is_one_line_in_seconds(fault):
    uri = f"http://127.0.0.1:{free_port()}"
    out, code, took = mlflow_run(env={"MLFLOW_TRACKING_URI": uri}, console_script=True)
    line = the_line(out)
    assert code == 2 and took < 30, (code, took)   # MLflow alone: ~4 minutes of retries, then its traceback
    assert line == (f"molting: tracking server {uri} is not reachable (Connection refused); start it, or point "
                    "MLFLOW_TRACKING_URI at a running one")
    fault("tracking server down, under `mlflow run`", f"exit {code} after {took:.0f} s: {line!r}")


@pytest.fixture
def read_only(store):
    """The store made read-only for this process (helpers.made_read_only)."""
    with made_read_only(store):
        yield store


@pytest.mark.faults
def test_read_only_store_under_mlflow_run_is_one_line(read_only, fault):
    out, code, took = mlflow_run("--experiment-name", "molting")
    line = the_line(out)   # MLflow alone: "attempt to write a readonly database" from the runner's create_run
    assert code == 2 and took < 30, (code, took)
    assert line == (f"molting: the tracking store {read_only} is read-only for this process; make it writable "
                    "(chmod u+w, chattr -i; its folder too) or point MLFLOW_TRACKING_URI at a store you can write")
    fault("SQLite store read-only, under `mlflow run`", f"exit {code} after {took:.0f} s: {line!r}; "
          f"{no_runs(f'sqlite:///{read_only}')}")


@pytest.mark.faults
def test_locked_store_under_mlflow_run_is_one_line(store, fault):
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")   # another process's write lock, held throughout
    try:
        out, code, took = mlflow_run("--experiment-name", "molting")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    line = the_line(out)
    # the probe waits reaper.LOCK_WAIT_S (10 s) for the lock; the rest is `mlflow run` starting
    assert code == 2 and took < 40, (code, took)
    assert line == (f"molting: the tracking store {store} is locked by another process (waited 10 s); let it "
                    "finish, or close what holds it open (a sqlite3 shell, a stuck process), and run again")
    fault("SQLite store locked, under `mlflow run`", f"exit {code} after {took:.0f} s: {line!r}; "
          f"{no_runs(f'sqlite:///{store}')}")


# ---------------------------------------------------------------------------------------------
# Stores MLflow cannot open, and the runner's other failures: one line through runner_check's excepthook
# (without it: MLflow's traceback of 60-80 lines; without the SQL entry points, the refused port ~100 s of retries)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def listening():
    """A port that takes TCP connections and speaks no database: the driver is what fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


UNOPENABLE = [
    ("foo://x", "the tracking store foo://x cannot be opened (UnsupportedModelRegistryStoreURIException: MLflow "
                "opens no store of the scheme 'foo'); point MLFLOW_TRACKING_URI at sqlite:///mlflow.db"),
    ("./mlruns", "the tracking store ./mlruns cannot be opened (MlflowException: The filesystem tracking backend"),
    ("mysql://127.0.0.1:{listening}/x", "the tracking store mysql://127.0.0.1:{listening}/x cannot be opened "
                                        "(ModuleNotFoundError: No module named 'MySQLdb')"),
]


@pytest.mark.faults
@pytest.mark.parametrize("uri,expected", UNOPENABLE, ids=["unknown-scheme", "file-store", "driver-missing"])
def test_a_store_mlflow_cannot_open_under_mlflow_run_is_one_line(tmp_path, listening, uri, expected):
    uri, expected = uri.format(listening=listening), expected.format(listening=listening)
    out, code, took = mlflow_run(env={"MLFLOW_TRACKING_URI": uri})
    line = the_line(out)
    assert line.startswith(f"molting: {expected}") and code == 1 and took < 30, (line, code, took)


@pytest.mark.faults
def test_a_database_that_refuses_under_mlflow_run_is_one_line_in_seconds(tmp_path):
    uri = f"postgresql+psycopg2://127.0.0.1:{free_port()}/x"
    out, code, took = mlflow_run(env={"MLFLOW_TRACKING_URI": uri})
    line = the_line(out)
    assert code == 2 and took < 30, (code, took)      # MLflow alone: ~100 s of the engine's retries, a traceback
    assert line == f"molting: the tracking store {uri} is not reachable (Connection refused); start the database, or " \
                   "point at one that runs"


def test_another_failure_of_the_runner_is_one_line(store):
    out, code, _ = mlflow_run("--experiment-id", "12345")
    assert the_line(out) == ("molting: mlflow run failed before the entry point started (MlflowException: No "
                             "Experiment with id=12345 exists); check the `mlflow run` options (MOLTING_DEBUG=1 shows "
                             "the traceback)") and code == 1


def test_the_hook_leaves_any_process_but_an_mlflow_run_of_this_project_as_python_makes_it(fresh, monkeypatch, capsys):
    assert sys.excepthook is not runner_check._one_line_hook     # this process (pytest) keeps Python's
    said = []
    monkeypatch.setattr(runner_check, "_python_hook", lambda *exc: said.append(exc[0]))
    monkeypatch.setattr(sys, "argv", ["/venv/bin/mlflow", "run", "/elsewhere"])   # another project
    runner_check._one_line_hook(ValueError, ValueError("x"), None)
    assert said == [ValueError] and capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# Only an `mlflow run` of this project; a failure of the check's own never blocks
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def fresh(monkeypatch):
    """runner_check as a new process sees it: nothing decided, nothing checked."""
    monkeypatch.setattr(runner_check, "_state", {})
    monkeypatch.delenv("MOLTING_DEBUG", raising=False)


def test_only_mlflow_run_of_this_project_is_ours(tmp_path):
    # fails where ours() answers yes to everything (the argv or the MLproject test dropped)
    other = tmp_path / "other"
    other.mkdir()
    (other / "MLproject").write_text("name: other\nentry_points:\n  main:\n    command: python -c pass\n")
    mlflow = str(Path(sys.executable).parent / "mlflow")
    by_module = str(Path(runner_check.__file__).parent.parent / "x" / "mlflow" / "__main__.py")
    uri = runner_check._run_project_uri
    assert uri([mlflow, "run", str(ROOT), "-e", "train", "-P", "model=tiny-random"]) == str(ROOT)
    assert uri([by_module, "run", "-e", "train", "--experiment-name", "x", "."]) == "."
    assert uri([mlflow, "server", "--port", "5000"]) is None
    assert uri(["entrypoints/train.py", "--model", "tiny-random"]) is None   # the entry point's own process
    assert uri(["-c"]) is None and uri([]) is None
    ours = runner_check._project_dir_is_ours
    assert ours(str(ROOT)) and ours(f"file://{ROOT}") and ours(f"{ROOT.parent}#{ROOT.name}")
    assert not ours(str(other)) and not ours(str(tmp_path)) and not ours(None)
    assert not ours("https://github.com/mlflow/mlflow-example")   # fetched later by the runner: not known


def test_the_check_does_nothing_outside_mlflow_run(fresh, monkeypatch):
    # fails where guard() checks without asking ours() (this pytest process is no `mlflow run`)
    monkeypatch.setattr(sys, "argv", ["python", "-c", "..."])
    runner_check.guard(f"http://127.0.0.1:{free_port()}")   # a closed port: no exit here
    assert runner_check._state == {"ours": False}


def test_plain_mlflow_use_against_a_closed_port_is_mlflow_s_own():
    # fails where the header provider exits in any process (a `molting:` line and exit 2 instead of MLflow's error)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    r = subprocess.run([sys.executable, "-c", "import mlflow; mlflow.get_experiment_by_name('x')"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "molting:" not in r.stderr, r.stderr[-2000:]
    assert "MlflowException: API request to" in r.stderr and "Connection refused" in r.stderr, r.stderr[-2000:]


def test_in_mlflow_run_of_this_project_a_fault_exits_with_one_line(fresh, monkeypatch, capsys):
    # fails where the fault is raised as an Exception (MLflow's registry would log it and go on)
    monkeypatch.setattr(sys, "argv", ["/x/bin/mlflow", "run", str(ROOT), "-e", "train"])
    uri = f"http://127.0.0.1:{free_port()}"
    use_store(monkeypatch, uri)
    with pytest.raises(SystemExit) as e:
        runner_check.HeaderProvider().in_context()
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"molting: tracking server {uri} is not reachable (Connection refused); "
                                       "start it, or point MLFLOW_TRACKING_URI at a running one\n")
    runner_check.HeaderProvider().in_context()   # once per process: the second request is not checked again


def test_molting_debug_raises_past_mlflow_s_except_exception(fresh, monkeypatch):
    # fails where MOLTING_DEBUG is ignored (SystemExit) or the error is a plain Exception (swallowed by MLflow)
    monkeypatch.setattr(sys, "argv", ["/x/bin/mlflow", "run", str(ROOT)])
    monkeypatch.setenv("MOLTING_DEBUG", "1")
    with pytest.raises(runner_check.RunnerCheckDebug) as e:
        runner_check.guard(f"http://127.0.0.1:{free_port()}")
    assert not isinstance(e.value, Exception) and "is not reachable" in str(e.value)
    assert type(e.value.__cause__).__name__ == "StoreUnreachable"


def test_a_failure_of_the_check_s_own_never_blocks(fresh, monkeypatch, tmp_path):
    # fails where the check's own exceptions escape guard() (or ours())
    monkeypatch.setattr(sys, "argv", ["/x/bin/mlflow", "run", str(ROOT)])

    def broken(*a, **kw):
        raise ValueError("not what the check expects")

    monkeypatch.setattr("molting_mlflow.store.reaper.check_server", broken)
    runner_check.guard("http://127.0.0.1:1")
    monkeypatch.setattr(runner_check, "_state", {})
    monkeypatch.setattr(runner_check, "_run_project_uri", broken)
    runner_check.guard("http://127.0.0.1:1")
    assert runner_check._state == {"ours": False}


def test_the_sql_stores_are_mlflow_s_own(tmp_path):
    # fails where the builder returns anything but MLflow's store (or the entry point is not installed)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service import utils

    for scheme in ("sqlite", "postgresql", "mysql", "mssql"):
        assert utils._tracking_store_registry._registry[scheme] is runner_check.sql_store, scheme
    assert type(MlflowClient(f"sqlite:///{tmp_path / 'other.db'}")._tracking_client.store) is SqlAlchemyStore


def test_a_run_that_fails_in_the_default_experiment_says_only_its_error():
    # round 4's corpus (N02): the "put this run in experiment 'Default'" note came first, then the error: two lines
    out, code, _ = mlflow_run("-P", "lora_r=1000000", "-P", "evaluate=false")
    ours = [line for line in out.splitlines() if line.startswith(("Error:", "molting:"))]
    assert code == 1 and len(ours) == 1 and "lora_r=1000000 exceeds 32" in ours[0], out[-3000:]


def test_diagnose_without_a_run_id_under_mlflow_run_is_our_line(store):
    # round 4's corpus (R18): MLflow's "No value given for missing parameters: 'run_id'" named no fix
    r = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "diagnose", "--env-manager", "local",
                        "--experiment-name", "molting"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith(("Error:", "molting:"))]
    assert r.returncode == 1 and ours == ["Error: no run id given; name the run (-P run_id=<id> under mlflow run), "
                                          "e.g. one of the 8-character ids that `molting compare` prints"], \
        r.stderr[-2000:]
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("molting").experiment_id])
    assert run.info.status == "FAILED"          # the run MLflow made for it is not left RUNNING
