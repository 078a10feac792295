"""Runs with known faults (tiny-random, so they stay fast) each produce the matching finding;
a clean run produces none of them. Every finding carries evidence from the logged data."""
from dataclasses import replace

import mlflow
import pytest
from click.testing import CliRunner
from helpers import use_store
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli
from molting_mlflow.ground.config import TrainConfig
from molting_mlflow.ground.paths import DATA_DIR
from molting_mlflow.stages.causes import findings
from molting_mlflow.stages.diagnose import load_run, report
from molting_mlflow.stages.train import train

GPT2 = str(DATA_DIR / "templates" / "gpt2_separators.jinja")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import os

    import mlflow

    d = tmp_path_factory.mktemp("diag")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    os.chdir(d)
    try:
        quiet = dict(log=lambda *a: None)
        # the user's three mistakes + an answer limit too short to finish
        faulty = train(TrainConfig(model="tiny-random", epochs=5, grad_accum=8, batch_size=1, system_prompt="none",
                                   chat_template=GPT2, preflight="warn", eval_max_new_tokens=3), **quiet)
        clean = train(TrainConfig(model="tiny-random", eval_max_new_tokens=64), **quiet)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI") if old[0] is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old[0])
        os.chdir(old[1])
    return uri, faulty.run_id, clean.run_id


@pytest.fixture
def store(runs, monkeypatch):
    use_store(monkeypatch, runs[0])
    return runs


def causes(run_id):
    return {f.cause: f for f in findings(load_run(run_id))}


def test_faulty_run_names_each_cause_with_evidence(store):
    _, faulty, _ = store
    c = causes(faulty)
    steps = c["too few optimizer steps"]
    assert "= 10 steps an epoch × 5 epochs = 50 optimizer steps < minimum 150" in steps.evidence[0]
    # pre-flight's own advice (config.step_fixes): each fix reaches the minimum
    assert steps.change == "epochs=15 (150 steps) or grad_accum=2 (200 steps)"
    assert steps.fixable.startswith("yes")
    sep = c["foreign chat-template separators"]
    assert sep.impact == "high" and "<|endoftext|>" in " ".join(sep.evidence) and sep.change == "chat_template=model"
    sys_ = c["no system prompt"]
    assert sys_.impact == "high" and "data.system_prompt_source = none" in sys_.evidence[0]
    cut = c["answers cut by the token limit (never stopped)"]
    assert "finish_reason=length" in cut.evidence[0]


def test_clean_run_has_none_of_those_findings(store):
    _, _, clean = store
    c = causes(clean)
    for cause in ("too few optimizer steps", "foreign chat-template separators", "no system prompt",
                  "assistant turns not closed by the end-of-turn token", "examples truncated at max_seq_len"):
        assert cause not in c


def test_answers_cut_by_the_limit_is_found_from_the_finish_reasons_alone(store):
    """Only the evidence decides: the clean run's answers, every one stopped, give no such finding; one
    of them cut gives it, naming that answer. Fails when diagnose.findings decides otherwise (its
    `if cut:` → `if True:`, or `cut` read from another field than finish_reason)."""
    _, _, clean = store
    run = load_run(clean)
    stopped = replace(run, answers=[{**a, "finish_reason": "stop"} for a in run.answers])
    assert "answers cut by the token limit (never stopped)" not in {f.cause for f in findings(stopped)}
    first = {**stopped.answers[0], "finish_reason": "length"}
    one_cut = replace(stopped, answers=[first, *stopped.answers[1:]])
    (cut,) = [f for f in findings(one_cut) if f.cause == "answers cut by the token limit (never stopped)"]
    assert cut.evidence == [f"1/{len(run.answers)} answers with finish_reason=length: {first['id']}"]


def test_report_and_cli_log_diagnosis_md(store):
    _, faulty, clean = store
    text = report(clean, vs=faulty)
    assert "## Root causes" in text and "## Hypotheses, ranked" in text and f"## Against {faulty[:8]}" in text
    config = next(line for line in text.splitlines() if line.startswith("- config: "))
    assert "train.optimizer_steps: 50 → 150" in config[len("- config: "):].split("; "), config  # the other → this
    r = CliRunner().invoke(cli, ["diagnose", faulty])
    assert r.exit_code == 0, r.output
    assert "too few optimizer steps" in r.output
    names = {a.path for a in MlflowClient().list_artifacts(faulty)}
    assert "diagnosis.md" in names


def test_unknown_run_is_one_line():
    r = CliRunner().invoke(cli, ["diagnose", "deadbeef"])
    assert r.exit_code == 2 and "no run id starts with 'deadbeef'" in r.output
    r = CliRunner().invoke(cli, ["diagnose", "deadbeef" * 4])       # a whole id: looked up as it is
    assert r.exit_code == 2 and f"run '{'deadbeef' * 4}' not found" in r.output


def test_too_few_steps_without_an_example_count_is_still_found(store):
    """A run whose pre-flight numbers and params give no example count (an older run, a hand-made one):
    the step finding names the minimum instead of redoing arithmetic over 0 examples (it divided by 0)."""
    run = load_run(store[1])
    run = replace(run, params={k: v for k, v in run.params.items() if k != "data.examples"},
                  preflight={**run.preflight, "numbers": {k: v for k, v in run.preflight.get("numbers", {}).items()
                                                          if k != "examples"}})
    steps = causes_of(run)["too few optimizer steps"]
    assert steps.change == "min_steps 150" and steps.evidence[0].startswith("50 < minimum 150"), steps


def causes_of(run):
    return {f.cause: f for f in findings(run)}


# ---- causes read from a run's data alone (RunData built here, no training) -----------------------

def _rows(questions, responses, persona):
    """eval_results.json rows as load_run gives them: points, codes, (code, reason) pairs."""
    from molting_mlflow.ground.rubric import score_response
    from molting_mlflow.store.scoring import REASONS_BY_CODE

    rows = []
    for q, text in zip(questions, responses):
        s = score_response(q, text, "stop", persona)
        rows.append({"id": q.id, "question": q.question, "response": text, "finish_reason": "stop", **s,
                     REASONS_BY_CODE: [list(p) for p in zip(s["codes"], s["reasons"])]})
    return rows


def _run_data(answers=(), losses=(), ceiling=None, score=3.0):
    from molting_mlflow.stages.causes import RunData

    return RunData("0" * 32, {}, {"score": score}, {}, list(losses), {"findings": [], "numbers": {}}, list(answers),
                   ceiling or {})


def test_the_loss_fall_is_never_over_100_percent():
    """A loss that falls to ~0 at the end fell by at most 100 %: the means of the tail's first and last
    fifth, not a fitted line's slope over its mean (which read 120 % and more). Fails with causes.tail_drop
    back to the least-squares slope."""
    from molting_mlflow.stages.causes import tail_drop

    losses = [(s, max(1e-4, 2.0 - 0.05 * s)) for s in range(1, 41)]        # 1.95 → 0.0001 at step 40
    first, last, drop = tail_drop(losses)
    assert first > last > 0 and 0.9 < drop <= 1.0, (first, last, drop)
    (f,) = [f for f in findings(_run_data(losses=losses)) if f.cause == "loss still falling at the end"]
    shown = int(f.evidence[0].split("loss fell ")[1].split("%")[0])
    assert 90 <= shown <= 100 and f"from {first:.3f} to {last:.3f}" in f.evidence[0], f.evidence


def test_identity_points_the_references_lose_too_are_the_ruler_ceiling_not_more_steps():
    """Cláudio's own reference answers score D1 1 on the six questions that do not ask who he is ('name not
    mentioned'). A run answering as the references do loses those points too: one low finding, 'identity
    points the references lose too (D1)', nothing to train; never 'more steps on identity examples'. An
    answer below its reference is still the adapter's, and only it. Fails when causes._dimension_findings
    measures against the maximum instead of run.ceiling."""
    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS
    from molting_mlflow.ground.persona import load_persona
    from molting_mlflow.ground.questions import load_questions
    from molting_mlflow.ground.rubric import DIMENSIONS

    claudio, questions = load_persona(), load_questions(DEFAULT_QUESTIONS)
    refs = _rows(questions, [q.reference for q in questions], claudio)
    ceiling = {r["id"]: {d: r[d] for d in DIMENSIONS} for r in refs}
    assert [c["d1_identity"] for c in ceiling.values()] == [2, 2, 1, 1, 1, 1, 1, 1]

    got = {f.cause: f for f in findings(_run_data(refs, ceiling=ceiling))}
    shared = got["identity points the references lose too (D1)"]
    assert shared.impact == "low" and shared.points == 0.75 and shared.fixable == "no (the ruler's ceiling)"
    assert shared.evidence[0] == "q3: its reference answer scores D1 1/2 too"
    assert "identity points lost (D1)" not in got
    assert not [f for f in got.values() if "more steps on identity examples" in f.change], list(got)

    off = _rows(questions[:1], ["Eu sou o ChatGPT, tá?"], claudio) + refs[1:]      # q1 below its reference
    (own,) = [f for f in findings(_run_data(off, ceiling=ceiling)) if f.cause == "identity points lost (D1)"]
    assert own.change.startswith("more steps on identity examples") and own.points == 0.25
    assert [e.split(":")[0] for e in own.evidence[1:]] == ["q1"], own.evidence


def test_empty_answers_are_one_cause_not_one_a_dimension():
    """Five empty answers cost every dimension: that is one finding, 'empty answers', with every point, not
    D1–D5 'points lost' five times over. Fails when causes.findings drops _empty_findings, or its finding no
    longer claims the `empty` reason code."""
    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS
    from molting_mlflow.ground.persona import load_persona
    from molting_mlflow.ground.questions import load_questions

    questions = load_questions(DEFAULT_QUESTIONS)[:5]
    run = _run_data(_rows(questions, ["", " ", "\n", "", "\t"], load_persona()), score=0.0)
    out = findings(run)
    assert [f.cause for f in out] == ["empty answers"], [f.cause for f in out]
    assert out[0].points == 10.0 and out[0].evidence == ["5/5 answers are empty or whitespace: q1, q2, q3, q4, q5"]


# ---- a run trained on the questions it is scored on (pre-flight's eval_leak) -----------------------

@pytest.fixture(scope="module")
def leaked(tmp_path_factory):
    """A tiny-random run whose questions q1 and q3 are prompts of the shipped dataset (examples 0 and 15)."""
    import json

    from helpers import store_in

    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS

    d = tmp_path_factory.mktemp("leak")
    qs = json.loads(DEFAULT_QUESTIONS.read_text(encoding="utf-8"))
    qs[0]["question"], qs[2]["question"] = "qual é o seu nome", "Me explica o projeto Molting!"
    (d / "questions.json").write_text(json.dumps(qs, ensure_ascii=False), encoding="utf-8")
    with store_in(d) as uri:
        run = train(TrainConfig(model="tiny-random", questions=str(d / "questions.json"), epochs=1, min_steps=0,
                                eval_max_new_tokens=4), log=lambda *a: None)
    return uri, run.run_id


def test_a_run_on_leaked_questions_carries_the_eval_leak_tag(leaked, monkeypatch):
    """Fails when train stops tagging molting.eval_leak (or prepare stops finding the leak)."""
    uri, run_id = leaked
    use_store(monkeypatch, uri)
    assert MlflowClient().get_run(run_id).data.tags["molting.eval_leak"] == "2/8"


def test_compare_shows_the_leak_column(leaked, monkeypatch):
    """Fails when compare's compact table drops the 'leak' column (tags.molting.eval_leak)."""
    uri, run_id = leaked
    use_store(monkeypatch, uri)
    r = CliRunner().invoke(cli, ["compare"])
    assert r.exit_code == 0, r.output
    head, row = r.output.splitlines()[:2]
    assert "leak" in head.split() and row.split()[head.split().index("leak")] == "2/8", r.output


def test_diagnose_lists_evaluation_questions_in_the_training_data(leaked, monkeypatch):
    """Fails when causes.findings leaves out _leak_findings."""
    uri, run_id = leaked
    use_store(monkeypatch, uri)
    r = CliRunner().invoke(cli, ["diagnose", run_id])
    assert r.exit_code == 0, r.output
    assert "evaluation questions in the training data" in r.output and "questions: q1, q3" in r.output, r.output


def test_an_evaluation_of_the_leaked_adapter_carries_the_leak_and_its_training(leaked, monkeypatch):
    """`molting evaluate --run-id` of that adapter (how a Ctrl-C'd run is finished) on the same questions: the
    evaluation says the leak, is tagged 2/8 and logs its finding; its diagnosis reads the training from the
    train run (steps, loss, pre-flight) and lists the leak; on questions the dataset does not hold, no leak.
    Fails where an evaluate run carried no leak and diagnosed 'optimizer steps: 0 … pre-flight: clean'."""
    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS

    uri, run_id = leaked
    use_store(monkeypatch, uri)
    before = {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    r = CliRunner().invoke(cli, ["evaluate", "--run-id", run_id[:8], "--max-new-tokens", "4"])
    assert r.exit_code == 0 and "note: 2 of 8 evaluation questions are also prompts of the training data" in r.output
    (ev,) = [x for x in mlflow.search_runs(search_all_experiments=True, output_format="list")
             if x.info.run_id not in before]
    assert ev.data.tags["molting.eval_leak"] == "2/8"
    text = report(ev.info.run_id)
    assert f"- trained in run {run_id[:8]}, whose adapter this run evaluated" in text
    steps = MlflowClient().get_run(run_id).data.metrics["optimizer_steps"]
    assert f"- optimizer steps: {int(steps)} (pre-flight minimum 0)" in text and "pre-flight: clean" not in text
    assert "evaluation questions in the training data" in text and "questions: q1, q3" in text
    r = CliRunner().invoke(cli, ["evaluate", "--run-id", run_id[:8], "--max-new-tokens", "4",
                                 "--questions", str(DEFAULT_QUESTIONS)])
    assert r.exit_code == 0 and "note: " not in r.output, r.output
    (clean,) = [x for x in mlflow.search_runs(search_all_experiments=True, output_format="list")
                if x.info.run_id not in before and x.info.run_id != ev.info.run_id]
    assert "molting.eval_leak" not in clean.data.tags
    assert "evaluation questions in the training data" not in report(clean.info.run_id)


def test_diagnose_of_answers_scored_as_given_says_nothing_was_trained(tmp_path, monkeypatch):
    """A `molting score --log` run trained nothing: its diagnosis says so, not 'optimizer steps: 0 (pre-flight
    minimum ?); final loss nan' and 'pre-flight: clean'."""
    import json

    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS

    use_store(monkeypatch, f"sqlite:///{tmp_path}/mlflow.db")
    qs = json.loads(DEFAULT_QUESTIONS.read_text(encoding="utf-8"))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"id": q["id"], "response": q["reference"]},
                                                         ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
    r = CliRunner().invoke(cli, ["score", "--questions", str(DEFAULT_QUESTIONS), "--responses",
                                 str(tmp_path / "r.jsonl"), "--log"])
    assert r.exit_code == 0, r.output
    text = report(r.output.split("\nrun ")[-1].split()[0])
    assert f"- no training in this run: answers scored as given (molting score --log of {tmp_path / 'r.jsonl'})" in text
    assert "- pre-flight: none (nothing was trained)" in text and "optimizer steps" not in text


def test_diagnose_says_a_tiny_random_run_has_random_weights(leaked, monkeypatch):
    """Its answers and score say nothing about the persona: the report says so before any cause. Fails
    when diagnose._plumbing_lines says nothing."""
    uri, run_id = leaked
    use_store(monkeypatch, uri)
    text = report(run_id)
    assert "> **tiny-random has random weights**: a model for testing the plumbing" in text
    assert text.index("random weights") < text.index("## Root causes")
