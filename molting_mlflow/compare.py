"""`molting compare`: one row per run of an experiment, best score first within each rubric version
(scores of two versions are not comparable: the newest version's runs come first, and the CLI
says so when more than one version is in the table)."""
from __future__ import annotations

from .rubric import DIMENSIONS, UNTAGGED_RUBRIC_VERSION

METRICS = ["optimizer_steps", "final_loss", "ref_nll", "ref_chrf", *DIMENSIONS, "score"]


def compare_runs(experiment: str | None = None, all_columns: bool = False):
    """experiment: its runs; None: the runs of every experiment holding the project's runs (`Default`
    too, where `mlflow run` puts them without --experiment-name), with an `experiment` column."""
    import mlflow
    import pandas as pd

    from .tracking import experiments_to_search

    exps = experiments_to_search(experiment)
    if not exps:
        return pd.DataFrame()
    runs = mlflow.search_runs(experiment_ids=[e.experiment_id for e in exps], max_results=1000)
    if runs.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"run_id": runs["run_id"].str[:8], "status": runs["status"],
                        "stage": runs.get("tags.molting.stage"), "model": runs.get("tags.molting.model"),
                        "preflight": runs.get("tags.molting.preflight")})
    if experiment is None:      # looked in several: say where each run is
        names = {e.experiment_id: e.name for e in exps}
        out.insert(1, "experiment", runs["experiment_id"].map(names))
    # config columns: the resolved train.* params, only those that differ between runs
    cfg_cols = [c for c in runs.columns if c.startswith("params.train.")
                and c not in ("params.train.dataset", "params.train.persona", "params.train.experiment")]
    for c in sorted(cfg_cols):
        vals = runs[c]
        if all_columns or vals.nunique(dropna=False) > 1:
            out[c.removeprefix("params.train.")] = vals
    for m in METRICS:
        col = f"metrics.{m}"
        out[m] = runs[col].round(3) if col in runs else None
    # a scored run without the tag was scored before versions were recorded
    tag = runs["tags.molting.rubric_version"] if "tags.molting.rubric_version" in runs else [None] * len(runs)
    out["rubric"] = [None if pd.isna(score) else (v if isinstance(v, str) else UNTAGGED_RUBRIC_VERSION)
                     for score, v in zip(out["score"], tag)]
    return out.sort_values(["rubric", "score"], ascending=[False, False], na_position="last").reset_index(drop=True)


def rubric_versions(table) -> list[str]:
    """The rubric versions of the scored runs in a compare table."""
    return sorted(v for v in table.get("rubric", []).dropna().unique()) if len(table) else []
