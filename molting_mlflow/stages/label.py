"""`molting label --run-id R labels.jsonl`: a person's reading of a run's answers, logged as human
assessments on the answers' traces (MLflow's feedback API, source HUMAN), where `molting agreement` and
the MLflow UI find them beside the rubric's.

A labels file is JSON Lines, one answer a line: {"id": "q1", "d1_identity": 2, "d2_factual": 1, …,
"overall": 6.5, "note": "…", "labeler": "ana"}: the question id, any of the dimensions (also written D1,
d1 or by title) and/or `overall` (0 to the rubric's maximum), and optionally a note and who read it.
"""
from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from molting_mlflow.ground.errors import MoltingError, json_line, unreadable
from molting_mlflow.ground.tags import REUSED_RUN_TAG
from molting_mlflow.store.assessments import human_dimension, log_human, max_points, question_traces
from molting_mlflow.store.tracking import resolve_run_id

_FORM = ('expected {"id": "<question id>", "d1_identity": 0-2, …, "overall": 0-10 (optional), '
         '"note": "…" (optional), "labeler": "<who>" (optional)}')


class LabelError(MoltingError, ValueError):
    """A labels file that is malformed, or names answers the run does not have; the message says the fix."""


@dataclass(frozen=True)
class Label:
    id: str
    points: dict               # dimension (or OVERALL) → points
    note: str
    labeler: str


def read_labels(path: str | Path) -> list[Label]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError(f"{p}: file not found; pass a JSON Lines file of labels ({_FORM})") from None
    except OSError as e:
        raise LabelError(unreadable(p, e)) from None
    except UnicodeDecodeError as e:
        raise LabelError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    out = [_label(p, n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not out:
        raise LabelError(f"{p}: no labels; {_FORM}")
    return out


def _label(p: Path, lineno: int, line: str) -> Label:
    where = f"{p}: line {lineno}"
    raw = json_line(p, lineno, line, LabelError, _FORM, "a label is one flat object")
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise LabelError(f"{where}: {_FORM}")
    points = {}
    for key, value in raw.items():
        if key in ("id", "note", "labeler"):
            continue
        dim = human_dimension(key)
        if dim is None:
            raise LabelError(f"{where}: {key!r} is no dimension; {_FORM}")
        top = max_points(dim)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
            raise LabelError(f"{where}: {key} is {json.dumps(value)}; expected points from 0 to {top:g}")
        points[dim] = float(value)
    if not points:
        raise LabelError(f"{where}: no dimension or overall given; {_FORM}")
    return Label(raw["id"], points, str(raw.get("note", "")), str(raw.get("labeler", "")))


def label(run_id: str, path: str, log=print) -> int:
    """Log the labels of `path` on run `run_id`'s traces; the number of readings logged."""
    run_id = resolve_run_id(run_id)
    labels = read_labels(path)
    traces = question_traces(run_id)
    if not traces:
        reused = MlflowClient().get_run(run_id).data.tags.get(REUSED_RUN_TAG)
        raise LabelError(f"run {run_id[:8]} has no answers to label (no evaluation traces)"
                         + (f"; it reused run {reused[:8]}: label that one (molting label --run-id {reused[:8]} …)"
                            if reused else "; label a run that evaluated (train, evaluate or score --log)"))
    missing = sorted({lab.id for lab in labels} - set(traces))
    if missing:
        raise LabelError(f"{path}: question id(s) {missing[:8]} are no answer of run {run_id[:8]} (it answered "
                         f"{', '.join(sorted(traces))}); label the run that answered them")
    who_default = getpass.getuser()
    n = 0
    for lab in labels:
        for dim, value in lab.points.items():
            log_human(traces[lab.id].info.trace_id, dim, value, lab.labeler or who_default, lab.note)
            n += 1
    log(f"run {run_id[:8]}: {n} human readings of {len(labels)} answers logged (source HUMAN); compare them with "
        f"the rubric: molting agreement {run_id[:8]}")
    return n
