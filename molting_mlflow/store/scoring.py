"""Scores on a run: the rubric's results as metrics (D1–D5, score, ref_chrf, ref_nll), a table of
one row a question with its reasons and their codes, the rubric version as a tag, and MLflow's
evaluation view of the same answers (eval_view). Ground for the train, evaluate and rescore stages.
An experiment that holds scores gets the MLflow UI's saved view of its runs by score (ui_view).
"""
from __future__ import annotations

import json

import mlflow
import pandas as pd

from molting_mlflow.ground.rubric import DIMENSIONS, score_responses
from molting_mlflow.ground.tags import RUBRIC_VERSION_TAG
from molting_mlflow.store.eval_view import log_evaluation
from molting_mlflow.store.experiments import mark_experiment
from molting_mlflow.store.tracking import text_artifact
from molting_mlflow.store.ui_view import view_tag

RESULTS_TABLE = "eval_results.json"
REASONS_BY_CODE = "reasons_by_code"     # the table's column of [code, reason] pairs: what readers pick by code


def logged_results(run_id: str) -> list[dict] | None:
    """The rows of the run's eval_results.json (one a question: answer, points, reasons, codes), or None
    where it logged none (a reused trial, a run that never evaluated); any other store failure goes on up."""
    text = text_artifact(run_id, RESULTS_TABLE)
    if text is None:
        return None
    table = json.loads(text)
    return [dict(zip(table["columns"], row)) for row in table.get("data", [])]


def score_metrics(summary: dict) -> dict:
    """The run metrics of a rubric summary: D1–D5, score, and ref_chrf / ref_nll where present."""
    m = {d: summary[d] for d in DIMENSIONS} | {"score": summary["score"]}
    return m | {k: summary[k] for k in ("ref_chrf", "ref_nll") if summary.get(k) is not None}


def results_rows(scored: dict) -> list[dict]:
    """One row a question: the answer, each dimension, the reasons and their codes."""
    return [{"id": r["id"], "question": r["question"], "response": r["response"],
             "finish_reason": r["finish_reason"], **{d: r[d] for d in DIMENSIONS}, "score": r["score"],
             "ref_chrf": r.get("ref_chrf"), "reasons": "; ".join(r["reasons"]), "codes": " ".join(r["codes"]),
             REASONS_BY_CODE: [[c, t] for c, t in zip(r["codes"], r["reasons"])]}
            for r in scored["results"]]


def log_scores(records: list[dict], questions, persona, stats: dict, ref_nll: float | None = None,
               step: int = 0) -> dict:
    """Score generated answers with the rubric and log them to the active run: metrics (at `step`: a
    train run's last optimizer step, so ref_nll's curve ends where training did), the per-question
    table (eval_results.json), generation stats, the tag molting.rubric_version, and MLflow's
    evaluation view of the same answers (eval_view)."""
    scored = score_responses(questions, records, persona)
    if ref_nll is not None:
        scored["summary"]["ref_nll"] = ref_nll
    mlflow.log_metrics(score_metrics(scored["summary"]) | stats, step=step)
    mlflow.set_tag(RUBRIC_VERSION_TAG, scored["summary"]["rubric_version"])
    mlflow.log_table(data=pd.DataFrame(results_rows(scored)), artifact_file=RESULTS_TABLE)
    # the same answers as MLflow evaluation results; their traces are where a judge's and a person's readings go
    scored["trace_ids"] = log_evaluation(records, questions, scored["results"])
    mark_scores_view(mlflow.active_run().info.experiment_id)
    return scored


_viewed: set[tuple[str, str]] = set()    # (store URI, experiment id) this process has given the view already:
                                         # ids repeat across stores ("1" is every store's first experiment)


def mark_scores_view(experiment_id: str) -> None:
    """The experiment's saved view of the runs by score (ui_view.view_tag), unless it has one: once a
    process, when its first scores are logged (an experiment of pruned trials only has no score to show)."""
    key = (mlflow.get_tracking_uri(), experiment_id)
    if key not in _viewed:
        _viewed.add(key)
        mark_experiment(mlflow.get_experiment(experiment_id), dict([view_tag()]))
