"""Readings of an answer beside the rubric's, as MLflow assessments on that answer's trace: a person's
(source HUMAN: `molting label`, or the MLflow UI's "Add feedback" on a trace) and a model judge's
(source LLM_JUDGE, named `judge.<dimension>`). Each evaluation's answers are traces (eval_view), one a
question, found by the tag molting.question_id.

A person's assessment is named by the dimension it reads: `d1_identity` … (also `D1`, `d1` or the
dimension's title, `identity`), or `overall` for the whole score (0 to the rubric's maximum). Its value
is the points: a number, or a number as text (the UI's "String" type saves "1"); a yes/no is no points (the UI's
form starts on "Boolean" for a name new to the trace and for a dimension's "+": left so, it saves True). The
latest of one name and source on a trace counts (a corrected label replaces the old).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlflow
from mlflow.entities import AssessmentSource, AssessmentSourceType
from mlflow.tracking import MlflowClient

from molting_mlflow.ground.agreement import OVERALL
from molting_mlflow.ground.rubric import RUBRIC, short_name
from molting_mlflow.ground.tags import QUESTION_ID

JUDGE_PREFIX = "judge."       # a judge's assessment of dimension d is named judge.<d>


def human_dimension(name: str) -> str | None:
    """The dimension a person's assessment name reads (d1_identity for "D1", "d1", "identity",
    "human.d1_identity"), OVERALL for "overall"/"score"/"total", None for a name that reads none."""
    n = name.strip().lower().removeprefix("human.").removeprefix("human/")
    if n in (OVERALL, "score", "total"):
        return OVERALL
    for d in RUBRIC.dimensions:
        if n in (d.key, short_name(d.key).lower(), d.title.lower()):
            return d.key
    return None


def points(value) -> float | None:
    """An assessment's value as points, None where it holds none: True is no 1 (bool is an int in Python)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def max_points(dimension: str) -> float:
    return RUBRIC.max_score if dimension == OVERALL else RUBRIC.dimension(dimension).max_points


def question_traces(run_id: str) -> dict:
    """{question id: trace} of the answers a run logged (its evaluation's traces); the newest a question."""
    exp = MlflowClient().get_run(run_id).info.experiment_id
    traces = mlflow.search_traces(locations=[exp], run_id=run_id, return_type="list", flush=True)
    out: dict = {}
    for t in sorted(traces, key=lambda t: t.info.request_time or 0):
        qid = (t.info.tags or {}).get(QUESTION_ID)
        if qid is not None:
            out[qid] = t
    return out


@dataclass
class Readings:
    """One answer's readings: a person's and a judge's points by dimension (OVERALL too), with notes."""
    trace_id: str
    human: dict = field(default_factory=dict)
    judge: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def readings(run_id: str) -> dict[str, Readings]:
    """{question id: Readings} of a run's traces (the latest assessment of each name and source counts)."""
    out = {}
    for qid, trace in question_traces(run_id).items():
        r = Readings(trace.info.trace_id)
        for a in sorted(trace.info.assessments or [], key=lambda a: a.last_update_time_ms or a.create_time_ms or 0):
            if getattr(a, "valid", True) is False or (value := points(a.value)) is None:
                continue
            kind = a.source.source_type if a.source else None
            if kind == AssessmentSourceType.HUMAN and (dim := human_dimension(a.name)) is not None:
                r.human[dim] = value
                if a.rationale:
                    r.notes.append(a.rationale)
            elif kind == AssessmentSourceType.LLM_JUDGE and a.name.startswith(JUDGE_PREFIX):
                r.judge[a.name.removeprefix(JUDGE_PREFIX)] = value
        out[qid] = r
    return out


def log_human(trace_id: str, dimension: str, value: float, who: str, note: str = "") -> None:
    """A person's reading of one dimension (or OVERALL) of one answer."""
    mlflow.log_feedback(trace_id=trace_id, name=dimension, value=value, rationale=note or None,
                        source=AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=who))


def log_judge(trace_id: str, dimension: str, points: float | None, rationale: str, model: str,
              metadata: dict) -> None:
    """A judge's reading of one dimension of one answer; with no yes or no to any item, a Feedback that
    carries the error (the rationale holds the judge's words)."""
    source = AssessmentSource(source_type=AssessmentSourceType.LLM_JUDGE, source_id=model)
    if points is None:
        from mlflow.entities.assessment_error import AssessmentError

        mlflow.log_feedback(trace_id=trace_id, name=JUDGE_PREFIX + dimension, source=source, rationale=rationale,
                            metadata=metadata, error=AssessmentError(error_code="NO_ANSWER",
                                                                     error_message="no item came back yes or no"))
        return
    mlflow.log_feedback(trace_id=trace_id, name=JUDGE_PREFIX + dimension, value=points, rationale=rationale,
                        source=source, metadata=metadata)
