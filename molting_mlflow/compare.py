"""`molting compare`: one row per run of an experiment, best score first."""
from __future__ import annotations

from .rubric import DIMENSIONS

METRICS = ["optimizer_steps", "final_loss", *DIMENSIONS, "score"]


def compare_runs(experiment: str, all_columns: bool = False):
    import mlflow
    import pandas as pd

    from .config import ConfigError

    if mlflow.get_experiment_by_name(experiment) is None:
        raise ConfigError(f"no experiment named '{experiment}' in {mlflow.get_tracking_uri()}; "
                          "pass --experiment <name> (or set MLFLOW_TRACKING_URI)")
    runs = mlflow.search_runs(experiment_names=[experiment], max_results=1000)
    if runs.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"run_id": runs["run_id"].str[:8], "status": runs["status"],
                        "stage": runs.get("tags.molting.stage"), "model": runs.get("tags.molting.model"),
                        "preflight": runs.get("tags.molting.preflight")})
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
    return out.sort_values("score", ascending=False, na_position="last").reset_index(drop=True)
