"""`molting compare`: one row per run of an experiment, best score first within each rubric version
(scores of two versions are not comparable: the newest version's runs come first, and the CLI
says so when more than one version is in the table).

By default the table is compact (run id, name, score, D1–D5, steps, final loss and the settings
that differ between the listed runs); `full=True` gives every column.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import mlflow
import pandas as pd

from molting_mlflow.ground.config import TrainConfig
from molting_mlflow.ground.rubric import DIMENSIONS, UNTAGGED_RUBRIC_VERSION, short_name
from molting_mlflow.ground.tags import (EVAL_LEAK_TAG, MODEL_TAG, PREFLIGHT_TAG, RUBRIC_VERSION_TAG, STAGE_TAG,
                                        TRIAL_STATE_TAG)
from molting_mlflow.store.experiments import experiments_to_search
from molting_mlflow.store.tracking import resolve_run_id

# The settings a compact table may show, where they differ: what the user sets (TrainConfig's
# fields), not where the run was logged; file paths as their file name.
COMPACT_SETTINGS = [f.name for f in fields(TrainConfig) if f.name != "experiment"]
PATH_SETTINGS = ("dataset", "chat_template", "persona")


def compare_runs(experiment: str | None = None, all_columns: bool = False, run_ids: tuple = (),
                 full: bool = False):
    """experiment: its runs; None: the runs of every experiment holding the project's runs (`Default`
    too, where `mlflow run` puts them without --experiment-name). run_ids (unique prefixes): those
    runs only. all_columns implies full."""
    runs, names = _runs(experiment, run_ids)
    if runs.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"run_id": runs["run_id"].str[:8], "name": runs.get("tags.mlflow.runName"),
                        "experiment": runs["experiment_id"].map(names)})
    if full or all_columns:
        _full_columns(out, runs, all_columns)
    else:
        _compact_columns(out, runs)
    # a scored run without the tag was scored before versions were recorded: v1.0
    tag = runs[f"tags.{RUBRIC_VERSION_TAG}"] if f"tags.{RUBRIC_VERSION_TAG}" in runs else [None] * len(runs)
    out["rubric"] = [None if pd.isna(score) else (v if isinstance(v, str) else UNTAGGED_RUBRIC_VERSION)
                     for score, v in zip(runs.get("metrics.score", [None] * len(runs)), tag)]
    return out.sort_values(["rubric", "score"], ascending=[False, False], na_position="last").reset_index(drop=True)


def _runs(experiment: str | None, run_ids: tuple):
    """The runs (a DataFrame of mlflow.search_runs) and {experiment id: name} of the experiments searched."""

    exps = experiments_to_search(experiment)
    if not exps:
        return pd.DataFrame(), {}
    flt = ""
    if run_ids:
        flt = "attributes.run_id IN (" + ", ".join(f"'{resolve_run_id(r)}'" for r in run_ids) + ")"
    runs = mlflow.search_runs(experiment_ids=[e.experiment_id for e in exps], filter_string=flt, max_results=1000)
    return runs, {e.experiment_id: e.name for e in exps}


def _metric(runs, m: str):
    """Metric m to 3 decimals; NaN (the table's "–") for every run where no run logged it (a store of score runs
    has no optimizer_steps)."""
    col = f"metrics.{m}"
    return runs[col].round(3) if col in runs else pd.Series(float("nan"), index=runs.index)


def _compact_columns(out, runs) -> None:
    """score, D1–D5, steps, loss, then each setting whose values differ between the runs that logged it."""
    status = _status(runs)
    if (status != "FINISHED").any():       # a run with no score says why: RUNNING, FAILED, KILLED or PRUNED
        out["status"] = status
    out["score"] = _metric(runs, "score")
    if f"tags.{EVAL_LEAK_TAG}" in runs and runs[f"tags.{EVAL_LEAK_TAG}"].notna().any():
        out["leak"] = runs[f"tags.{EVAL_LEAK_TAG}"].fillna("")    # "3/8" questions also in its training data
    for d in DIMENSIONS:
        out[short_name(d)] = _metric(runs, d)      # d1_identity → D1
    out["steps"] = _metric(runs, "optimizer_steps")
    out["loss"] = _metric(runs, "final_loss")
    for name in COMPACT_SETTINGS:
        col = f"params.train.{name}"
        if col not in runs:
            continue
        vals = runs[col].map(lambda v: _short(name, v))
        if vals.nunique(dropna=True) > 1:
            out[name] = vals


def _status(runs):
    """Each run's status; a trial the sweep pruned (KILLED on purpose) reads PRUNED."""
    if f"tags.{TRIAL_STATE_TAG}" not in runs:
        return runs["status"]
    return runs["status"].where(runs[f"tags.{TRIAL_STATE_TAG}"] != "PRUNED", "PRUNED")


def _short(name: str, value):
    """A setting's value as the compact table shows it: a path by its file name, a long text cut."""
    if not isinstance(value, str):
        return value
    if name in PATH_SETTINGS:
        return Path(value).name
    try:
        return f"{float(value):.3g}" if "." in value or "e" in value else value   # 0.0026251660632419286 → 0.00263
    except ValueError:
        return value if len(value) <= 24 else value[:23] + "…"


def _full_columns(out, runs, all_columns: bool) -> None:
    """Status, stage, model, pre-flight, the resolved train.* params (those that differ, or all), metrics."""
    out["status"] = _status(runs)
    for col, tag in (("stage", f"tags.{STAGE_TAG}"), ("model", f"tags.{MODEL_TAG}"),
                     ("preflight", f"tags.{PREFLIGHT_TAG}"), ("leak", f"tags.{EVAL_LEAK_TAG}")):
        out[col] = runs.get(tag)
    for m in ("score", *DIMENSIONS, "optimizer_steps", "final_loss", "ref_nll", "ref_chrf"):
        out[m] = _metric(runs, m)
    cfg_cols = [c for c in runs.columns if c.startswith("params.train.")
                and c not in ("params.train.dataset", "params.train.persona", "params.train.experiment")]
    for c in sorted(cfg_cols):
        vals = runs[c]
        if all_columns or vals.nunique(dropna=False) > 1:
            out[c.removeprefix("params.train.")] = vals


def rubric_versions(table) -> list[str]:
    """The rubric versions of the scored runs in a compare table."""
    return sorted(v for v in table.get("rubric", []).dropna().unique()) if len(table) else []
