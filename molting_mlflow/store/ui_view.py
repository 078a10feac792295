"""What the MLflow UI opens on for the project's experiments: a saved view of the runs table with
the rubric's columns, best score first.

MLflow 3.17's runs table shows no metric column until the user picks one, and remembers picks per
browser. Its "Views" menu lists saved views, which MLflow stores as experiment tags
(`mlflow.sharedViewState.<id>`: {name, createdAt, updatedAt, state}, `state` the table's JSON state:
the same format the UI writes, uncompressed, which it reads as well). The project writes one such
view on each experiment that holds its scored runs, once (a view the user edited or deleted is theirs).

Open it from Views → "molting: runs by score", or directly: `runs_url(base, experiment_id)`. A run's
answers (its Traces tab), or one answer's trace opened: `traces_url(base, experiment_id, run_id[, trace_id])`.
The browser test (tests/test_ui.py) checks they render.
"""
from __future__ import annotations

import json
import time

import mlflow

from molting_mlflow.ground.rubric import DIMENSIONS
from molting_mlflow.ground.sweep_config import SEARCH_SPACE

VIEW_ID = "molting-runs-by-score"
VIEW_NAME = "molting: runs by score"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
SHARE_PARAM = "viewStateShareKey"          # the URL parameter that opens a saved view
ML_PAGES = "workflowType=machine_learning"  # the sidebar on "Model training" (see runs_url)

# Widths in px. MLflow's assistant panel opens itself on a first visit; in a 1400-px window beside it the
# runs table is 788 px wide: 73 for the checkbox column, then Run Name and Created, which MLflow pins (190
# and 150 px), leave 375 px, where the score and D1–D5 at MLflow's 100 px each stopped after D1. Narrower
# pinned columns leave 788 − 73 − 140 − 120 = 455 px; the score columns share 420 of them, the rest is
# room for the table's vertical scrollbar.
NAME_COLUMN = "attributes.`Run Name`"
DATE_COLUMN = "runDateAndNestInfo"          # "Created": MLflow's id for the column
PINNED_WIDTHS = {NAME_COLUMN: 140, DATE_COLUMN: 120}
SCORE_COLUMNS_PX = 420
MIN_SCORE_COLUMN_PX = 56                    # "7.625" and a header's first letters


def score_columns() -> list[str]:
    return [f"metrics.`{m}`" for m in ("score", *DIMENSIONS)]


def view_columns() -> list[str]:
    """The score and each rubric dimension first (the narrow columns a user reads), then Models (registered
    versions), the training numbers, and the settings a sweep searches (sweep_config.SEARCH_SPACE): read
    when the view is written, so a row added to either table is a column."""
    params = [f"train.{f}" for row in SEARCH_SPACE for f in row.config_fields]
    return [*score_columns(), "attributes.`Models`", *(f"metrics.`{m}`" for m in ("optimizer_steps", "final_loss")),
            *(f"params.`{p}`" for p in params)]


def column_widths() -> dict[str, int]:
    """MLflow's columnWidths (column id → px; the UI writes the same when a column is resized)."""
    scores = score_columns()
    return {**PINNED_WIDTHS, **dict.fromkeys(scores, max(MIN_SCORE_COLUMN_PX, SCORE_COLUMNS_PX // len(scores)))}


def view_state() -> dict:
    """The runs table in the view's columns, score first."""
    columns = view_columns()
    return {"searchFilter": "", "orderByKey": "metrics.`score`", "orderByAsc": False, "startTime": "ALL",
            "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": columns, "columnOrder": [NAME_COLUMN, DATE_COLUMN, *columns],
            "columnWidths": column_widths(), "runsHiddenMode": "FIRST_10_RUNS", "viewMaximized": False,
            "runListHidden": False, "isAccordionReordered": False, "useGroupedValuesInCharts": True,
            "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
            "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""}}


def view_tag() -> tuple[str, str]:
    now = int(time.time() * 1000)
    return VIEW_TAG, json.dumps({"name": VIEW_NAME, "createdAt": now, "updatedAt": now,
                                 "state": json.dumps(view_state())})


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the saved view, with the sidebar on "Model training" (MLflow
    3.17 picks the page an experiment opens on from that switch, not from the experiment's kind)."""
    return f"{base}/#/experiments/{experiment_id}/runs?{SHARE_PARAM}={VIEW_ID}&{ML_PAGES}"


UI_DEFAULT = "http://127.0.0.1:5000"        # where `mlflow ui` serves a local store


def ui_base(tracking_uri: str | None = None) -> str:
    """The MLflow UI of the store: the tracking server itself, or `mlflow ui` on a local store."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT


def traces_url(base: str, experiment_id: str, run_id: str, trace_id: str | None = None) -> str:
    """The run's Traces tab (one row an answer); with a trace id, that answer's trace opened on it (MLflow's
    `selectedEvaluationId`, the parameter the UI itself puts in the address when a row is clicked). The
    rubric's reasons there are under Assess: MLflow opens the trace with its assessments folded."""
    url = f"{base}/#/experiments/{experiment_id}/runs/{run_id}/traces?{ML_PAGES}"
    return f"{url}&selectedEvaluationId={trace_id}" if trace_id else url
