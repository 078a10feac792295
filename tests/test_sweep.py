"""A small seeded sweep on tiny-random, checked through the MLflow and Optuna APIs (plumbing only:
random weights score nothing, and no score is claimed)."""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli
from molting_mlflow.ground.config import ConfigError
from molting_mlflow.ground.sweep_config import SweepConfig
from molting_mlflow.stages.sweep import sweep

# tiny-random: batch 8 → 10 steps an epoch; min_steps 20 prunes grad_accum ≥ 2 at ≤ 3 epochs
SMALL = dict(model="tiny-random", search={"epochs": "1,3", "grad_accum": "1,2,4,8"}, min_steps=20, seed=7)
STEP_PRUNED = "min_steps"       # sweep_report.PRUNED_FOR_STEPS, written out: the trials' attribute a reader sees


def children(parent_id):
    return mlflow.search_runs(experiment_names=["molting"], output_format="list",
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_sweep_nests_trials_prunes_by_steps_and_resumes(tmp_path, capsys):
    out = sweep(SweepConfig(n_trials=3, register=False, **SMALL), log=lambda *a: None)
    printed = capsys.readouterr().out     # each trial says what became of it, a pruned one too
    parent = MlflowClient().get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["molting.stage"] == "sweep"
    kids = children(parent.info.run_id)
    study = optuna.load_study(study_name=out["study_name"], storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(kids) == len(study.trials)  # every trial, pruned ones included, is a child run
    by_trial = {int(r.data.tags["molting.trial"]): r for r in kids}
    # trial 0 is the user's original configuration, a reference, trained in warn mode
    ref = by_trial[0]
    assert ref.data.tags["molting.reference"] == "user-original" and ref.data.params["train.optimizer_steps"] == "50"
    assert ref.data.params["template.source"].endswith("gpt2_separators.jinja") and "score" in ref.data.metrics
    step_pruned = [t for t in study.trials if t.user_attrs.get("prune_cause") == STEP_PRUNED]
    assert step_pruned, "the seeded search should hit at least one configuration under 20 steps"
    for t in step_pruned:
        r = by_trial[t.number]
        assert t.state == optuna.trial.TrialState.PRUNED
        assert r.data.tags["molting.trial_state"] == "PRUNED" and "below the minimum of 20" in r.data.tags["molting.prune_reason"]
        assert r.data.tags["molting.prune_cause"] == STEP_PRUNED
        assert "would pass: epochs=" in r.data.tags["molting.prune_reason"]
        assert "loss" not in r.data.metrics  # pruned before any training
        assert f"trial {t.number} [" in printed and "]: pruned before loading a weight: " in printed
    trained = [t for t in study.trials if t.user_attrs.get("prune_cause") != STEP_PRUNED]
    assert len(trained) == 3
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    names = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "study")}
    assert {"study/trials.csv", "study/sweep_summary.md", "study/optimization_history.html"} <= names

    # the same settings: the same study, resumed (and said so); n_trials counts new trials; the
    # reference is not enqueued again
    lines, before = [], len(study.trials)
    again = sweep(SweepConfig(n_trials=1, register=False, **SMALL), log=lines.append)
    assert again["study_name"] == out["study_name"]
    assert lines[0].startswith(f"sweep: resuming study '{out['study_name']}'")
    assert f"{before} trial(s) so far" in lines[0] and f"numbered from {before}" in lines[0]
    assert f"sweep run {parent.info.run_id[:8]} in experiment 'molting'" in lines[0]
    study = optuna.load_study(study_name=out["study_name"], storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len([t for t in study.trials if t.user_attrs.get("prune_cause") != STEP_PRUNED]) == 4
    assert sum(t.user_attrs.get("molting.reference") == "user-original" for t in study.trials) == 1


@pytest.mark.parametrize("kw,msg", [
    (dict(n_trials=0), "n_trials=0 is invalid"),
    (dict(search={"lr": "1e-3"}), "lr='1e-3' is invalid: expected a range lo,hi with 0 < lo < hi < 1"),
    (dict(search={"lr": "3e-3,1e-4"}), "lr='3e-3,1e-4' is invalid"),
    (dict(search={"epochs": "2,1"}), "epochs='2,1' is invalid: expected a range lo,hi with lo ≤ hi"),
    (dict(search={"width": "1,2"}), "unknown searched parameter(s) ['width']"),
    (dict(target=11), "target=11 is invalid"),
    (dict(workers=-1), "workers=-1 is invalid"),
])
def test_bad_sweep_settings(kw, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        SweepConfig(**kw)


def test_unknown_model_fails_before_any_trial_in_one_line():
    from click.testing import CliRunner

    from molting_mlflow.cli import cli

    r = CliRunner().invoke(cli, ["sweep", "--model", "gpt5", "--n-trials", "2"])
    assert r.exit_code == 2 and "unknown model 'gpt5'" in r.output and len(r.output.strip().splitlines()) == 1
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")   # no parent, no trial


def test_search_space_is_one_table_read_by_the_cli_and_the_mlproject():
    """A row of SEARCH_SPACE is the CLI option, the `search` string's name and the trial's parameter."""
    from click.testing import CliRunner

    from molting_mlflow.cli import cli
    from molting_mlflow.ground.sweep_config import SEARCH_SPACE, parse_search

    help_text = CliRunner().invoke(cli, ["sweep", "--help"]).output
    for row in SEARCH_SPACE:
        assert "--" + row.name.replace("_", "-") in help_text
    assert parse_search("lr=1e-4,1e-3;lora_r=8,16") == {"lr": "1e-4,1e-3", "lora_r": "8,16"}
    sc = SweepConfig(model="tiny-random", search={"lora_r": "4,8", "models": "tiny-random"})
    assert sc.space["lora_r"] == [4, 8] and sc.models() == ["tiny-random"] and sc.space["grad_accum"] == [1, 2, 4, 8]
    trial = optuna.trial.FixedTrial({"grad_accum": 2, "epochs": 3, "lr": 1e-3, "lora_r": 8, "models": "tiny-random"})
    from molting_mlflow.stages.sweep import _trial_config

    cfg, _ = _trial_config(trial, sc)
    assert (cfg.grad_accum, cfg.epochs, cfg.lora_r, cfg.lora_alpha, cfg.model) == (2, 3, 8, 16, "tiny-random")


def test_registry_aliases_and_fresh_process_load(tmp_path):
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages.registry import list_versions, register_adapter
    from molting_mlflow.stages.train import train

    r = train(TrainConfig(model="tiny-random", epochs=2, min_steps=0, eval_max_new_tokens=4), log=lambda *a: None)
    score = MlflowClient().get_run(r.run_id).data.metrics["score"]
    # alias rule: champion needs score > target and > the current champion's score
    v1 = register_adapter(r.run_id, "tiny-random", target=score - 1, log=lambda *a: None)
    v2 = register_adapter(r.run_id, "tiny-random", target=score - 1, log=lambda *a: None)
    c = MlflowClient()
    assert str(c.get_model_version_by_alias("molting-tiny-random", "champion").version) == v1  # v2 does not beat v1
    assert str(c.get_model_version_by_alias("molting-tiny-random", "candidate").version) == v2
    tags = c.get_model_version("molting-tiny-random", v1).tags
    assert tags["base_model"] == "tiny-random" and tags["source_run"] == r.run_id
    assert tags["quantization"].startswith("none") and float(tags["score"]) == pytest.approx(score)
    assert {"d1_identity", "d5_quality", "base_revision"} <= set(tags)
    assert [row["aliases"] for row in list_versions("molting-tiny-random")] == ["champion", "candidate"]

    code = ("import mlflow, json; m = mlflow.pyfunc.load_model('models:/molting-tiny-random@champion');"
            "assert m.metadata.get_params_schema() is not None, 'max_new_tokens must be a declared param';"
            "print(json.dumps(m.predict(['Quem é você?'], params={'max_new_tokens': 4})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    answers = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)


def test_the_champion_gate_can_read_the_judge():
    """champion_by=judge: the registry's gate reads the run's judge.score instead of its rubric score. A run under
    the target by the rubric and over it by the judge gets no champion under the rubric's gate and becomes
    champion under the judge's; the version carries its gate and both scores. judge.score is logged by hand:
    this holds the gate (tests/test_judge.py holds the judge that writes the metric)."""
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages.registry import current_champion, register_adapter
    from molting_mlflow.stages.train import train

    r = train(TrainConfig(model="tiny-random", epochs=2, min_steps=0, eval_max_new_tokens=4), log=lambda *a: None)
    c = MlflowClient()
    score = c.get_run(r.run_id).data.metrics["score"]
    c.log_metric(r.run_id, "judge.score", score + 2)
    register_adapter(r.run_id, "tiny-random", target=score + 1, log=lambda *a: None)           # the rubric's gate
    assert current_champion("molting-tiny-random") is None
    v2 = register_adapter(r.run_id, "tiny-random", target=score + 1, log=lambda *a: None, gate="judge.score")
    assert str(current_champion("molting-tiny-random").version) == v2
    tags = c.get_model_version("molting-tiny-random", v2).tags
    assert tags["champion_gate"] == "judge.score" and float(tags["judge_score"]) == pytest.approx(score + 2)
    assert float(tags["score"]) == pytest.approx(score)


def _postgres_url():
    try:
        import psycopg2

        for user in ("postgres", "root"):
            try:
                psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user=user, connect_timeout=3).close()
                return f"postgresql+psycopg2://{user}@127.0.0.1:5432/test"
            except psycopg2.OperationalError:
                continue
    except ImportError:
        return None
    return None


@pytest.fixture
def fresh_postgres():
    """A new, empty database per test: both workers race to create Optuna's schema, as on a new server."""
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432 (database test, trust auth)")
    import psycopg2

    user = url.split("//")[1].split("@")[0]
    db = f"molting_test_{uuid.uuid4().hex[:8]}"
    con = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user=user)
    con.autocommit = True
    con.cursor().execute(f"CREATE DATABASE {db}")
    yield url.rsplit("/", 1)[0] + f"/{db}"
    con.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    con.close()


def test_two_workers_share_one_postgres_study(tmp_path, fresh_postgres):
    url = fresh_postgres
    name = f"molting-test-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "molting_mlflow.cli", "sweep", "--model", "tiny-random", "--epochs", "1,2",
           "--min-steps", "10", "--n-trials", "4", "--storage", url, "--study-name", name,
           "--register", "false", "--enqueue-user", "false", "--seed", "3"]
    procs = []
    for w in (1, 2):  # each worker its own MLflow store: the Optuna storage is what they share
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / f'w{w}.db'}", "MOLTING_THREADS": "1"}
        (tmp_path / f"w{w}").mkdir()
        procs.append(subprocess.Popen(cmd, cwd=tmp_path / f"w{w}", env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    study = optuna.load_study(study_name=name, storage=url)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))          # no duplicate, no gap
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    trained = [t for t in study.trials if t.user_attrs.get("prune_cause") != STEP_PRUNED]
    assert 4 <= len(trained) <= 5                                # each worker stops at the shared total
    # both workers took part
    runs = {w: mlflow.search_runs(experiment_names=["molting"], output_format="list",
                                  filter_string="tags.`molting.trial` != ''")
            for w in (1, 2) if mlflow.set_tracking_uri(f"sqlite:///{tmp_path / f'w{w}.db'}") is None}
    assert all(runs[w] for w in (1, 2))


def test_fingerprint_names_what_trains_not_where_it_came_from(monkeypatch):
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.ground.paths import DATA_DIR
    from molting_mlflow.ground.prepare import prepare

    monkeypatch.chdir(DATA_DIR.parent)  # a relative template path, as `mlflow run -P chat_template=…` passes it
    base = dict(model="tiny-random", epochs=5, grad_accum=8, batch_size=1, system_prompt="none", preflight="warn")
    rel = prepare(TrainConfig(chat_template="data/templates/gpt2_separators.jinja", **base)).fingerprint()
    absolute = prepare(TrainConfig(chat_template=str(DATA_DIR / "templates" / "gpt2_separators.jinja"),
                                               min_steps=20, **base)).fingerprint()
    assert rel == absolute                       # same template bytes, same config: the same run
    assert prepare(TrainConfig(chat_template="data/templates/gpt2_separators.jinja", seed=1,
                                           **base)).fingerprint() != rel
    assert prepare(TrainConfig(**base)).fingerprint() != rel                       # the model's own template
    assert prepare(TrainConfig(chat_template="data/templates/gpt2_separators.jinja",
                                           **{**base, "system_prompt": "persona"})).fingerprint() != rel


def test_precision_is_fingerprinted_and_speed_settings_are_not(monkeypatch):
    """bf16 trains a different adapter than fp32: train.precision says so and a sweep never reuses an
    fp32 run for it; how a step is split into micro-batches changes speed, not the adapter."""
    from dataclasses import replace

    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.ground.prepare import prepare

    cfg = TrainConfig(model="tiny-random", epochs=2, grad_accum=1, min_steps=0)
    fp32 = prepare(cfg)
    assert fp32.plan.precision == "fp32"
    bf16 = prepare(replace(cfg, precision="bf16"))
    assert bf16.plan.precision == "bf16" and bf16.fingerprint() != fp32.fingerprint()
    split = prepare(replace(cfg, batch_size=4, grad_accum=2))     # the same 8 examples a step, two micro-batches
    assert split.plan.micro_batch == 4 and split.plan.accum == 2
    assert split.fingerprint() != fp32.fingerprint()                 # batch_size is a logged hyperparameter …
    faster = replace(split, plan=replace(split.plan, micro_batch=8))
    assert faster.fingerprint() == split.fingerprint()               # … the plan's micro-batch is not


def test_reference_trial_reuses_a_finished_run_of_the_same_config():
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages.sweep import USER_ORIGINAL
    from molting_mlflow.stages.train import train

    # the user's configuration, run on its own first (as the README's reproduction does)
    done = train(TrainConfig(model="tiny-random", seed=SMALL["seed"], **USER_ORIGINAL),
                 log=lambda *a: None)
    score = MlflowClient().get_run(done.run_id).data.metrics["score"]
    out = sweep(SweepConfig(n_trials=1, register=False, **SMALL), log=lambda *a: None)
    (t0,) = [t for t in optuna.load_study(study_name=out["study_name"], storage="sqlite:///optuna.db").trials
             if t.user_attrs.get("molting.reference")]
    assert t0.user_attrs["reused_run_id"] == done.run_id == t0.user_attrs["run_id"] and t0.value == score
    (child,) = [r for r in children(out["parent_run_id"]) if r.data.tags["molting.trial"] == str(t0.number)]
    assert child.data.tags["molting.reused_run_id"] == done.run_id and child.data.metrics["score"] == score
    # its scores keep their rubric version (without the tag, compare took them for v1.0)
    assert child.data.tags["molting.rubric_version"] == MlflowClient().get_run(done.run_id).data.tags[
        "molting.rubric_version"]
    assert child.data.params["train.optimizer_steps"] == "50" and "loss" not in child.data.metrics


# ---- Sweep at scale: bases lent between trials, workers, a killed worker, a fresh store --------

def _adapter_tensors(run_id):
    from safetensors.torch import load_file

    path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/adapter/adapter_model.safetensors")
    return load_file(path)


def test_a_lent_base_trains_the_adapter_a_fresh_process_trains(tmp_path):
    """Two trials in one worker (the base loaded once, lent twice) against the second trial's config
    trained in a fresh process: the same adapter, weight for weight."""
    import torch

    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.ground.models import BaseCache
    from molting_mlflow.stages.train import train

    first = TrainConfig(model="tiny-random", epochs=1, min_steps=0, lr=5e-3, seed=1, evaluate=False)
    second = TrainConfig(model="tiny-random", epochs=2, min_steps=0, lr=2e-3, seed=2, evaluate=False)
    bases = BaseCache()
    train(first, log=lambda *a: None, bases=bases)
    lent = train(second, log=lambda *a: None, bases=bases)
    assert len(bases._models) == 1                       # loaded once
    code = ("import mlflow;from molting_mlflow.ground.config import TrainConfig;from molting_mlflow.stages.train import train;"
            "print('RUN', train(TrainConfig(model='tiny-random', epochs=2, min_steps=0, lr=2e-3, seed=2, "
            "evaluate=False), log=lambda *a: None).run_id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MOLTING_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    fresh_id = next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("RUN "))
    a, b = _adapter_tensors(lent.run_id), _adapter_tensors(fresh_id)
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)   # it trained: B starts at zero


def test_two_worker_processes_share_one_study_and_one_parent_run():
    out = sweep(SweepConfig(n_trials=3, register=False, workers=2, enqueue_user=False, **SMALL), log=lambda *a: None)
    kids = children(out["parent_run_id"])
    assert {r.data.tags["molting.worker"] for r in kids} == {"w0-of-2", "w1-of-2"}
    numbers = [int(r.data.tags["molting.trial"]) for r in kids]
    assert len(numbers) == len(set(numbers))                     # every trial number once
    assert not [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                if r.info.status == "RUNNING"]
    parent = MlflowClient().get_run(out["parent_run_id"]).data
    assert parent.params["sweep.workers"] == "2" and parent.metrics["sweep_wall_s"] > 0
    assert parent.metrics["trials_per_hour"] > 0
    # The parent's overhead numbers are its trained trials' own (each child logs trial_overhead_share):
    # fails when sweep_report.time_accounting aggregates otherwise (statistics.fmean(shares) → shares[0]).
    shares = [r.data.metrics["trial_overhead_share"] for r in kids if "trial_overhead_share" in r.data.metrics]
    assert shares and all(0 < s < 1 for s in shares), shares   # a trial's wall holds more than its training
    assert parent.metrics["overhead_share_mean"] == pytest.approx(sum(shares) / len(shares))
    assert parent.metrics["overhead_share_max"] == pytest.approx(max(shares))


def test_several_workers_start_together_on_a_fresh_sqlite_store(tmp_path):
    """The default mlflow.db beside them, new: both `molting sweep` processes start and finish."""
    cmd = [sys.executable, "-m", "molting_mlflow.cli", "sweep", "--model", "tiny-random", "--epochs", "1,1",
           "--grad-accum", "1", "--min-steps", "0", "--n-trials", "2", "--register", "false",
           "--enqueue-user", "false", "--study-name", "together"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}", "MOLTING_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-1500:] + outs[1][-1500:]
    assert not any("Traceback" in o for o in outs)


@pytest.mark.slow   # ~85 s of CPU for the two runs; 3.5 min of wall on a loaded 2-core box
def test_two_mlflow_run_sweeps_start_together_on_a_fresh_sqlite_store(tmp_path):
    """The multi-worker example under `mlflow run`: two sweeps started at once, one PostgreSQL study, a new
    mlflow.db. MLflow's runner creates the store before our entry point (runner_check.sql_store builds it): without
    the first-use lock there, both runners migrated it and one ended at once (`duplicate column name: step`)."""
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432 (database test, trust auth)")
    root = Path(__file__).resolve().parent.parent
    name, db = f"molting-race-{uuid.uuid4().hex[:8]}", tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "mlflow", "run", str(root), "-e", "sweep", "--env-manager", "local",
           "--experiment-name", "race", "-P", "model=tiny-random", "-P", "n_trials=1", "-P", f"storage={url}",
           "-P", f"study_name={name}", "-P", "search=epochs=1,1;grad_accum=1", "-P", "min_steps=0",
           "-P", "enqueue_user=false", "-P", "register=false", "-P", "reuse=false"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "MOLTING_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-1500:] + outs[1][-1500:]
    study = optuna.load_study(study_name=name, storage=url)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(len(numbers))) and 1 <= len(numbers) <= 2, numbers
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    runs = MlflowClient(f"sqlite:///{db}").search_runs([MlflowClient(f"sqlite:///{db}")
                                                        .get_experiment_by_name("race").experiment_id])
    assert not [r for r in runs if r.info.status != "FINISHED"]            # none left RUNNING
    assert sorted(int(r.data.tags["molting.trial"]) for r in runs if "molting.trial" in r.data.tags) == numbers
    assert len([r for r in runs if r.data.tags.get("molting.stage") == "sweep"]) == 2   # each sweep its parent


def test_a_killed_worker_trial_is_failed_and_retried_by_the_other(tmp_path, fresh_postgres):
    """Two workers on one PostgreSQL study and one MLflow store; SIGKILL one mid-trial: the other
    finishes the study, the dead trial ends FAILED (Optuna and MLflow) and its retry completes."""
    import signal
    import time

    url, name = fresh_postgres, f"molting-kill-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "molting_mlflow.cli", "sweep", "--model", "tiny-random", "--epochs", "2,3",
           "--grad-accum", "1", "--min-steps", "0", "--n-trials", "4", "--storage", url, "--study-name", name,
           "--register", "false", "--enqueue-user", "false", "--heartbeat-s", "2", "--seed", "5"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MOLTING_THREADS": "1"}
    victim = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:            # wait until the victim is inside a trial
        try:
            trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
            break
        time.sleep(0.5)
    survivor = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    # kill the victim inside a trial whose MLflow run is open (RUNNING in Optuna comes a moment before
    # the run: killed in between, there would be no run to end FAILED, and the test raced on that)
    mine = (f"tags.`molting.study` = '{name}' and tags.`molting.worker` = 'w0-pid{victim.pid}' "
            "and attributes.status = 'RUNNING'")
    while time.time() < deadline and not mlflow.search_runs(search_all_experiments=True, filter_string=mine,
                                                            output_format="list"):
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    out = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name=name, storage=url)
    states = {t.number: t.state for t in study.trials}
    assert sorted(states) == list(range(len(states)))            # no duplicate, no gap
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "the killed worker's trial must end FAILED"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") in {f.number for f in failed}]
    assert retries and all(t.state == optuna.trial.TrialState.COMPLETE for t in retries)
    assert optuna.trial.TrialState.RUNNING not in states.values()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    dead = [r for r in runs if r.data.tags.get("molting.trial") in {str(f.number) for f in failed}
            and r.data.tags.get("molting.study") == name]
    assert dead and all(r.info.status == "FAILED" for r in dead)


# ---- The sweep says what it does: study names, new trials, a search that can train, registration --

def test_readme_tiny_random_sweep_trains_two_trials_and_registers_the_best():
    """`mlflow run . -e sweep -P model=tiny-random -P n_trials=2` (README), as the CLI runs it: the
    preset's own search ranges all reach the step minimum, so both trials train."""
    r = CliRunner().invoke(cli, ["sweep", "--model", "tiny-random", "--n-trials", "2"])
    assert r.exit_code == 0, r.output[-3000:]
    head = next(line for line in r.output.splitlines() if line.startswith("sweep: "))   # MLflow's INFO lines first
    assert head.startswith("sweep: new study 'molting-tiny-random-") and "for experiment 'molting'" in head
    assert "6 of 6 (grad_accum, epochs) pairs reach min_steps=150 on tiny-random" in r.output
    study_name = head.split("'")[1]
    study = optuna.load_study(study_name=study_name, storage="sqlite:///optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(t.user_attrs["optimizer_steps"] >= 150 for t in study.trials if not t.user_attrs.get("molting.reference"))
    assert "registered molting-tiny-random v1" in r.output
    assert "see it:  molting registry --name molting-tiny-random" in r.output
    reg = CliRunner().invoke(cli, ["registry"])          # no --name: every molting-<preset> registered
    assert reg.exit_code == 0 and reg.output.startswith("molting-tiny-random:\n") and "candidate" in reg.output


def test_the_default_study_name_is_the_experiment_and_the_search():
    from molting_mlflow.ground.sweep_config import default_study_name

    sc = SweepConfig(model="tiny-random")
    name = default_study_name(sc, "molting")
    assert name.startswith("molting-tiny-random-") and name == default_study_name(SweepConfig(model="tiny-random",
                                                                                              n_trials=3), "molting")
    assert name != default_study_name(sc, "Default")                       # another experiment: another study
    assert name != default_study_name(SweepConfig(model="tiny-random", search={"epochs": "16,20"}), "molting")
    assert name != default_study_name(SweepConfig(model="tiny-random", min_steps=100), "molting")
    assert SweepConfig(model="tiny-random", study_name="shared").resolved_study("molting") == "shared"


def test_a_search_in_which_nothing_can_train_fails_before_any_trial():
    r = CliRunner().invoke(cli, ["sweep", "--model", "tiny-random", "--epochs", "1,4", "--grad-accum", "1,2"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "no configuration of the search reaches min_steps=150 on tiny-random" in r.output
    assert "search epochs=15,20" in r.output
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_n_trials_counts_this_sweeps_trials_not_the_studys():
    from types import SimpleNamespace

    from molting_mlflow.stages.sweep import _enough_trials

    C = optuna.trial.TrialState.COMPLETE
    earlier = [SimpleNamespace(number=i, state=C, user_attrs={}, system_attrs={}) for i in range(5)]
    pruned = SimpleNamespace(number=5, state=optuna.trial.TrialState.PRUNED, user_attrs={"prune_cause": STEP_PRUNED},
                             system_attrs={})
    new = SimpleNamespace(number=6, state=C, user_attrs={}, system_attrs={})

    class Study:
        stopped = False

        def __init__(self, trials):
            self.trials = trials

        def get_trials(self, deepcopy=False):
            return self.trials

        def stop(self):
            self.stopped = True

    for trials, first, stopped in (([*earlier, pruned], 5, False), ([*earlier, pruned, new], 5, False),
                                   ([*earlier, pruned, new, SimpleNamespace(**{**new.__dict__, "number": 7})], 5, True),
                                   (earlier[:2], 0, True)):
        study = Study(trials)
        _enough_trials(2, first)(study, None)
        assert study.stopped == stopped, (len(trials), first)
