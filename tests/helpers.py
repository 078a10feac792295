"""Helpers shared by test modules (pytest puts tests/ on sys.path)."""
import os
import subprocess
from contextlib import contextmanager

import pytest


def use_store(monkeypatch, uri: str) -> None:
    """Point this test at the store `uri`: the environment (child processes, new clients) and this
    process's MLflow; monkeypatch puts the environment back afterwards."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


@contextmanager
def store_in(folder):
    """For module-scoped fixtures (one training shared by several tests): an MLflow store and cwd in
    `folder` while the block runs; the test-scoped isolation below takes over afterwards."""
    import mlflow

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


@contextmanager
def made_read_only(path):
    """`path` read-only for this process while the block runs: immutable (root ignores file modes), else
    mode 0444; the test is skipped where neither is possible."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root without chattr +i: no way to make a file read-only here")
        try:
            yield path
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        try:
            yield path
        finally:
            path.chmod(0o644)
