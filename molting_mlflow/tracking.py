"""MLflow plumbing shared by every stage: one run per stage, attached when `mlflow run` made it.

A stage never leaves a run RUNNING: an exception ends it FAILED (KILLED on Ctrl-C) with the
error in the tag `molting.error`; a run whose process died is ended FAILED by the next command on
its host (reaper.py: each run records its host and pid).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


def ensure_experiment(name: str) -> str:
    """The experiment's id, created on first use with an absolute artifact location: MLflow's
    default with the SQLite store is ./mlruns of whatever directory the run started in."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:///") or uri.startswith("file:") or "://" not in uri:
        location = (Path.cwd() / "mlruns").resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException as e:  # another process created it since the lookup
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow.get_experiment_by_name(name).experiment_id


@contextmanager
def stage_run(experiment: str, run_name: str, tags: dict | None = None, nested: bool = False,
              parent_run_id: str | None = None):
    """Attach to MLFLOW_RUN_ID (set by `mlflow run`) or start a run in `experiment`; nested: a child of
    the active run, or of `parent_run_id` (a sweep worker in another process than its parent run)."""
    from .reaper import process_tags, touch_store

    touch_store()
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if parent_run_id:
        exp_id = MlflowClient().get_run(parent_run_id).info.experiment_id
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, parent_run_id=parent_run_id,
                               nested=mlflow.active_run() is not None)
    elif run_id and not nested and mlflow.active_run() is None:
        run = mlflow.start_run(run_id=run_id)
        # Consumed, as mlflow.start_run() does when it reads it itself: left set, the first nested
        # start_run (a sweep's first trial) would resume this run instead of making a child.
        os.environ.pop("MLFLOW_RUN_ID", None)
        exp = mlflow.get_experiment(run.info.experiment_id)
        if exp.name != experiment:
            print(f"molting: note: `mlflow run` put this run in experiment '{exp.name}', not '{experiment}'; "
                  f"pass --experiment-name {experiment} to mlflow run to keep runs together", flush=True)
        mlflow.set_tag("mlflow.runName", run_name)
    else:
        parent = mlflow.active_run() if nested else None
        # a child goes where its parent is (under `mlflow run` that may be `Default`), never elsewhere
        exp_id = parent.info.experiment_id if parent is not None else ensure_experiment(experiment)
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, nested=nested)
    mlflow.set_tags({**process_tags(), **(tags or {})})
    try:
        yield run
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            mlflow.set_tag("molting.error", "interrupted")
            mlflow.end_run("KILLED")
        elif type(e).__name__ == "TrialPruned":  # optuna's: the sweep stopped this trial on purpose
            mlflow.set_tags({"molting.trial_state": "PRUNED", "molting.prune_reason": str(e)[:5000]})
            mlflow.end_run("KILLED")
        else:
            mlflow.set_tag("molting.error", (str(e).splitlines() or [type(e).__name__])[0][:5000])
            mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def fail_attached_run(message: str) -> None:
    """Called on a user error before any run was opened here: end the run `mlflow run` made, FAILED."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "molting.error", message[:5000])
            client.set_terminated(run_id, "FAILED")
    except Exception:  # the store may be the thing that is broken; the error itself is reported anyway
        pass


# ---------------------------------------------------------------------------------------------
# Scores: the rubric's results as metrics, a per-question table and the rubric version
# ---------------------------------------------------------------------------------------------

RESULTS_TABLE = "eval_results.json"


def score_metrics(summary: dict) -> dict:
    """The run metrics of a rubric summary: D1–D5, score, and ref_chrf / ref_nll where present."""
    from .rubric import DIMENSIONS

    m = {d: summary[d] for d in DIMENSIONS} | {"score": summary["score"]}
    return m | {k: summary[k] for k in ("ref_chrf", "ref_nll") if summary.get(k) is not None}


def results_rows(scored: dict) -> list[dict]:
    """One row a question: the answer, each dimension, the reasons and their codes."""
    from .rubric import DIMENSIONS

    return [{"id": r["id"], "question": r["question"], "response": r["response"],
             "finish_reason": r["finish_reason"], **{d: r[d] for d in DIMENSIONS}, "score": r["score"],
             "ref_chrf": r.get("ref_chrf"), "reasons": "; ".join(r["reasons"]), "codes": " ".join(r["codes"])}
            for r in scored["results"]]


def log_scores(records: list[dict], questions, persona, stats: dict, ref_nll: float | None = None,
               step: int = 0) -> dict:
    """Score generated answers with the rubric and log them to the active run: metrics (at `step`: a
    train run's last optimizer step, so ref_nll's curve ends where training did), the per-question
    table (eval_results.json), generation stats and the tag molting.rubric_version."""
    import pandas as pd

    from .rubric import score_responses

    scored = score_responses(questions, records, persona)
    if ref_nll is not None:
        scored["summary"]["ref_nll"] = ref_nll
    mlflow.log_metrics(score_metrics(scored["summary"]) | stats, step=step)
    mlflow.set_tag("molting.rubric_version", scored["summary"]["rubric_version"])
    mlflow.log_table(data=pd.DataFrame(results_rows(scored)), artifact_file=RESULTS_TABLE)
    return scored
