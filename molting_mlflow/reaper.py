"""No zombie runs: a run whose process died (SIGKILL, out of memory, power loss) never ends itself and
would stay RUNNING in MLflow forever.

Every run records the process that holds it open (tags molting.host, molting.pid, molting.pid_start);
the next molting command on that host that touches the store ends such runs FAILED, the reason in
molting.error. A run of another host is left to that host: its pid means nothing here.

`touch_store()` is what a command calls first: a tracking server must answer (one line if not), a
new SQLite store is created under a lock (MLflow migrates its schema on first use, and two processes
doing that at once break each other), then the reaping. Once per store per process.
"""
from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

HOST_TAG, PID_TAG, START_TAG = "molting.host", "molting.pid", "molting.pid_start"
_touched: set[str] = set()


class StoreUnreachable(RuntimeError):
    """The tracking server does not answer; the message names it and the fix."""


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
                client.set_tag(run.info.run_id, "molting.error", why)
                client.set_terminated(run.info.run_id, "FAILED")
            except Exception as e:  # e.g. READ permission on a team server: leave it to someone who may
                log(f"molting: note: run {run.info.run_id} was left RUNNING by process {pid}, which is gone; "
                    f"could not end it ({str(e).splitlines()[0][:200]})")
                continue
            ended.append(run.info.run_id)
            log(f"molting: run {run.info.run_id} was left RUNNING by process {pid}, which is gone: ended it FAILED")
    return ended


def touch_store(create: bool = True) -> None:
    """Before a command uses the tracking store (see the module docstring). `create=False`: a SQLite
    store that does not exist yet is left uncreated (nothing in it to reap)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri in _touched:
        return
    db = _sqlite_path(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    elif db is not None and not db.exists() and not create:
        return
    with _store_lock(db):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # creates (and migrates) the store, inside the lock
    _touched.add(uri)
    sweep_up(client)


def sweep_up(client=None) -> None:
    """reap(), as housekeeping: a failure to look is a note, never the reason a command fails."""
    try:
        reap(client)
    except Exception as e:
        print(f"molting: note: could not look for abandoned runs ({str(e).splitlines()[0][:200]})",
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


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextmanager
def _store_lock(db: Path | None):
    """An exclusive lock on the SQLite store's folder (no lock file left behind); no-op for other stores."""
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; creating a store from two processes at once is left to luck there
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
