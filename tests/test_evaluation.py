"""Evaluation v1.1 end to end: the version goes with every score, `molting rescore` brings old runs to
the current rubric (the same scores a fresh evaluation gives), ref_nll and ref_chrf are logged, and
another persona, its language included, is data."""
import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import store_in, use_store
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli
from molting_mlflow.ground.paths import DEFAULT_PERSONA, DEFAULT_QUESTIONS
from molting_mlflow.ground.persona import PersonaError, load_persona
from molting_mlflow.ground.rubric import DIMENSIONS, RUBRIC_VERSION, score_response
from molting_mlflow.ground.questions import load_questions

ADA = Path(__file__).parent / "data" / "ada"


def test_reference_answers_state_the_facts_in_the_persona_voice():
    """Each question's reference answer, checked against persona.yaml by the rubric itself: it covers
    every fact group, claims nothing wrong, and loses no point but D1's 'name not mentioned'."""
    persona = load_persona(DEFAULT_PERSONA)
    for q in load_questions(DEFAULT_QUESTIONS):
        assert q.reference, q.id
        got = score_response(q, q.reference, "stop", persona)
        assert set(got["codes"]) <= {"d1.no_name"}, (q.id, got["reasons"])


def test_an_english_persona_is_scored_end_to_end_by_molting_score():
    r = CliRunner().invoke(cli, ["score", "--questions", str(ADA / "questions.json"),
                                 "--responses", str(ADA / "responses.jsonl"), "--persona", str(ADA / "persona.yaml")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    who, where = out["results"]
    assert who["score"] == 10 and who["d3_voice"] == 2
    assert where["d3_voice"] == 0 and "d3.not_language" in where["codes"]   # Portuguese is not Ada's language
    assert out["summary"]["rubric_version"] == RUBRIC_VERSION and out["summary"]["ref_chrf"] > 0


@pytest.mark.parametrize("line,msg", [("", "missing field 'language' (its ISO 639-1 code"),
                                      ("language: xx\n", "field 'language' is 'xx', and no language file describes it (known: en, pt); put xx.txt")])
def test_persona_language_is_named_and_known(tmp_path, line, msg):
    text = (ADA / "persona.yaml").read_text(encoding="utf-8").replace("language: en\n", line)
    card = tmp_path / "p.yaml"
    card.write_text(text, encoding="utf-8")
    with pytest.raises(PersonaError, match=re.escape(msg)):
        load_persona(card)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny-random train run (evaluated) and its standalone evaluation, in one store."""
    from molting_mlflow.ground.config import EvalConfig, TrainConfig
    from molting_mlflow.stages.evaluate import evaluate
    from molting_mlflow.stages.train import train

    d = tmp_path_factory.mktemp("ev")
    with store_in(d) as uri:
        run = train(TrainConfig(model="tiny-random", epochs=2, min_steps=0, eval_max_new_tokens=12), log=lambda *a: None)
        evaluate(EvalConfig(run_id=run.run_id, max_new_tokens=12), log=lambda *a: None)
    return run.run_id, uri


def test_every_scored_run_records_the_rubric_version_ref_nll_and_ref_chrf(trained):
    run_id, uri = trained
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert len(runs) == 2
    for r in runs:
        assert r.data.tags["molting.rubric_version"] == RUBRIC_VERSION
        assert r.data.metrics["ref_nll"] > 0 and 0 <= r.data.metrics["ref_chrf"] <= 100
    # the train run: ref_nll at each epoch's end (10 steps an epoch) and at the evaluation after the last
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "ref_nll")]
    assert [s for s, _ in history] == [10, 20, 20] and history[1][1] == pytest.approx(history[2][1], rel=1e-4)
    ev = next(r for r in runs if r.info.run_id != run_id)
    assert ev.data.metrics["ref_nll"] == pytest.approx(history[-1][1], rel=1e-4)  # same adapter, same numbers


def _downgrade_to_v1_0(client, run_id):
    """Make a run look as a v1.0 run did: a table without codes, no version tag, other numbers."""
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/eval_results.json"))
    df = pd.DataFrame(table["data"], columns=table["columns"]).drop(columns=["codes", "ref_chrf"])
    client.log_text(run_id, df.to_json(orient="split", index=False), "eval_results.json")
    client.delete_tag(run_id, "molting.rubric_version")
    for d in (*DIMENSIONS, "score"):
        client.log_metric(run_id, d, 9.99, step=20)


def test_rescore_brings_v1_0_runs_to_the_current_rubric_with_the_fresh_scores(trained, monkeypatch):
    run_id, uri = trained
    use_store(monkeypatch, uri)
    client = MlflowClient()
    fresh = client.get_run(run_id)
    _downgrade_to_v1_0(client, run_id)
    before = client.get_run(run_id)
    assert before.data.metrics["score"] == 9.99 and "molting.rubric_version" not in before.data.tags

    r = CliRunner().invoke(cli, ["diagnose", run_id])
    assert r.exit_code == 2 and f"molting rescore {run_id}" in r.output   # codes are needed first
    r = CliRunner().invoke(cli, ["rescore", run_id])
    assert r.exit_code == 0 and f"rubric v1.0 9.99 → v{RUBRIC_VERSION}" in r.output, r.output

    after = client.get_run(run_id)
    for k in (*DIMENSIONS, "score", "ref_chrf"):
        assert after.data.metrics[k] == pytest.approx(fresh.data.metrics[k]), k
    assert after.data.tags["molting.rubric_version"] == RUBRIC_VERSION and after.data.tags["molting.rescored_from"] == "1.0"
    assert after.data.params == fresh.data.params and after.info.status == fresh.info.status == "FINISHED"
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/eval_results.json"))
    assert "codes" in table["columns"] and len(table["data"]) == 8          # replaced, not appended to
    assert CliRunner().invoke(cli, ["diagnose", run_id]).exit_code == 0


def test_rescore_skips_a_run_without_answers_in_one_line(trained, monkeypatch):
    run_id, uri = trained
    use_store(monkeypatch, uri)
    with mlflow.start_run(experiment_id=MlflowClient().get_run(run_id).info.experiment_id) as bare:
        mlflow.log_metric("score", 1.0)
    r = CliRunner().invoke(cli, ["rescore", bare.info.run_id])
    assert r.exit_code == 1 and r.output.strip() == f"{bare.info.run_id[:8]}: skipped: no logged answers (eval_results.json)"
    assert CliRunner().invoke(cli, ["rescore"]).exit_code == 2
    MlflowClient().delete_run(bare.info.run_id)


def test_compare_says_when_rubric_versions_are_mixed(trained, monkeypatch):
    run_id, uri = trained
    use_store(monkeypatch, uri)
    client = MlflowClient()
    _downgrade_to_v1_0(client, run_id)
    r = CliRunner().invoke(cli, ["compare"])
    assert r.exit_code == 0 and f"rubric versions 1.0, {RUBRIC_VERSION}" in r.output
    CliRunner().invoke(cli, ["rescore", "--experiment", "molting"])
    r = CliRunner().invoke(cli, ["compare"])
    assert "rubric versions" not in r.output


def test_a_v1_1_run_reads_as_v1_1_and_rescores_to_the_current_version(trained, monkeypatch):
    """v1.2 moved D3 on 6 of the fixed corpus's 456 answers (tests/test_rubric_snapshot.py): a run tagged 1.1
    is compared as 1.1 and rescore brings it over, saying from which version."""
    run_id, uri = trained
    use_store(monkeypatch, uri)
    client = MlflowClient()
    client.set_tag(run_id, "molting.rubric_version", "1.1")
    r = CliRunner().invoke(cli, ["compare", "--full", run_id])
    assert r.exit_code == 0 and r.output.splitlines()[1].split()[-1] == "1.1", r.output     # the rubric column
    r = CliRunner().invoke(cli, ["rescore", run_id])
    assert r.exit_code == 0 and "rubric v1.1 " in r.output and f"→ v{RUBRIC_VERSION} " in r.output, r.output
    tags = client.get_run(run_id).data.tags
    assert tags["molting.rubric_version"] == RUBRIC_VERSION != "1.1" and tags["molting.rescored_from"] == "1.1"
