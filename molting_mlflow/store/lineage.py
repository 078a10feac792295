"""Where an evaluation's adapter came from: the train run that trained it (tag molting.train_run_id), and
what that training means for the evaluation: whether its questions were prompts of the training data.

The evaluate stage asks when it scores an adapter; diagnose reads the training (losses, pre-flight, steps) of
an evaluation from here.
"""
from __future__ import annotations

import json
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from molting_mlflow.ground.data import DatasetError, load_dataset
from molting_mlflow.ground.errors import missing_in_store
from molting_mlflow.ground.findings import Finding
from molting_mlflow.ground.models import sha256_file
from molting_mlflow.ground.preflight import EVAL_LEAK, leak_findings
from molting_mlflow.ground.tags import EVAL_LEAK_TAG, PREFLIGHT_ARTIFACT, TRAIN_RUN_TAG
from molting_mlflow.store.tracking import text_artifact


def train_run(train_run_id: str | None) -> Run | None:
    """The train run of that id, or None where there is none (an adapter from elsewhere, a run deleted)."""
    if not train_run_id:
        return None
    try:
        return MlflowClient().get_run(train_run_id)
    except MlflowException as e:
        if missing_in_store(e):
            return None
        raise


def train_run_of(run: Run) -> Run | None:
    """The train run whose adapter `run` evaluated (its tag TRAIN_RUN_TAG), where it is in this store."""
    return train_run(run.data.tags.get(TRAIN_RUN_TAG))


def training_leak(trained: Run | None, questions: list, questions_path: str) -> Finding | None:
    """Pre-flight's eval_leak finding for these questions against the data `trained` trained on, or None where
    none leaked or nothing can be told: the training's dataset is read again where its file is still there,
    unchanged (its data.sha256); else the train run's own finding stands where it was scored on these very
    questions (questions.sha256)."""
    if trained is None or not questions:
        return None
    params = trained.data.params
    path = params.get("train.dataset", "")
    if path and Path(path).is_file() and sha256_file(path) == params.get("data.sha256"):
        try:
            found = leak_findings(questions, load_dataset(path, None))
        except DatasetError:        # the file trained once; whatever it is now, it tells nothing
            return None
        return found[0] if found else None
    if questions_path and params.get("questions.sha256") == sha256_file(questions_path) \
            and EVAL_LEAK_TAG in trained.data.tags:
        return _train_run_leak(trained)
    return None


def _train_run_leak(trained: Run) -> Finding | None:
    """The eval_leak finding in the train run's own preflight.json."""
    report = json.loads(text_artifact(trained.info.run_id, PREFLIGHT_ARTIFACT) or "{}")
    leak = next((f for f in report.get("findings", []) if f["check"] == EVAL_LEAK), None)
    return Finding(**leak) if leak else None
