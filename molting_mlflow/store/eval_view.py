"""The rubric as MLflow's own GenAI evaluation, so the MLflow UI shows each question, its answer and
each dimension's points with the rubric's reason, per run and side by side for two runs.

`log_evaluation` runs `mlflow.genai.evaluate` on the active run (a train or evaluate run) with one
trace per question and the five rubric dimensions as scorers. Each scorer returns the dimension's
points (0–2) as the value and the rubric's reasons for that dimension (chosen by reason code,
`d1.` … `d5.`, never by wording) as the rationale, with the codes and the rubric version as
metadata. The scorers read the rubric's results that `scoring.log_scores` computed for the run's
metrics (the rubric runs once per answer), so the points in the UI are the points behind the run's
`d1_identity` … `score` metrics; MLflow adds its own aggregates (`d1_identity/mean` …) beside them.
Each trace is also tagged with all of the answer's reasons (`molting.reasons`): the Traces tab shows them
as a column once it is ticked (Columns → Tags), without opening each trace's assessments.

How generation is traced, and why this way: the answers are generated before they are scored, in
batches (`generation.generate`: one `model.generate` call answers up to 8 questions), and a
per-question trace cannot be cut out of one batched call. So each question's trace is written from
what that generation recorded, once it is done: the root span `generate` (type CHAT_MODEL) has the
question as its input and the answer as its output, the exact prompt text the model was given,
`max_new_tokens`, `finish_reason`, `new_tokens` and the batch as attributes, and the batch's real
start and end time (the questions of one batch share them: the span lasts as long as the batch).
The attribute `molting.trace` says this. Nothing is generated again and no time is made up; a record
without timing (answers scored from elsewhere) gets a zero-length span and says so.

Everything here works offline, on a SQLite store and on a tracking server (no judge model, no
network: the scorers are code). If MLflow's evaluation fails anyway (an old server without trace
support, say), the run keeps its metrics and eval_results.json; the error goes to the tag
`molting.eval_view` and one line on stderr, and the stage goes on.
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import sys
import time
from contextlib import contextmanager

import mlflow
import pandas as pd
from mlflow.entities import Feedback, SpanType
from mlflow.genai.scorers import scorer

from molting_mlflow.ground.errors import first_line
from molting_mlflow.ground.rubric import DIMENSIONS, RUBRIC_VERSION, code_prefix
from molting_mlflow.ground.tags import QUESTION_ID, REASONS

# Traces are written when their span ends, not by MLflow's background queue: the queue's consumer
# waits up to 1 s for work before it sees a flush, and each flush (the read-back below, the
# evaluation's own, the one at process exit) paid that wait. Read when the first span of the process
# opens (this module is imported before any), and left alone where the user set it.
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")

TRACE_NOTE = ("replayed: the answer was generated before scoring, in a batched model.generate call; "
              "start and end are that batch's")
STATUS_TAG = "molting.eval_view"


def dimension_feedback(result: dict, dim: str):
    """One dimension of a rubric result as MLflow Feedback: the points, and the reasons whose code
    belongs to this dimension (`d1.` for d1_identity; `empty` costs every dimension)."""
    prefix = code_prefix(dim)
    lost = [(c, r) for c, r in zip(result["codes"], result["reasons"]) if c.startswith(prefix) or c == "empty"]
    return Feedback(value=result[dim], rationale="; ".join(r for _, r in lost) or "full points",
                    metadata={"codes": " ".join(c for c, _ in lost), "rubric_version": RUBRIC_VERSION})


def _root(trace):
    return next(s for s in trace.data.spans if s.parent_id is None)


def rubric_scorers(results: list[dict]) -> list:
    """Five scorers, one a dimension, over the rubric's `results` (rubric.score_responses: one per
    answer, with its id): each finds its answer's result by the question id on the trace's root span."""
    by_id = {r["id"]: r for r in results}

    def make(dim):
        def points(trace):
            return dimension_feedback(by_id[_root(trace).attributes[QUESTION_ID]], dim)
        return scorer(points, name=dim)

    return [make(d) for d in DIMENSIONS]


def reasons_text(result: dict) -> str:
    """All of a rubric result's reasons, as eval_results.json's column has them ("D1: …; D5(a): …")."""
    return "; ".join(result["reasons"]) or "full points"


def generation_traces(records: list[dict], questions, results: list[dict]) -> list:
    """One trace per answer, replaying its generation (see the module docstring), tagged with its question
    id and the rubric's reasons (`results`: rubric.score_responses's, one per answer)."""
    by_id = {q.id: q for q in questions}
    reasons = {r["id"]: reasons_text(r) for r in results}
    traces = []
    for rec in records:
        q = by_id[rec["id"]]
        now = time.time_ns()
        start, end = rec.get("started_ns", now), rec.get("ended_ns", now)
        attrs = {QUESTION_ID: q.id, "molting.finish_reason": rec.get("finish_reason"),
                 "molting.trace": TRACE_NOTE if "started_ns" in rec else "no generation timing recorded",
                 **{k: rec[k] for k in ("prompt", "max_new_tokens", "new_tokens", "batch") if k in rec}}
        span = mlflow.start_span_no_context(name="generate", span_type=SpanType.CHAT_MODEL,
                                            inputs={"question": q.question}, attributes=attrs,
                                            tags={QUESTION_ID: q.id, REASONS: reasons[q.id]},
                                            start_time_ns=start)
        span.end(outputs=rec["response"], end_time_ns=max(end, start))
        traces.append(span.trace_id)
    # flush=True: with asynchronous trace logging switched back on, wait for each to reach the store
    return [mlflow.get_trace(t, flush=True) for t in traces]


def log_evaluation(records: list[dict], questions, results: list[dict]) -> dict[str, str]:
    """Log the rubric's `results` for the generation `records` through mlflow.genai.evaluate on the
    active run; {question id: trace id} of the answers' traces (where a judge's or a person's readings
    go), or {} when MLflow's evaluation failed (the reason is then in the tag molting.eval_view)."""
    run = mlflow.active_run()
    try:
        with _unseeded_ids():
            traces = generation_traces(records, questions, results)
            by_id = {q.id: q for q in questions}
            data = pd.DataFrame({"trace": traces,
                                 "expectations": [{"reference": by_id[r["id"]].reference} if by_id[r["id"]].reference
                                                  else {} for r in records]})
            _quiet(lambda: mlflow.genai.evaluate(data=data, scorers=rubric_scorers(results)))
    except Exception as e:
        why = first_line(e, 400)
        mlflow.MlflowClient().set_tag(run.info.run_id, STATUS_TAG, f"failed: {type(e).__name__}: {why}")
        print(f"molting: warning: MLflow's evaluation view was not logged ({type(e).__name__}: {why}); "
              "the run's scores and eval_results.json are", file=sys.stderr, flush=True)
        return {}
    mlflow.MlflowClient().set_tag(run.info.run_id, STATUS_TAG, f"{len(traces)} traces, rubric v{RUBRIC_VERSION}")
    return {r["id"]: t.info.trace_id for r, t in zip(records, traces)}


@contextmanager
def _unseeded_ids():
    """Trace and span ids come from Python's `random` (OpenTelemetry's RandomIdGenerator), which
    training seeded: two runs with one seed would write traces with the same ids into the store.
    Draw them from fresh entropy, and put the seeded stream back afterwards so the run's own
    randomness is as it was."""
    state = random.getstate()
    random.seed()
    try:
        yield
    finally:
        random.setstate(state)


def _quiet(fn):
    """MLflow's evaluation prints a progress bar and a banner ("Evaluation completed … open the Traces
    tab"): on a train run's console that is noise between the rubric's own lines."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn()
