"""The team server: `mlflow server --app-name basic-auth` with its run store and its user store in PostgreSQL
(two databases made for this test and dropped after), started here. molting's commands authenticate
through MLflow's own MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD: no credentials are refused, a
READ user cannot write, an EDIT user trains, evaluates and registers, and no password lands in the store.
"""
import base64
import getpass
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from helpers import use_store
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli

PG = dict(host="127.0.0.1", port=5432, user=os.environ.get("PGUSER") or getpass.getuser())
TINY = ["train", "--model", "tiny-random", "--epochs", "1", "--min-steps", "0", "--eval-max-new-tokens", "8"]


def _pg(dbname="test"):
    """An autocommit connection (CREATE/DROP DATABASE refuse a transaction block), closed on leaving `with`."""
    from contextlib import closing

    import psycopg2

    conn = psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
    conn.autocommit = True
    return closing(conn)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server, its admin, a `molting` experiment, a READ user and an EDIT user on it."""
    try:
        import flask_wtf  # noqa: F401  (mlflow[auth]: the basic-auth app needs it)
        with _pg():
            pass
    except Exception as e:
        pytest.skip(f"team server needs PostgreSQL on {PG['host']}:{PG['port']} and Flask-WTF: {e}")
    d = tmp_path_factory.mktemp("team")
    name = f"molting_team_{os.getpid()}_{secrets.token_hex(4)}"
    dbs = (f"{name}_store", f"{name}_auth")
    with _pg() as conn, conn.cursor() as cur:
        for db in dbs:
            cur.execute(f'CREATE DATABASE "{db}"')
    url = "postgresql+psycopg2://{user}@{host}:{port}/".format(**PG)
    (d / "basic_auth.ini").write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = {url}{dbs[1]}\n"
                                      "admin_username = admin\n"
                                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    pw = {u: secrets.token_urlsafe(18) for u in ("admin", "reader", "writer")}
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(d / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": pw["admin"],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    log = open(d / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                             "--backend-store-uri", url + dbs[0], "--artifacts-destination", str(d / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import requests

        deadline = time.time() + 180
        while True:
            try:
                if requests.get(uri + "/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.time() < deadline, (d / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", pw["admin"])
            from mlflow.server import get_app_client

            admin = get_app_client("basic-auth", tracking_uri=uri)
            exp = MlflowClient(uri).create_experiment("molting")
            for user, perm in (("reader", "READ"), ("writer", "EDIT")):
                admin.create_user(user, pw[user])
                admin.grant_user_permission(user, "experiment", exp, perm)
        _cheap_password_hashes(dbs[1], pw)
        yield {"uri": uri, "pw": pw, "dir": d, "dbs": dbs, "experiment_id": exp}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker: the group this fixture started
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        with _pg() as conn, conn.cursor() as cur:
            for db in dbs:
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _cheap_password_hashes(users_db: str, pw: dict) -> None:
    """The server checks the password on every request, with werkzeug's default hash (scrypt): ~0.1-0.3 s
    each, two minutes of this suite's CI time over the writer's few hundred requests. The test users get
    the same check at one PBKDF2 iteration (the method is read from the stored hash); who may do what is
    unchanged."""
    from werkzeug.security import generate_password_hash

    with _pg(users_db) as conn, conn.cursor() as cur:
        for user, password in pw.items():
            cur.execute("UPDATE users SET password_hash = %s WHERE username = %s",
                        (generate_password_hash(password, method="pbkdf2:sha256:1"), user))
        conn.commit()


def as_user(mp, server, user):
    """Point MLflow (and the commands) at the server as `user` (None: no credentials)."""
    use_store(mp, server["uri"])
    if user is None:
        mp.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        mp.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    else:
        mp.setenv("MLFLOW_TRACKING_USERNAME", user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", server["pw"][user])


def one_line(output: str) -> str:
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in output, output[-3000:]
    return lines[0]


def test_no_credentials_is_refused(server, monkeypatch):
    import requests

    assert requests.get(server["uri"] + "/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    as_user(monkeypatch, server, None)
    r = CliRunner().invoke(cli, ["compare"])
    assert r.exit_code == 2
    assert one_line(r.output) == (f"Error: tracking server {server['uri']} refused a request without credentials: "
                                  "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")


def test_read_permission_reads_but_cannot_write(server, monkeypatch):
    as_user(monkeypatch, server, "reader")
    client = MlflowClient()
    before = len(client.search_runs([server["experiment_id"]]))  # READ: may look
    with pytest.raises(mlflow.exceptions.MlflowException) as e:
        client.create_run(server["experiment_id"])
    assert e.value.get_http_status_code() == 403
    r = CliRunner().invoke(cli, TINY)
    assert r.exit_code == 2
    assert "user 'reader' may not do this (HTTP 403)" in one_line(r.output)
    assert len(client.search_runs([server["experiment_id"]])) == before


@pytest.fixture(scope="module")
def writer_flow(server):
    """As the EDIT user: molting train, molting evaluate, register the adapter, molting registry."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        as_user(mp, server, "writer")
        r = CliRunner().invoke(cli, TINY)
        assert r.exit_code == 0, r.output[-3000:]
        run_id = r.output.split("adapter: runs:/")[1].split("/")[0]
        e = CliRunner().invoke(cli, ["evaluate", "--run-id", run_id, "--max-new-tokens", "8"])
        assert e.exit_code == 0, e.output[-3000:]
        from molting_mlflow.stages.registry import register_adapter

        version = register_adapter(run_id, "tiny-random", log=lambda *a: None)
        g = CliRunner().invoke(cli, ["registry", "--name", "molting-tiny-random"])
        assert g.exit_code == 0, g.output
        out.update(run_id=run_id, version=version, outputs=r.output + e.output + g.output,
                   runs=MlflowClient().search_runs([server["experiment_id"]]))
    return out


def test_edit_permission_trains_evaluates_and_registers(server, writer_flow, monkeypatch):
    runs = writer_flow["runs"]
    stages = sorted(r.data.tags.get("molting.stage") for r in runs)
    assert stages == ["evaluate", "train"] and {r.info.status for r in runs} == {"FINISHED"}
    assert all("score" in r.data.metrics for r in runs)
    assert writer_flow["version"] == "1" and "candidate" in writer_flow["outputs"]
    # the reader sees none of the writer's registered model (NO_PERMISSIONS by default) and cannot move it:
    # told as the refusal it is (HTTP 403, by MLflow's error code), not as a model that is not there
    as_user(monkeypatch, server, "reader")
    r = CliRunner().invoke(cli, ["promote", "molting-tiny-random", "1", "--alias", "champion"])
    assert r.exit_code == 2 and "user 'reader' may not do this (HTTP 403)" in r.output, r.output


def _dump(db: str) -> str:
    """Every row of every table of a database, as text (COPY … TO STDOUT)."""
    with _pg(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        buf = io.StringIO()
        for (table,) in cur.fetchall():
            cur.copy_expert(f'COPY "{table}" TO STDOUT', buf)
        return buf.getvalue()


def test_no_secret_in_params_tags_logs_or_artifacts(server, writer_flow):
    secrets_ = [p for p in server["pw"].values()]
    secrets_ += [base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in server["pw"].items()]  # basic-auth headers
    store, users = _dump(server["dbs"][0]), _dump(server["dbs"][1])
    assert writer_flow["run_id"] in store and "writer" in users  # the dumps hold what the test made
    files = [f for f in Path(server["dir"], "artifacts").rglob("*") if f.is_file()]
    assert any(f.name == "adapter_model.safetensors" for f in files)
    blobs = {"run store": store, "user store": users, "server log": (server["dir"] / "server.log").read_text(),
             "command output": writer_flow["outputs"],
             **{str(f): f.read_bytes().decode("latin-1") for f in files}}
    leaks = [(where, s[:4] + "…") for where, text in blobs.items() for s in secrets_ if s in text]
    assert not leaks, leaks
