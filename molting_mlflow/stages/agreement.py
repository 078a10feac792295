"""`molting agreement [RUN_IDS…]`: the rubric's (and a judge's, where one read the answers) scores beside a
person's, for every answer a person labelled: per dimension and overall, n, Spearman, mean |Δ| and the
signed bias (score − human), and the five answers they disagree on most.

Each run gets its own numbers as metrics (`agreement.rubric.mean_abs`, `agreement.rubric.spearman`,
`agreement.rubric.bias`, `agreement.rubric.n`, `agreement.rubric.<dimension>.…`, `agreement.judge.…`) and
the table `agreement.json`; the report printed pools the runs given. Overall is the rubric's score against
the person's `overall` where they gave one, else the sum of their five dimensions where they gave all.
"""
from __future__ import annotations

import json

import mlflow
from mlflow.tracking import MlflowClient

from molting_mlflow.store.experiments import experiments_to_search
from molting_mlflow.store.labelled import HOW_TO_LABEL, SCORERS, Row, agreement_report, measure, rows_of
from molting_mlflow.store.tracking import resolve_run_id

AGREEMENT_TABLE = "agreement.json"


def log_on_run(run_id: str, rows: list[Row]) -> dict:
    """The run's own agreement as metrics and the table agreement.json; the metrics logged."""
    metrics, table = {}, {}
    for scorer in SCORERS:
        found = measure(rows, scorer)
        for a in found:
            metrics |= a.as_metrics(f"agreement.{scorer}")
        table[scorer] = [a.__dict__ for a in found]
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    client.log_text(run_id, json.dumps({"answers": [r.__dict__ for r in rows], **table}, ensure_ascii=False, indent=1),
                    AGREEMENT_TABLE)
    return metrics


def runs_with_labels(run_ids: tuple, experiment: str | None) -> list[str]:
    """The runs named, or every scored run of the experiment(s) (all the project's, with none named)."""
    if run_ids:
        return [resolve_run_id(r) for r in run_ids]
    exps = [e.experiment_id for e in experiments_to_search(experiment)]
    if not exps:
        return []
    return [r.info.run_id for r in mlflow.search_runs(exps, filter_string="metrics.score >= 0", output_format="list",
                                                      max_results=5000)]


def agreement(run_ids: tuple = (), experiment: str | None = None, log=print) -> dict:
    """Measure, log on each run, and print the pooled report; {scorer: [Agreement]} of the pooled rows."""
    rows: list[Row] = []
    for run_id in runs_with_labels(run_ids, experiment):
        mine = rows_of(run_id)
        if mine:
            log_on_run(run_id, mine)
            rows += mine
    if not rows:
        log(f"no human labels yet on {'these runs' if run_ids else 'the scored runs'}: {HOW_TO_LABEL}")
        return {}
    pooled = {s: measure(rows, s) for s in SCORERS}
    log(agreement_report(rows, pooled))
    return pooled
