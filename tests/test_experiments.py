"""Where the project's runs are, and what MLflow knows them as: every experiment holding them carries
MLflow's fine-tuning kind (and, with scores, a saved view of the runs by score); `molting` commands and the sweep's
reuse find runs in the experiment `mlflow run` put them in (`Default` without --experiment-name)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
from click.testing import CliRunner
from helpers import use_store
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli
from molting_mlflow.store.experiments import EXPERIMENT_KIND, ensure_experiment
from molting_mlflow.store.scoring import mark_scores_view
from molting_mlflow.store.ui_view import VIEW_NAME, VIEW_TAG

ROOT = Path(__file__).resolve().parent.parent
KIND = "mlflow.experimentKind"


def test_an_experiment_of_ours_is_finetuning_and_a_users_choice_stays():
    exp = mlflow.get_experiment(ensure_experiment("molting"))
    assert exp.tags[KIND] == EXPERIMENT_KIND[KIND] == "finetuning"
    theirs = MlflowClient().create_experiment("theirs", tags={KIND: "genai_development"})
    ensure_experiment("theirs")
    assert mlflow.get_experiment(theirs).tags[KIND] == "genai_development"


def test_an_experiment_with_scores_gets_the_view_by_score_and_a_users_view_stays():
    """scoring.log_scores marks the run's experiment (mark_scores_view); without that call no experiment has
    the view (the browser test, test_ui.py, opens it on a trained run's experiment)."""
    ours = ensure_experiment("molting")
    assert VIEW_TAG not in mlflow.get_experiment(ours).tags      # no scores yet: no view of scores
    mark_scores_view(ours)
    view = json.loads(mlflow.get_experiment(ours).tags[VIEW_TAG])
    state = json.loads(view["state"])
    assert view["name"] == VIEW_NAME and state["orderByKey"] == "metrics.`score`" and state["orderByAsc"] is False
    assert {"metrics.`score`", "metrics.`d1_identity`", "metrics.`d5_quality`"} <= set(state["selectedColumns"])
    theirs = MlflowClient().create_experiment("theirs", tags={VIEW_TAG: "{}"})
    mark_scores_view(theirs)
    assert mlflow.get_experiment(theirs).tags[VIEW_TAG] == "{}"


def test_the_same_experiment_id_in_a_second_store_gets_the_view_too(tmp_path, monkeypatch):
    """Experiment ids repeat across stores ("1" is each store's first): marking one store's "1" in this
    process must not skip another store's "1" (the suite's order hid this: each test has a new store)."""
    first = ensure_experiment("molting")
    mark_scores_view(first)
    use_store(monkeypatch, f"sqlite:///{tmp_path / 'second.db'}")
    second = ensure_experiment("molting")
    assert second == first
    mark_scores_view(second)
    assert VIEW_TAG in mlflow.get_experiment(second).tags


def mlflow_run(*params, entry="train"):
    """The design card's command as written: no --experiment-name, so the run goes to `Default`."""
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", entry, "--env-manager", "local"]
    for p in params:
        cmd += ["-P", p]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=600, cwd=ROOT)


def test_the_design_cards_commands_find_each_others_runs_without_flags(tmp_path):
    from molting_mlflow.ground.config import EvalConfig
    from molting_mlflow.ground.sweep_config import SweepConfig
    from molting_mlflow.stages.diagnose import find_baseline, load_run
    from molting_mlflow.stages.evaluate import evaluate
    from molting_mlflow.stages.sweep import sweep

    default = mlflow.get_experiment("0")       # the store's own, made here: its artifacts go under tmp_path
    assert default.name == "Default" and str(tmp_path) in default.artifact_location
    # the user's configuration, as the README reproduces it, but with `mlflow run`'s defaults
    r = mlflow_run("model=tiny-random", "seed=7", "epochs=5", "grad_accum=8", "batch_size=1", "system_prompt=none",
                   "chat_template=data/templates/gpt2_separators.jinja", "preflight=warn")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = mlflow.search_runs(experiment_ids=["0"], output_format="list")
    assert run.data.metrics["optimizer_steps"] == 50 and "score" in run.data.metrics
    assert mlflow.get_experiment("0").tags[KIND] == "finetuning"

    # molting compare, no flags: the run in Default, with where it is
    out = CliRunner().invoke(cli, ["compare"])
    assert out.exit_code == 0 and run.info.run_id[:8] in out.output and "Default" in out.output, out.output
    # a name that is not there says where the runs are
    out = CliRunner().invoke(cli, ["compare", "--experiment", "molting"])
    assert out.exit_code == 2 and "the project's runs are in 'Default'" in out.output, out.output
    out = CliRunner().invoke(cli, ["rescore"])
    assert out.exit_code == 2 and "experiments holding the project's runs: Default" in out.output, out.output

    # a baseline evaluated elsewhere is found by diagnose
    evaluate(EvalConfig(model="tiny-random", max_new_tokens=8, experiment="baselines"), log=lambda *a: None)
    base = find_baseline(load_run(run.info.run_id))
    assert base is not None and base.tags["molting.baseline"] == "true"

    # a sweep in `molting` reuses the user's configuration that `mlflow run` trained in Default
    res = sweep(SweepConfig(model="tiny-random", n_trials=1, search={"epochs": "1,3"}, min_steps=20, seed=7, register=False),
                log=lambda *a: None)
    kids = mlflow.search_runs(experiment_names=["molting"], output_format="list",
                              filter_string=f"tags.`mlflow.parentRunId` = '{res['parent_run_id']}'")
    ref = next(k for k in kids if k.data.tags["molting.reference"] == "user-original")
    assert ref.data.tags["molting.reused_run_id"] == run.info.run_id
