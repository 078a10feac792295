"""No zombie runs: a run whose process died (SIGKILL, out of memory, power loss) never ends itself and
would stay RUNNING in MLflow forever.

Every run records the process that holds it open (tags molting.host, molting.pid, molting.pid_start);
the next molting command on that host that touches the store ends such runs FAILED, the reason in
molting.error. A run of another host is left to that host: its pid means nothing here.

`touch_store()` is what a command calls first: a tracking server must answer (one line if not), a
new SQLite store is created under a lock (MLflow migrates its schema on first use, and two processes
doing that at once break each other), then the reaping. Once per store per process. The lock is
`store_lock`, also taken where MLflow builds a SQL store (runner_check.sql_store): under `mlflow run`
the runner creates the store before any command of ours starts.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from molting_mlflow.ground.errors import MoltingError, first_line
from molting_mlflow.ground.paths import sqlite_path
from molting_mlflow.ground.tags import ERROR_TAG

HOST_TAG, PID_TAG, START_TAG = "molting.host", "molting.pid", "molting.pid_start"
_touched: set[str] = set()


class StoreUnreachable(MoltingError, RuntimeError):
    """The tracking server does not answer; the message names it and the fix."""


class StoreUnwritable(MoltingError, RuntimeError):
    """A SQLite store this process cannot write now: read-only, or locked by another process."""


# How long a command waits for another process's write lock on a SQLite store before it says so; the
# project's own writes hold it for milliseconds (MLflow's pysqlite default wait is 5 s a statement).
LOCK_WAIT_S = 10


def host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """'<boot id>:<start time in clock ticks after boot>' of a live process, '' where this system has no
    /proc (nothing to compare), None where the process is gone. A pid reused by a later process (or
    after a reboot) has another start, so it is not mistaken for the run's."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
        return ""
    # fields after the ')' that closes the command name start at field 3; starttime is field 22
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def process_tags() -> dict:
    """The tags that tell a later command whether this run's process still lives."""
    return {HOST_TAG: host(), PID_TAG: str(os.getpid()), START_TAG: process_start(os.getpid()) or ""}


def is_alive(pid: int, start: str) -> bool:
    now = process_start(pid)
    return now is not None and (not start or not now or now == start)


def reap(client=None, log=None) -> list[str]:
    """End FAILED every RUNNING run of this host whose process is gone; returns their ids."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    exp_ids, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, page_token=token)
        exp_ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    me, ended = host(), []
    for i in range(0, len(exp_ids), 100):
        runs = client.search_runs(exp_ids[i:i + 100], run_view_type=ViewType.ALL, max_results=1000,
                                  filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{me}'")
        for run in runs:
            tags = run.data.tags
            pid = int(tags.get(PID_TAG, "0") or 0)
            if pid <= 0 or pid == os.getpid() or is_alive(pid, tags.get(START_TAG, "")):
                continue
            why = (f"process {pid} on {me} ended without closing this run (killed, out of memory or the machine "
                   f"stopped); ended FAILED by molting (pid {os.getpid()})")
            try:
                client.set_tag(run.info.run_id, ERROR_TAG, why)
                client.set_terminated(run.info.run_id, "FAILED")
            except Exception as e:  # e.g. READ permission on a team server: leave it to someone who may
                log(f"molting: note: run {run.info.run_id} was left RUNNING by process {pid}, which is gone; "
                    f"could not end it ({first_line(e, 200)})")
                continue
            ended.append(run.info.run_id)
            log(f"molting: run {run.info.run_id} was left RUNNING by process {pid}, which is gone: ended it FAILED")
    return ended


def touch_store(create: bool = True, write: bool = True) -> None:
    """Before a command uses the tracking store (see the module docstring). `create=False`: a SQLite
    store that does not exist yet is left uncreated (nothing in it to reap). `write`: the command will
    write, so a SQLite store it cannot write (read-only, locked) is one line now (check_writable)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri in _touched:
        return
    db = sqlite_path(uri)
    check_answers(uri)
    if db is not None and not db.exists() and not create:
        return
    with store_lock(db):
        if write and db is not None and db.exists():
            check_writable(db)   # inside the lock: never waiting on another molting process's schema migration
        client = _opened(uri)
    _touched.add(uri)
    sweep_up(client)


def _opened(uri: str):
    """A client of the store at `uri`, which has answered one query (creating and migrating a new SQLite store).
    A URI MLflow cannot open (an unknown scheme, a retired file store, a database driver not installed, a
    database that does not answer) is a StoreUnreachable line naming the URI."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from sqlalchemy.exc import SQLAlchemyError

    try:
        client = MlflowClient(uri)       # an unknown scheme fails here already
        client.search_experiments(max_results=1)
    except (MlflowException, SQLAlchemyError, ImportError) as e:
        if sqlite_fault(e) is not None or uri.startswith(("http://", "https://")):
            raise        # said as themselves: a locked store, a server's 401/403 (cli._world_error)
        raise unopenable(uri, e) from None
    return client


def unopenable(uri: str, e: BaseException) -> StoreUnreachable:
    """The line for a store MLflow could not open: its URI, MLflow's (or the driver's) first line, the fix."""
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    if isinstance(e, UnsupportedModelRegistryStoreURIException):   # a typo such as postgres:// or sqlite//
        why = f"MLflow opens no store of the scheme '{uri.partition(':')[0]}'"
    else:
        why = first_line(e)
        why = why if len(why) <= 160 else why[:159] + "…"
    return StoreUnreachable(f"the tracking store {redact(uri)} cannot be opened ({type(e).__name__}: {why}); "
                            "point MLFLOW_TRACKING_URI at sqlite:///mlflow.db, a running server (http://…) or a "
                            "database you can reach")


def check_answers(uri: str) -> None:
    """Before the store is opened, fast: a server answers one request (check_server), a database's host takes
    a TCP connection (check_database); a SQLite file or any other URI passes."""
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    check_database(uri)


# A database store's default port by SQLAlchemy backend: a host that refuses a TCP connection there is one
# line in seconds (MLflow's engine retries a refused connection for about 100 s, then raises)
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_database(uri: str, what: str = "the tracking store") -> None:
    """A database URL (postgresql://, mysql://, mssql://, a +driver too) whose host accepts no TCP connection
    is a StoreUnreachable line; any other URL passes untouched."""
    backend = uri.split(":", 1)[0].split("+", 1)[0]
    if backend not in DATABASE_PORTS:
        return
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if not url.host:          # a Unix socket: the driver's own error is clear enough
        return
    try:
        socket.create_connection((url.host, url.port or DATABASE_PORTS[backend]), timeout=5).close()
    except OSError as e:
        raise StoreUnreachable(f"{what} {redact(uri)} is not reachable ({e.strerror or type(e).__name__}); start the "
                               "database, or point at one that runs") from None


def sweep_up(client=None) -> None:
    """reap(), as housekeeping: a failure to look is a note, never the reason a command fails."""
    try:
        reap(client)
    except Exception as e:
        print(f"molting: note: could not look for abandoned runs ({first_line(e, 200)})",
              file=sys.stderr, flush=True)


def check_server(uri: str) -> None:
    """One request, no retries: a server that is down is one line now, not minutes of retries later."""
    import requests
    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(uri)
    verify = False if creds.ignore_tls_verification else (creds.server_cert_path or True)
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10, verify=verify, cert=creds.client_cert_path)
    except requests.RequestException as e:
        raise StoreUnreachable(f"tracking server {redact(uri)} is not reachable ({_os_reason(e)}); start it, or "
                               "point MLFLOW_TRACKING_URI at a running one") from None


def check_writable(db: Path) -> None:
    """Write to `db` in a transaction that is rolled back (a table made and never kept): a store that is
    read-only or whose write lock another process holds fails here in one line, before a run is opened.
    SQLite takes the lock at BEGIN IMMEDIATE but finds a read-only file only at the first write."""
    import sqlite3

    try:
        conn = sqlite3.connect(db, timeout=LOCK_WAIT_S, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE molting_write_probe (x)")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:      # OperationalError (read-only, locked) and "file is not a database"
        raise StoreUnwritable(sqlite_fault(e, db, LOCK_WAIT_S) or f"the tracking store {db} cannot be written ({e}); check it "
                              f"with `sqlite3 {db} 'PRAGMA integrity_check'` or point MLFLOW_TRACKING_URI elsewhere") \
            from None


def sqlite_fault(e: BaseException, db: Path | None = None, waited_s: int | None = None) -> str | None:
    """The one line for a SQLite store that refuses a write, read from SQLite's own error code anywhere in
    `e`'s chain (MLflow wraps SQLAlchemy's error, which wraps sqlite3's); None for anything else.
    `waited_s`: how long the lock was waited for, when known."""
    import sqlite3

    import mlflow

    seen, where = e, db or sqlite_path(mlflow.get_tracking_uri()) or "the tracking store"
    for _ in range(20):   # a chain is a few links (MLflow, SQLAlchemy, sqlite3); never loop on a cycle
        if seen is None:
            break
        code = getattr(seen, "sqlite_errorcode", None)   # Python 3.11+; the primary code is the low byte
        if isinstance(seen, sqlite3.Error) and code is not None:
            if code & 0xFF == sqlite3.SQLITE_READONLY:
                return (f"the tracking store {where} is read-only for this process; make it writable (chmod u+w, "
                        "chattr -i; its folder too) or point MLFLOW_TRACKING_URI at a store you can write")
            if code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                waited = f" (waited {waited_s} s)" if waited_s is not None else ""
                return (f"the tracking store {where} is locked by another process{waited}; let it finish, or close "
                        "what holds it open (a sqlite3 shell, a stuck process), and run again")
            if code & 0xFF == sqlite3.SQLITE_CANTOPEN:
                return (f"the tracking store {where} cannot be opened for writing (its folder is read-only or gone); "
                        "fix the folder's permissions or point MLFLOW_TRACKING_URI elsewhere")
            if code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                return (f"the tracking store {where} is not a SQLite database, or a damaged one ({seen}); move it "
                        "away (a new store is made in its place) or point MLFLOW_TRACKING_URI at another file")
            return None
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "orig", None)
    return None


def _os_reason(e: BaseException) -> str:
    """The operating system's words for a failed connection ('Connection refused'), else the exception's type."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__ or next((a for a in seen.args if isinstance(a, BaseException)), None)
    return type(e).__name__


def redact(uri: str) -> str:
    """A URI without a password in it (http://user:secret@host → http://user:***@host)."""
    import re

    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", uri)


# The first-use locks this process holds: the store folder's (st_dev, st_ino) → [descriptor holding the flock, how many
# holders]; the descriptor is None while a thread waits for the flock. _held_change guards it and wakes the waiters.
_held: dict[tuple[int, int], list] = {}
_held_change = threading.Condition()


@contextmanager
def store_lock(db: Path | None):
    """The first-use lock of the SQLite store `db`: an exclusive flock on its folder (no lock file left behind), so
    one process at a time creates and migrates a new store; no-op for other stores.

    Whatever opens the store first takes it: MLflow's builder through runner_check.sql_store (the `mlflow run`
    runner, before our entry point starts; any client), touch_store (every command, each sweep worker), and the
    two nested where touch_store's client makes MLflow build the store. Re-entrant within the process: flocks
    of two open descriptions of the folder conflict even in one process, so a nested take would wait on itself;
    the process keeps one description a folder (by inode: `./x` and `/abs/x` are one lock) and a count, and the
    flock goes when the last holder leaves. Shared by the process's threads, not exclusive between them: MLflow
    builds every store (a new one's migration too) under its own process-wide lock (_building_store_lock in
    tracking/_tracking_service/registry.py) and calls sql_store inside it, while touch_store takes this lock
    before MLflow's; a lock exclusive between threads would deadlock those two orders. A thread that comes while
    another waits for another process's flock waits with it."""
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; creating a store from two processes at once is left to luck there
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)     # MLflow makes the folder too (db/utils.py), so nothing new
    fd = os.open(db.parent, os.O_RDONLY)             # not inherited by a child process (PEP 446)
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    with _held_change:
        while key in _held and _held[key][0] is None:   # another thread of this process waits for the flock
            _held_change.wait()
        joined = key in _held
        if joined:
            _held[key][1] += 1
        else:
            _held[key] = [None, 0]
    if joined:
        os.close(fd)            # this process's one description already holds the flock
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)     # waits for another process's first use of the store
        except BaseException:
            os.close(fd)
            with _held_change:
                del _held[key]
                _held_change.notify_all()
            raise
        with _held_change:
            _held[key] = [fd, 1]
            _held_change.notify_all()
    try:
        yield
    finally:
        with _held_change:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                os.close(_held.pop(key)[0])     # the last holder: closing the description releases the flock
