"""The rubric as MLflow's GenAI evaluation (eval_view), system metrics on stage runs, and offline
hygiene, checked through MLflow's APIs on a SQLite store (tests/test_ui.py checks the same through a
tracking server, in a browser)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from molting_mlflow.ground.paths import DEFAULT_QUESTIONS
from molting_mlflow.ground.rubric import DIMENSIONS, RUBRIC_VERSION
from molting_mlflow.ground.questions import load_questions

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model="tiny-random", epochs=1, min_steps=0, eval_max_new_tokens=16)


def run_traces(run_id: str) -> list:
    exp = MlflowClient().get_run(run_id).info.experiment_id
    return mlflow.search_traces(locations=[exp], run_id=run_id, return_type="list")


def logged_table(run_id: str) -> dict[str, dict]:
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/eval_results.json"))
    return {row["id"]: row for row in (dict(zip(table["columns"], r)) for r in table["data"])}


def test_a_train_run_carries_the_rubric_as_evaluation_results(monkeypatch):
    """Each question a trace (question in, answer out, the generation's prompt and timing), each
    dimension a feedback whose value and rationale are the rubric's, equal to eval_results.json; the
    run keeps its metrics. Two runs with one seed keep separate traces."""
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages.train import train

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")   # not what this test is about
    first = train(TrainConfig(**TINY), log=lambda *a: None)
    second = train(TrainConfig(**TINY), log=lambda *a: None)
    run = MlflowClient().get_run(first.run_id)
    assert {*DIMENSIONS, "score", "ref_nll", "ref_chrf"} <= set(run.data.metrics)
    assert run.data.tags["molting.eval_view"] == f"8 traces, rubric v{RUBRIC_VERSION}"
    for d in DIMENSIONS:   # MLflow's own aggregate of the feedback is the run's metric
        assert run.data.metrics[f"{d}/mean"] == pytest.approx(run.data.metrics[d])
    rows = logged_table(first.run_id)
    references = {q.id: q.reference for q in load_questions(DEFAULT_QUESTIONS)}
    traces = run_traces(first.run_id)
    assert len(traces) == 8
    for t in traces:
        root = next(s for s in t.data.spans if s.parent_id is None)
        qid = root.attributes["molting.question_id"]
        row = rows.pop(qid)
        assert root.inputs == {"question": row["question"]} and root.outputs == row["response"]
        assert root.attributes["molting.finish_reason"] == row["finish_reason"]
        assert row["question"] in root.attributes["prompt"] and root.attributes["max_new_tokens"] == 16
        assert "replayed" in root.attributes["molting.trace"] and t.info.execution_duration > 0
        feedback = {a.name: a for a in t.info.assessments if a.feedback is not None}
        assert set(feedback) == set(DIMENSIONS)
        for d in DIMENSIONS:
            fb = feedback[d]
            assert fb.feedback.value == row[d] and fb.metadata["rubric_version"] == RUBRIC_VERSION
            assert set(fb.metadata["codes"].split()) <= set(row["codes"].split())
        # every reason the table logged reaches the UI under some dimension (which one: the test below)
        given = {r for d in DIMENSIONS for r in feedback[d].rationale.split("; ")} - {"full points"}
        assert given == (set(row["reasons"].split("; ")) if row["codes"] else set())
        expectation = {a.name: a for a in t.info.assessments if a.expectation is not None}
        assert expectation["reference"].expectation.value == references[qid]
    assert not rows
    assert not {t.info.trace_id for t in traces} & {t.info.trace_id for t in run_traces(second.run_id)}


def test_each_dimension_shows_the_reasons_of_its_own_codes():
    """Hand-written: a reason goes to the dimension its code names (`d1.` → d1_identity), `empty` to
    every one, and a dimension without a reason says "full points". Fails when eval_view.dimension_feedback
    picks codes otherwise (its prefix `d1.` → `d`, or `or c == "empty"` dropped)."""
    from molting_mlflow.store.eval_view import dimension_feedback

    result = {"d1_identity": 1, "d2_factual": 0, "d3_voice": 2, "d4_cleanliness": 2, "d5_quality": 0,
              "codes": ["d1.no_name", "d2.facts_missed", "d5.length_limit", "d5.repetition"],
              "reasons": ["D1: name missing", "D2: 0/2 facts", "D5: hit the limit", "D5: repeats itself"]}
    got = {d: dimension_feedback(result, d) for d in DIMENSIONS}
    assert {d: (f.value, f.rationale, f.metadata["codes"]) for d, f in got.items()} == {
        "d1_identity": (1, "D1: name missing", "d1.no_name"),
        "d2_factual": (0, "D2: 0/2 facts", "d2.facts_missed"),
        "d3_voice": (2, "full points", ""),
        "d4_cleanliness": (2, "full points", ""),
        "d5_quality": (0, "D5: hit the limit; D5: repeats itself", "d5.length_limit d5.repetition")}
    empty = {**{d: 0 for d in DIMENSIONS}, "codes": ["empty"], "reasons": ["empty response"]}
    assert {dimension_feedback(empty, d).rationale for d in DIMENSIONS} == {"empty response"}


def test_the_evaluate_stage_logs_it_too_and_a_failing_view_keeps_the_scores(monkeypatch, capsys):
    from molting_mlflow.ground.config import EvalConfig
    from molting_mlflow.stages.evaluate import evaluate

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    evaluate(EvalConfig(model="tiny-random", max_new_tokens=8), log=lambda *a: None)
    (ok,) = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    assert len(run_traces(ok.info.run_id)) == 8

    def offline_failure(*a, **kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(mlflow.genai, "evaluate", offline_failure)
    evaluate(EvalConfig(model="tiny-random", max_new_tokens=8), log=lambda *a: None)
    bad = next(r for r in mlflow.search_runs(experiment_names=["molting"], output_format="list")
               if r.info.run_id != ok.info.run_id)
    assert bad.info.status == "FINISHED" and "score" in bad.data.metrics
    assert bad.data.tags["molting.eval_view"] == "failed: ConnectionError: no route to host"
    assert len(logged_table(bad.info.run_id)) == 8
    assert "MLflow's evaluation view was not logged (ConnectionError: no route to host)" in capsys.readouterr().err


def test_stage_runs_log_system_metrics_unless_turned_off(monkeypatch):
    from molting_mlflow.ground.config import EvalConfig
    from molting_mlflow.stages.evaluate import evaluate

    # MLflow logs a sample only once a whole interval has passed with the run still RUNNING: a tiny-random
    # evaluation's run lasts 1.7 s on a quiet 2-core machine, and CI once logged none at 0.5 s
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    evaluate(EvalConfig(model="tiny-random", max_new_tokens=32), log=lambda *a: None)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    evaluate(EvalConfig(model="tiny-random", max_new_tokens=32), log=lambda *a: None)
    on, off = sorted(mlflow.search_runs(experiment_names=["molting"], output_format="list"),
                     key=lambda r: r.info.start_time)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(on.data.metrics)
    assert not [k for k in off.data.metrics if k.startswith("system/")]


def _guarded(tmp_path, name, *args, **env):
    """A molting command in a fresh process, network refused and recorded, with no CI or test marker in
    its environment (MLflow turns its telemetry off by itself where it sees one)."""
    markers = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "HF_HUB_OFFLINE", "MLFLOW_DISABLE_TELEMETRY",
               "DO_NOT_TRACK"}
    clean = {k: v for k, v in os.environ.items() if k not in markers}
    out = tmp_path / f"{name}.json"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "net_guard.py"), str(out), *args], cwd=tmp_path,
                       env={**clean, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def test_nothing_in_a_run_reaches_the_internet(tmp_path):
    """A tiny-random train run (training, evaluation, MLflow's evaluation view, system metrics) asks
    for no host but this one. The guard does see MLflow's telemetry when it is switched on."""
    train = ["train", "--model", "tiny-random", "--epochs", "1", "--min-steps", "0", "--eval-max-new-tokens", "4"]
    assert _guarded(tmp_path, "default", *train) == []
    assert any("mlflow-telemetry" in a for a in _guarded(tmp_path, "telemetry_on", *train,
                                                         MLFLOW_DISABLE_TELEMETRY="false"))
