"""Helpers shared by test modules (pytest puts tests/ on sys.path)."""
import os
from contextlib import contextmanager


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
