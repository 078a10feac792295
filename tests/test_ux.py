"""What a user meets between the commands: short run ids, a compact compare, a diagnosis that says
why a run has no score, run names that tell runs apart, and no third-party noise. No training
here: runs are made by hand through MLflow's API (tests/test_sweep.py trains the sweep's); one
baseline evaluation of tiny-random answers with 4 tokens."""
import json
import logging
import warnings

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli
from molting_mlflow.ground.rubric import DIMENSIONS


def _run(name="r", params=None, metrics=None, tags=None, experiment="molting") -> str:
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags({"molting.stage": "train", **(tags or {})})
        if params:
            mlflow.log_params(params)
        if metrics:
            mlflow.log_metrics(metrics)
    return run.info.run_id


def _scored(score=5.0):
    return {**{d: 1.0 for d in DIMENSIONS}, "score": score, "optimizer_steps": 150, "final_loss": 1.5}


# ---- short run ids --------------------------------------------------------------------------

def test_a_unique_prefix_names_its_run_and_an_ambiguous_one_lists_the_candidates(monkeypatch):
    from molting_mlflow.store import tracking
    from molting_mlflow.store.tracking import RunIdError, resolve_run_id

    ids = [_run(f"r{i}") for i in range(17)]          # 17 ids, 16 first digits: two share one
    assert resolve_run_id(ids[0][:8]) == ids[0]
    assert resolve_run_id(ids[0][:8].upper()) == ids[0]
    with pytest.raises(RunIdError, match="too short"):
        resolve_run_id(ids[0][:3])
    unused = next(p for p in (f"{i:04x}" for i in range(65536)) if not any(r.startswith(p) for r in ids))
    with pytest.raises(RunIdError, match=f"no run id starts with '{unused}'"):
        resolve_run_id(unused)
    monkeypatch.setattr(tracking, "MIN_RUN_PREFIX", 1)
    first = next(c for c in "0123456789abcdef" if sum(r.startswith(c) for r in ids) > 1)
    with pytest.raises(RunIdError, match="ambiguous") as e:
        resolve_run_id(first)
    assert all(r[:12] in str(e.value) for r in ids if r.startswith(first))


def test_diagnose_and_compare_take_a_prefix_and_refuse_an_ambiguous_one_in_one_line(monkeypatch):
    from molting_mlflow.store import tracking

    ids = [_run(f"r{i}", metrics=_scored(float(i))) for i in range(17)]
    r = CliRunner().invoke(cli, ["compare", ids[3][:8]])
    assert r.exit_code == 0 and ids[3][:8] in r.output and ids[4][:8] not in r.output, r.output
    monkeypatch.setattr(tracking, "MIN_RUN_PREFIX", 1)
    first = next(c for c in "0123456789abcdef" if sum(r.startswith(c) for r in ids) > 1)
    r = CliRunner().invoke(cli, ["diagnose", first])
    assert r.exit_code == 2 and "ambiguous" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = CliRunner().invoke(cli, ["rescore", first])
    assert r.exit_code == 2 and "ambiguous" in r.output


def test_run_uris_resolve_their_prefix():
    from molting_mlflow.store.tracking import resolve_run_uri

    rid = _run()
    assert resolve_run_uri(f"runs:/{rid[:8]}/adapter") == f"runs:/{rid}/adapter"
    assert resolve_run_uri("models:/molting-smol@champion") == "models:/molting-smol@champion"


def test_evaluate_prints_the_run_it_made():
    from molting_mlflow.ground.config import EvalConfig
    from molting_mlflow.stages.evaluate import evaluate

    lines = []
    out = evaluate(EvalConfig(model="tiny-random", max_new_tokens=4), log=lines.append)
    run = MlflowClient().get_run(out["run_id"])
    assert run.data.tags["molting.stage"] == "evaluate"
    assert lines[-1].startswith(f"\nrun {out['run_id']} (baseline-tiny-random): score ")
    assert f"molting diagnose {out['run_id'][:8]}" in lines[-1]


# ---- compare --------------------------------------------------------------------------------

def test_compare_is_compact_score_first_and_shows_only_the_settings_that_differ():
    common = {"train.seed": "42", "train.batch_size": "1", "train.precision_why": "x" * 200}
    a = _run("smol-a", {**common, "train.epochs": "2", "train.dataset": "/x/data/mine.json"}, _scored(7.5))
    b = _run("smol-b", {**common, "train.epochs": "5", "train.dataset": "/y/other.json"}, _scored(2.5))
    r = CliRunner().invoke(cli, ["compare"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["run_id", "name", "score", "D1", "D2", "D3", "D4", "D5", "steps", "loss",
                                "dataset", "epochs"]
    assert lines[1].split()[:3] == [a[:8], "smol-a", "7.5"] and lines[2].startswith(b[:8])
    assert "mine.json" in lines[1] and "/x/data" not in r.output          # a path by its file name
    assert max(len(line) for line in lines) < 120
    full = CliRunner().invoke(cli, ["compare", "--full"]).output.splitlines()[0].split()
    assert {"status", "stage", "ref_nll", "d1_identity", "epochs"} <= set(full)
    assert full.index("score") < full.index("d1_identity")


def test_compare_shows_why_a_run_has_no_score_in_a_status_column():
    """Runs that ended without a score (FAILED, KILLED, still RUNNING) read their status in the compact
    table, and a trial the sweep pruned (KILLED on purpose) reads PRUNED. Fails when compare's compact
    table drops the status column, or shows a pruned trial as KILLED (compare._status)."""
    client = MlflowClient()
    exp = mlflow.set_experiment("molting").experiment_id
    scored = _run("scored", metrics=_scored(6.0))
    ids = {}
    for name, status, tags in (("failed", "FAILED", {}), ("running", None, {}), ("killed", "KILLED", {}),
                               ("pruned", "KILLED", {"molting.trial_state": "PRUNED"})):
        run = client.create_run(exp, run_name=name, tags={"molting.stage": "train", **tags})
        if status:
            client.set_terminated(run.info.run_id, status)
        ids[name] = run.info.run_id
    r = CliRunner().invoke(cli, ["compare"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:4] == ["run_id", "name", "status", "score"], lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    assert rows[scored[:8]][1:4] == ["scored", "FINISHED", "6.0"]
    for name, shown in (("failed", "FAILED"), ("running", "RUNNING"), ("killed", "KILLED"), ("pruned", "PRUNED")):
        assert rows[ids[name][:8]][1:3] == [name, shown], rows[ids[name][:8]]


# ---- diagnose: a run without a score --------------------------------------------------------

def test_diagnose_says_why_a_run_has_no_score_instead_of_zero():
    from molting_mlflow.stages.diagnose import DiagnoseError, report

    scored = _run("scored", {"train.epochs": "2"}, _scored(6.0))
    parent = _run("sweep-x", tags={"molting.stage": "sweep"})
    mlflow.set_experiment("molting")
    with mlflow.start_run(run_name="trial-1", tags={"mlflow.parentRunId": parent, "molting.stage": "train"}) as t:
        mlflow.log_metrics(_scored(4.0))
    pruned = _run("trial-2-pruned", tags={"molting.trial_state": "PRUNED", "mlflow.parentRunId": parent,
                                          "molting.prune_reason": "40 optimizer steps, below the minimum of 150"})
    text = report(scored[:8], pruned[:8])
    assert "0.00 →" not in text and f"- score: {pruned[:8]} has none (run {pruned[:8]} is a pruned trial" in text
    with pytest.raises(DiagnoseError) as e:
        report(parent)
    assert "sweep's parent run" in str(e.value) and f"molting diagnose {t.info.run_id[:8]}" in str(e.value)
    assert "evaluate it first" not in str(e.value)
    with pytest.raises(DiagnoseError, match="pruned trial") as e:
        report(pruned)
    assert "evaluate it first" not in str(e.value)


# ---- messages as data: reasons by code, tokens from the finding, prune causes ----------------

def test_reasons_are_picked_by_their_code_even_when_a_reason_holds_a_semicolon():
    from molting_mlflow.stages.causes import reasons_for as _reason
    from molting_mlflow.store.scoring import REASONS_BY_CODE, results_rows

    result = {"id": "q1", "question": "?", "response": "r", "finish_reason": "stop", **{d: 1 for d in DIMENSIONS},
              "score": 5, "reasons": ["named João; not Cláudio", "a fact missed"], "codes": ["d1.other_name", "d2.missed"]}
    (row,) = results_rows({"results": [result]})
    assert row[REASONS_BY_CODE] == [["d1.other_name", "named João; not Cláudio"], ["d2.missed", "a fact missed"]]
    row = {**row, "codes": row["codes"].split()}
    assert _reason(row, "D1") == "named João; not Cláudio" and _reason(row, "D2") == "a fact missed"


def test_diagnose_names_the_tokens_the_finding_carries_not_those_in_its_sentence():
    from molting_mlflow.stages.causes import RunData, findings

    finding = {"check": "chat_template", "level": "error", "message": "the template uses a foreign separator",
               "evidence": "", "fixes": [], "data": {"tokens": ["<|endoftext|>"], "end_of_turn": "<|im_end|>"}}
    run = RunData("0" * 32, {}, {"score": 2.0}, {}, [], {"findings": [finding], "numbers": {}}, [])
    (f,) = [f for f in findings(run) if f.cause == "foreign chat-template separators"]
    assert "tokens named: <|endoftext|>, <|im_end|>" in f.evidence


def test_preflight_findings_carry_their_tokens_as_data():
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.ground.paths import GPT2_TEMPLATE
    from molting_mlflow.ground.prepare import prepare

    p = prepare(TrainConfig(model="tiny-random", chat_template=str(GPT2_TEMPLATE), preflight="warn", min_steps=0))
    (f,) = [f for f in p.report.findings if f.check == "chat_template" and f.level == "error"]
    assert f.data == {"tokens": ["<|endoftext|>"], "end_of_turn": "<|im_end|>"}
    assert json.loads(p.report.to_json())["findings"][[x.check for x in p.report.findings].index("chat_template")][
        "data"]["tokens"] == ["<|endoftext|>"]


def test_the_summary_counts_step_pruned_trials_by_their_cause():
    import optuna

    from molting_mlflow.ground.sweep_config import SweepConfig
    from molting_mlflow.stages.sweep_report import PRUNED_AT_EPOCH, PRUNED_FOR_STEPS, _summary_md, why_no_best

    P = optuna.trial.TrialState.PRUNED
    # the words of a reason decide nothing: the step-pruned one says no "optimizer steps", the others do
    epoch = {"prune_cause": PRUNED_AT_EPOCH, "prune_reason": "epoch 1 of 20 optimizer steps: ref_nll worse"}
    pruned = [optuna.trial.create_trial(state=P, user_attrs={"prune_cause": PRUNED_FOR_STEPS, "prune_reason": "x"}),
              optuna.trial.create_trial(state=P, user_attrs=epoch), optuna.trial.create_trial(state=P, user_attrs=epoch)]
    sc = SweepConfig(model="tiny-random")
    assert "pruned: 3 (1 for too few optimizer steps, before training)" in _summary_md(sc, None, [], pruned, [], 1.0)
    why = why_no_best(pruned, sc)
    assert "1 pruned under min_steps=150, 2 pruned at an epoch" in why and "lower min_steps" in why
    ref = optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=3.0,
                                    user_attrs={"molting.reference": "user-original"})
    assert "covered only the reference" in why_no_best([ref], sc) and "raise n_trials" in why_no_best([ref], sc)


def test_the_summary_says_a_reference_that_beat_every_searched_trial_is_no_candidate():
    """A reference trial (the user's own configuration) scored above the best searched trial: the summary
    says references are never candidates, and that no searched trial beat it, with both scores. Fails
    when sweep_report._summary_md leaves out _reference_lines (the table alone leaves the reader to see
    that 'best' scored below a reference)."""
    from types import SimpleNamespace

    from molting_mlflow.ground.sweep_config import SweepConfig
    from molting_mlflow.stages.sweep_report import _summary_md

    def trial(number, value, **attrs):
        return SimpleNamespace(number=number, value=value, params={}, state="COMPLETE",
                               user_attrs={**{d: 1.0 for d in DIMENSIONS}, "optimizer_steps": 150, **attrs})

    sc = SweepConfig(model="tiny-random")
    best, ref = trial(3, 2.0), trial(0, 4.5, **{"molting.reference": "user-original"})
    text = _summary_md(sc, best, [ref], [], [], 1.0)
    assert "- reference trials (user-original #0: 4.50) are configurations to beat, never candidates for the best " \
           "or the registry" in text
    assert "- no searched trial beat user-original: the best searched trial #3 scored 2.00, below 4.50" in text
    assert "| best (#3) |" in text and "| reference: user-original (#0) |" in text
    beaten = _summary_md(sc, trial(3, 5.0), [ref], [], [], 1.0)
    assert "never candidates" in beaten and "no searched trial beat" not in beaten


# ---- run names, warnings --------------------------------------------------------------------

def test_run_names_tell_apart_runs_on_other_data_or_settings(tmp_path):
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.ground.paths import GPT2_TEMPLATE

    base = TrainConfig(model="smol").resolve()
    assert base.run_name == "smol-e2-b1-ga1-lr0.0005"
    mine = TrainConfig(model="smol", dataset=str(tmp_path / "my_persona.jsonl")).resolve()
    assert mine.run_name == "smol-e2-b1-ga1-lr0.0005-my_persona"
    user = TrainConfig(model="smol", system_prompt="none", chat_template=str(GPT2_TEMPLATE), seed=1).resolve()
    assert user.run_name == "smol-e2-b1-ga1-lr0.0005-nosys-gpt2_separators-s1"


def test_known_third_party_warnings_are_filtered_and_others_are_not(caplog):
    from molting_mlflow.ground.quiet import quiet_known_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        quiet_known_warnings()
        for module, category, text in (
                ("transformers.training_args", FutureWarning, "`gradient_checkpointing` is deprecated and will be "
                 "removed in v6. Use `activation_checkpointing` instead."),
                ("mlflow.data.dataset_source_registry", UserWarning, "The specified dataset source can be "
                 "interpreted in multiple ways: A, A."),
                ("transformers.training_args", FutureWarning, "`something_else` is deprecated"),
                ("mlflow.pyfunc", UserWarning, "\x1b[1;33mAn input example was not provided when logging the model."),
                ("mymodule", FutureWarning, "`gradient_checkpointing` is deprecated")):
            warnings.warn_explicit(text, category, "f.py", 1, module=module)
    assert [str(w.message) for w in seen] == ["`something_else` is deprecated", "`gradient_checkpointing` is deprecated"]
    with caplog.at_level(logging.WARNING):
        log = logging.getLogger("bitsandbytes.backends.cpu.ops")
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please …", "No module")
        log.warning("something a user should see")
    assert [r.getMessage() for r in caplog.records] == ["something a user should see"]


def test_registry_without_a_name_says_what_registers_one():
    _run()                                              # the store made (its creation logs INFO lines)
    r = CliRunner().invoke(cli, ["registry"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "no molting-<preset> model is registered yet" in r.output and "molting sweep --model" in r.output
