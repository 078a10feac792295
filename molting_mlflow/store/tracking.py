"""MLflow plumbing shared by every stage: one run per stage, attached when `mlflow run` made it.

A stage never leaves a run RUNNING: an exception ends it FAILED (KILLED on Ctrl-C) with the
error in the tag `molting.error`; a run whose process died is ended FAILED by the next command on
its host (reaper.py: each run records its host and pid).
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager

import mlflow
from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID

from molting_mlflow.ground.config import ConfigError
from molting_mlflow.ground.errors import first_line, missing_in_store
from molting_mlflow.ground.tags import ERROR_TAG, PRUNE_REASON_TAG, TRIAL_STATE_TAG
from molting_mlflow.store.experiments import ensure_experiment, mark_experiment
from molting_mlflow.store.mlflow_run import keep_killed
from molting_mlflow.store.reaper import process_tags, touch_store


def _no_spark_lookups() -> None:
    """Where pyspark is not installed, mark it absent in sys.modules, so that `import pyspark` fails at
    once, without the import machinery. MLflow's system-metrics thread builds an MlflowClient every
    sample, and that tries `from pyspark.sql import SparkSession` (a Spark session may name a registry);
    meanwhile mlflow.genai.evaluate (the evaluation view, eval_view) holds MLflow's import-hook lock
    while it imports flavour modules that import pyspark too. The two threads deadlocked: each held
    the lock the other waited for (py-spy on a sweep trial stuck in its evaluation logging: the test of
    a killed worker here, likely the worker that never finished on an H200). Nothing changes where
    pyspark is installed."""
    import importlib.util

    if "pyspark" not in sys.modules and importlib.util.find_spec("pyspark") is None:
        sys.modules["pyspark"] = None


_no_spark_lookups()      # before any run starts its system-metrics thread


def _system_metrics() -> bool:
    """MLflow's system metrics (CPU, memory, disk, network; GPU utilisation and memory through
    nvidia-ml-py where there is one) on every stage run, unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    says otherwise. Sampled every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL s (MLflow's default 10)."""
    import logging

    # its start/stop lines at INFO, three a run (a sweep's every trial), say nothing the run does not
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    setting = MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    return setting.get() if setting.defined else True


@contextmanager
def stage_run(experiment: str, run_name: str, tags: dict | None = None, nested: bool = False,
              parent_run_id: str | None = None):
    """Attach to MLFLOW_RUN_ID (set by `mlflow run`) or start a run in `experiment`; nested: a child of
    the active run, or of `parent_run_id` (a sweep worker in another process than its parent run)."""

    touch_store()
    run_id = os.environ.get("MLFLOW_RUN_ID")
    elsewhere = None   # under `mlflow run` without --experiment-name: `Default`, where `experiment` was meant
    if parent_run_id:
        exp_id = MlflowClient().get_run(parent_run_id).info.experiment_id
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, parent_run_id=parent_run_id,
                               nested=mlflow.active_run() is not None, log_system_metrics=_system_metrics())
    elif run_id and not nested and mlflow.active_run() is None:
        run = mlflow.start_run(run_id=run_id, log_system_metrics=_system_metrics())
        _attached.append(run_id)
        # Consumed, as mlflow.start_run() does when it reads it itself: left set, the first nested
        # start_run (a sweep's first trial) would resume this run instead of making a child.
        os.environ.pop("MLFLOW_RUN_ID", None)
        exp = mlflow.get_experiment(run.info.experiment_id)
        mark_experiment(exp)
        # only where the runner fell back on `Default` (no --experiment-name): a name the user gave is theirs
        elsewhere = exp.name if exp.experiment_id == DEFAULT_EXPERIMENT_ID and exp.name != experiment else None
        mlflow.set_tag("mlflow.runName", run_name)
    else:
        parent = mlflow.active_run() if nested else None
        # a child goes where its parent is (under `mlflow run` that may be `Default`), never elsewhere
        exp_id = parent.info.experiment_id if parent is not None else ensure_experiment(experiment)
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, nested=nested,
                               log_system_metrics=_system_metrics())
    mlflow.set_tags({**process_tags(), **(tags or {})})
    try:
        yield run
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            if run.info.run_id in _attached:     # first: mlflow run's SIGTERM may cut what follows short
                _keep_killed(run.info.run_id)
            mlflow.set_tag(ERROR_TAG, "interrupted")
            mlflow.end_run("KILLED")
        elif _is_trial_pruned(e):  # optuna's: the sweep stopped this trial on purpose
            mlflow.set_tags({TRIAL_STATE_TAG: "PRUNED", PRUNE_REASON_TAG: str(e)[:5000]})
            mlflow.end_run("KILLED")
        else:
            mlflow.set_tag(ERROR_TAG, first_line(e, 5000))
            mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
        if elsewhere:   # said once the run is done: a failure stays one line
            print(f"molting: note: `mlflow run` put this run in experiment '{elsewhere}', not '{experiment}'; "
                  f"pass --experiment-name {experiment} to mlflow run to keep runs together", flush=True)


def _is_trial_pruned(e: BaseException) -> bool:
    """optuna.TrialPruned, without importing optuna where no sweep did (a pruned trial means it is loaded)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(e, optuna.TrialPruned)


# The runs this process attached to (MLFLOW_RUN_ID, set by `mlflow run`), which stage_run consumes.
_attached: list[str] = []


def fail_attached_run(message: str) -> None:
    """Called on a user error before any run was opened here: end the run `mlflow run` made, FAILED."""
    _end_attached_run("FAILED", message)


def kill_attached_run() -> None:
    """Ctrl-C before any run was opened here: end the run `mlflow run` made KILLED, and keep it so."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        _keep_killed(run_id)   # first: mlflow run's SIGTERM may cut what follows short
        _end_attached_run("KILLED", "interrupted")


def _end_attached_run(status: str, message: str) -> str | None:
    """The attached run, ended `status` with molting.error=`message` if it was RUNNING; its id, or None."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, ERROR_TAG, message[:5000])
            client.set_terminated(run_id, status)
    except (MlflowException, OSError) as e:  # the store may be the thing that is broken: the error is reported anyway
        print(f"molting: note: could not end run {run_id} {status} ({first_line(e, 200)})", file=sys.stderr,
              flush=True)
        return None
    return run_id


def _keep_killed(run_id: str) -> None:
    keep_killed(run_id, mlflow.get_tracking_uri())




# ---------------------------------------------------------------------------------------------
# Run ids as a user types them: a unique prefix, as git takes a commit's (`molting compare` prints 8)
# ---------------------------------------------------------------------------------------------

MIN_RUN_PREFIX = 4


class RunIdError(ConfigError):
    """A run id that names no run, or a prefix that names several."""


def resolve_run_id(ref: str) -> str:
    """The full id of the one run, in any experiment, whose id starts with `ref`. A full id is returned
    as it is (the command then says whether the run exists); no match, or several, is a one-line
    error, listing the candidates."""
    prefix = ref.strip().lower()
    if not prefix:       # `mlflow run . -e diagnose` without -P run_id (the MLproject's default is "")
        raise RunIdError("no run id given; name the run (-P run_id=<id> under mlflow run), e.g. one of the 8-character "
                         "ids that `molting compare` prints")
    if not re.fullmatch(r"[0-9a-f]+", prefix):
        raise RunIdError(f"run id {ref!r} is not a run id (hex digits, e.g. the 8 that `molting compare` prints)")
    if len(prefix) >= 32:
        return prefix
    if len(prefix) < MIN_RUN_PREFIX:
        raise RunIdError(f"run id {ref!r} is too short: give at least {MIN_RUN_PREFIX} of its characters")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=11,
                              filter_string=f"attributes.run_id LIKE '{prefix}%'")
    if not runs:
        raise RunIdError(f"no run id starts with '{prefix}' in {mlflow.get_tracking_uri()}; `molting compare` "
                         "lists the runs")
    if len(runs) > 1:
        names = ", ".join(f"{r.info.run_id[:12]} ({r.info.run_name})" for r in runs[:10])
        raise RunIdError(f"run id '{prefix}' is ambiguous: {names}{' …' if len(runs) > 10 else ''}; "
                         "give more of its characters")
    return runs[0].info.run_id


def resolve_run_uri(uri: str) -> str:
    """runs:/<prefix>/path → runs:/<full id>/path; any other reference unchanged."""
    if not uri.startswith("runs:/"):
        return uri
    run, sep, path = uri[len("runs:/"):].partition("/")
    return f"runs:/{resolve_run_id(run)}{sep}{path}"


def text_artifact(run_id: str, path: str) -> str | None:
    """A run's text artifact, or None where the run has none at `path`; any other store failure goes on up."""
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
    except FileNotFoundError:
        return None
    except MlflowException as e:
        if not missing_in_store(e):
            raise
        return None
