"""Under `mlflow run`: a tracking store that is down, read-only or locked is one line before MLflow's
project runner touches it, not MLflow's traceback.

`mlflow run . -e train` is MLflow's own process until our entry point starts. Its runner (MLflow 3.17:
mlflow/projects/__init__.py `run` → `_resolve_experiment_id`, then backend/local.py → projects/utils.py
`_create_run`) builds a client, looks the experiment up (`--experiment-name`: creates it when missing)
and creates the run, all before our code exists. So a closed port was minutes of retries and then a
traceback, and a read-only or locked SQLite store a traceback from the runner's create_run; the checks
the `molting` commands make first (reaper.touch_store) came too late.

Two of MLflow's documented plugin hooks run in that process before its first store access (entry points
in pyproject.toml):

- http(s): `mlflow.request_header_provider`. Every REST request asks each provider `in_context()` before
  it is sent (utils/rest_utils.py http_request → tracking/request_header/registry.py), the runner's first
  (get_experiment_by_name, or create_run without --experiment-name) included. `HeaderProvider` adds no
  header; it checks the server with one request (reaper.check_server: no retries, 10 s at most).
- sqlite: no provider is asked anything on MLflow's SQLite path; the store itself is the one hook. The
  `mlflow.tracking_store` entry point `sqlite` replaces MLflow's builder for that scheme (entry points are
  registered after MLflow's own, tracking/_tracking_service/utils.py), and `sqlite_store` checks, then
  returns the store MLflow's own builder makes. The client is built (TrackingServiceClient.__init__) before
  any query, so this comes before the experiment lookup and the create_run. The probe is
  reaper.check_writable: a write rolled back, which fails for a read-only store at once and for a
  locked one after reaper.LOCK_WAIT_S. The builder is also where a new SQLite store is created and
  migrated, in the runner first: `sql_store` builds it under the first-use lock that touch_store takes
  (reaper.store_lock), in any process, so two `mlflow run`s started on a fresh store migrate it once.
- postgresql, mysql, mssql: the same entry point for MLflow's other SQL schemes (`postgresql+psycopg2://…`
  is the `postgresql` scheme to MLflow). The check is reaper.check_database, one TCP connection: a refused
  port was about 100 s of the engine's retries, then a traceback.
- Any other URI (a scheme MLflow does not know, such as `postgres://`; the retired file store, `./mlruns`
  or `file:`), and a database MLflow cannot open (its driver not installed): MLflow raises while it opens
  the store, before any hook of its own is asked. This module, imported by MLflow while it loads its
  plugins, sets `sys.excepthook` in a process whose command is `run` (ours() decides when an exception
  comes, MLflow's CLI importable by then): an exception that passes MLflow's store opening (`_get_store`)
  and ends the process is the reaper's one line for that store, any other exception of the runner one line
  with its type.
- `mlflow.run_context_provider` would not do: its tags are resolved by `mlflow.start_run`, never by the
  runner's `MlflowClient.create_run`.

Both hooks check only in an `mlflow run` process (argv) whose project folder holds this project's MLproject
(`name: molting-mlflow`); anything else (another project, `mlflow server`, the entry point's own process,
any script) is left as MLflow makes it, but for the first-use lock around building a SQLite store, which
only orders processes. One look per process. The wording is reaper's (one owner).

A fault the checks find is `molting: <problem>; <fix>` on stderr and exit 2. MLflow's registries catch
`Exception` from a provider and only log a warning, so the exit is `SystemExit`, a BaseException, which
passes through them and through click; no run was created yet, so none is left RUNNING. MOLTING_DEBUG=1 raises the error
with its traceback instead (as `RunnerCheckDebug`, a BaseException too, for the same reason). A failure
of this module's own (it cannot tell which project runs, a parse it does not expect) is a note line, and
the run goes on. An exception that ends the runner is said in one line, exit 1 (Python's for an uncaught
exception).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from molting_mlflow.ground.errors import MoltingError, debugging, first_line
from molting_mlflow.ground.paths import sqlite_path
from molting_mlflow.store import reaper

# mlflow is imported inside the hooks: MLflow itself imports this module while it loads its plugins.

PROJECT_NAME = "molting-mlflow"   # the MLproject's `name:`

_state: dict = {}   # "ours": this process is an `mlflow run` of this project; "checked": the store was looked at


class RunnerCheckDebug(BaseException):
    """MOLTING_DEBUG=1: the store fault with its traceback, past MLflow's `except Exception`."""


def ours() -> bool:
    """Whether this process is `mlflow run <this project>`; decided once per process."""
    if "ours" not in _state:
        try:
            _state["ours"] = _project_dir_is_ours(_run_project_uri(sys.argv))
        except Exception as e:   # cannot tell: never block a run on that
            _note(f"could not tell which project `mlflow run` runs ({type(e).__name__}: {e})")
            _state["ours"] = False
    return _state["ours"]


def _run_project_uri(argv: list[str]) -> str | None:
    """The project URI of an `mlflow run …` command line (console script or `python -m mlflow`), else None;
    parsed by MLflow's own `run` command (click), so every option that takes a value is skipped as it is there."""
    if len(argv) < 2 or argv[1] != "run":
        return None
    head = Path(argv[0])
    if not (head.name == "mlflow" or (head.name == "__main__.py" and head.parent.name == "mlflow")):
        return None
    from mlflow.cli import run as run_command

    ctx = run_command.make_context("run", list(argv[2:]), resilient_parsing=True)  # no callbacks, no exits
    return ctx.params.get("uri")


def _project_dir_is_ours(uri: str | None) -> bool:
    """A local project folder (optionally `#subdirectory`) whose MLproject is named molting-mlflow. A Git URI
    is fetched only later by the runner: not known to be ours, left alone."""
    if not uri:
        return False
    uri, _, sub = uri.partition("#")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri or uri.startswith("git@"):
        return False
    mlproject = Path(uri).expanduser() / sub / "MLproject"
    if not mlproject.is_file():
        return False
    spec = yaml.safe_load(mlproject.read_text())
    return isinstance(spec, dict) and spec.get("name") == PROJECT_NAME


def guard(tracking_uri: str) -> None:
    """In an `mlflow run` of this project, once: the store at `tracking_uri` must answer (a server) or take a
    write (an existing SQLite file; a new one MLflow creates); a fault exits with one line."""
    if _state.get("checked") or not ours():
        return
    _state["checked"] = True   # first: whatever happens below, once per process
    try:
        reaper.check_answers(tracking_uri)
        if (db := sqlite_path(tracking_uri)) is not None and db.exists():
            reaper.check_writable(db)
    except MoltingError as e:
        if debugging():
            raise RunnerCheckDebug(e.one_line()) from e
        print(f"molting: {e.one_line()}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except Exception as e:   # the check's own failure: MLflow goes on as it would without us
        _note(f"could not check the tracking store before `mlflow run` uses it ({type(e).__name__}: {e})")


def _note(msg: str) -> None:
    """A check that could not be made is said, and the run goes on (MOLTING_DEBUG=1 shows why)."""
    print(f"molting: note: {msg}", file=sys.stderr, flush=True)


class HeaderProvider:
    """`mlflow.request_header_provider`: adds no header; checks the server before the first request."""

    def in_context(self) -> bool:
        import mlflow

        guard(mlflow.get_tracking_uri())
        return False

    def request_headers(self) -> dict:
        return {}


def sql_store(store_uri, artifact_uri=None, **kw):
    """`mlflow.tracking_store` for sqlite, postgresql, mysql and mssql: the check, then the store MLflow's own
    builder makes; for SQLite both under the store's first-use lock (reaper.store_lock), in every process.
    MLflow's builder is what creates and migrates a new SQLite file (SqlAlchemyStore.__init__), and under
    `mlflow run` the runner builds it before our entry point's touch_store: two runs started together on a
    fresh store migrated it twice, and one ended with `duplicate column name: step`. The check comes inside
    the lock too, as in touch_store: its write probe never waits on another process's migration."""
    with reaper.store_lock(sqlite_path(store_uri)):
        guard(store_uri)
        return _mlflow_sql_builder()(store_uri, artifact_uri, **kw)


def _mlflow_sql_builder():
    """MLflow's builder for its SQL schemes (tracking/_tracking_service/utils.py, MLflow 3.17). Our entry points
    take its place in the registry for every SQL scheme, so where MLflow renames it: the store class it builds."""
    from mlflow.tracking._tracking_service import utils

    own = getattr(utils, "_get_sqlalchemy_store", None)
    if own is not None:
        return own
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return lambda store_uri, artifact_uri=None: SqlAlchemyStore(store_uri,
                                                                 artifact_uri or DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)


# ---------------------------------------------------------------------------------------------
# What the checks cannot see: MLflow failing to open the store, or the runner failing otherwise
# ---------------------------------------------------------------------------------------------

def _opening_store(tb) -> bool:
    """Whether the traceback passes MLflow's tracking-store opening (tracking/_tracking_service/utils.py)."""
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_get_store" and code.co_filename.endswith(f"_tracking_service{os.sep}utils.py"):
            return True
        tb = tb.tb_next
    return False


def _one_line_hook(kind, value, tb):
    """sys.excepthook of an `mlflow run` process: MLflow's traceback as one line, in a run of this project."""
    if debugging() or not issubclass(kind, Exception) or not ours():
        return _python_hook(kind, value, tb)
    import mlflow

    if _opening_store(tb):
        line = reaper.unopenable(mlflow.get_tracking_uri(), value).one_line()
    else:
        why = first_line(value, 300)
        line = (f"mlflow run failed before the entry point started ({kind.__name__}: {why}); "
                "check the `mlflow run` options (MOLTING_DEBUG=1 shows the traceback)")
    print(f"molting: {line}", file=sys.stderr, flush=True)


# Set where the command is `run`: under `python -m mlflow` argv[0] is still "-m" while MLflow loads its plugins,
# so whether this is MLflow's run of this project is asked when an exception comes (ours()).
_python_hook = sys.excepthook
if sys.argv[1:2] == ["run"]:
    sys.excepthook = _one_line_hook
