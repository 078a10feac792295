"""The project's experiments: created with an absolute artifact location, marked as fine-tuning
experiments (and, once they hold scores, with the UI's saved view of the runs by score: scoring.py),
and found again.

Where the project's runs are: `mlflow run` puts them in the experiment named on its command line,
or in `Default`; `molting …` in `--experiment` (default molting). Look-ups search them all.
"""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from molting_mlflow.ground.config import ConfigError
from molting_mlflow.ground.errors import first_line
from molting_mlflow.ground.tags import STAGE_TAG

# MLflow's experiment kind (the UI's enum value `finetuning`, MLflow 3.17): what these experiments hold.
EXPERIMENT_KIND = {"mlflow.experimentKind": "finetuning"}


def ensure_experiment(name: str) -> str:
    """The experiment's id, created on first use with an absolute artifact location: MLflow's
    default with the SQLite store is ./mlruns of whatever directory the run started in."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        mark_experiment(exp)
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:///") or uri.startswith("file:") or "://" not in uri:
        location = (Path.cwd() / "mlruns").resolve().as_uri()
    try:
        exp_id = mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException as e:  # another process created it since the lookup
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp_id = mlflow.get_experiment_by_name(name).experiment_id
    mark_experiment(mlflow.get_experiment(exp_id))
    return exp_id


def mark_experiment(exp, tags: dict | None = None) -> None:
    """Give an experiment that holds our runs (`Default` too, where `mlflow run` puts them) each of `tags`
    (default: the fine-tuning kind) it does not have yet: a kind or a view someone chose stays theirs."""
    for key, value in (tags or EXPERIMENT_KIND).items():
        if key not in exp.tags:
            try:
                MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
            except MlflowException as e:   # a server that lets us log runs but not tag experiments: runs first
                print(f"molting: note: experiment '{exp.name}' keeps no tag {key} "
                      f"({first_line(e, 200)})", flush=True)


def project_experiments() -> list:
    """Every active experiment holding at least one run of ours (tag molting.stage), oldest first."""
    client = MlflowClient()
    found = []
    for exp in mlflow.search_experiments():          # every page
        if client.search_runs([exp.experiment_id], f"tags.`{STAGE_TAG}` LIKE '%'", max_results=1):
            found.append(exp)
    return sorted(found, key=lambda e: int(e.experiment_id) if e.experiment_id.isdigit() else 0)


def experiments_to_search(name: str | None) -> list:
    """The experiment named (by the option, else $MLFLOW_EXPERIMENT_NAME), or, with none named, every
    experiment holding the project's runs. A name that is not there is a user error naming where the
    runs are."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None
    if name is None:
        return project_experiments()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return [exp]
    where = ", ".join(f"'{e.name}'" for e in project_experiments())
    hint = f"the project's runs are in {where}" if where else "it holds no molting runs yet"
    raise ConfigError(f"no experiment named '{name}' in {mlflow.get_tracking_uri()} ({hint}); pass --experiment "
                      "<name>, or none to search them all (or set MLFLOW_TRACKING_URI)")


def lookup_order(experiment_id: str) -> list[str]:
    """This experiment first, then the project's other experiments: where a baseline or a reusable
    run of the same configuration may be when `mlflow run` put them in another one."""
    return [experiment_id] + [e.experiment_id for e in project_experiments() if e.experiment_id != experiment_id]
