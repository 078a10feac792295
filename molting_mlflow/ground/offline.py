"""Nothing a molting command runs reaches the internet on its own: MLflow's usage telemetry (on by
default in MLflow 3.x: a thread that fetches a config from mlflow-telemetry.io and posts events) and
the Hugging Face hub's are switched off, and the hub is offline, unless the user set these variables
themselves. Every model, tokenizer and config the project loads is read from disk (`local_files_only`);
the hub's offline switch is for what our imports would fetch on their own: bitsandbytes' CPU backend, on a
CPU with AVX-512 BF16, asks the hub for a 4-bit kernel (the `kernels` package) when it is imported, a
kernel the project never uses (NF4 is for CUDA).

MLflow reads MLFLOW_DISABLE_TELEMETRY (or DO_NOT_TRACK=true) when `mlflow` is imported and starts its
client then, so this runs before anything imports mlflow (cli.py calls it first) and, where mlflow
was imported already (`mlflow run` imports it before our entry point is even started: its own
process is the user's; see the README), asks MLflow to read the switch again.

The one download the project makes on purpose is the smol wheel from the package registry
(models.py), on first use only.
"""
from __future__ import annotations

import logging
import os
import sys

OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",   # mlflow/telemetry/utils.py is_telemetry_disabled (MLflow 3.17)
    "HF_HUB_DISABLE_TELEMETRY": "1",      # huggingface_hub's usage pings
    "HF_HUB_OFFLINE": "1",                # read by huggingface_hub at its import
}
QUIET = ("kernels",)   # its "Skipping publisher trust check … offline mode" warning at bitsandbytes' import


def stay_offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "mlflow.telemetry" in sys.modules:    # imported before us: its client started with the old setting
        from mlflow.telemetry import set_telemetry_client

        set_telemetry_client()
