"""The MLproject itself, through the real `mlflow run` (tiny-random; ~10 s of mlflow overhead each)."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parent.parent


def mlflow_run(*params, entry="train"):
    from molting_mlflow.store.experiments import ensure_experiment

    ensure_experiment("molting")  # artifacts under the test's tmp dir, not the repo
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", entry, "--env-manager", "local",
           "--experiment-name", "molting"]
    for p in params:
        cmd += ["-P", p]
    # from the project root: MLflow checks `path` parameters against the working directory
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=300, cwd=ROOT)


def test_mlflow_run_train_tiny_random_then_evaluate():
    r = mlflow_run("model=tiny-random", "epochs=2", "min_steps=0", "eval_max_new_tokens=8")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    assert run.info.status == "FINISHED"
    # mlflow run logged the request under the bare names; the resolved config is under train.*
    assert run.data.params["epochs"] == "2" and run.data.params["batch_size"] == "preset"
    assert run.data.params["train.batch_size"] == "8" and run.data.metrics["optimizer_steps"] == 20
    assert "score" in run.data.metrics

    r = mlflow_run(f"run_id={run.info.run_id}", "max_new_tokens=8", entry="evaluate")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    ev = [x for x in runs if x.data.tags.get("molting.stage") == "evaluate"]
    assert len(ev) == 1 and ev[0].data.tags["molting.train_run_id"] == run.info.run_id
    # same adapter, same questions, greedy: the same scores as the train run's own evaluation
    for d in ("d1_identity", "d2_factual", "d3_voice", "d4_cleanliness", "d5_quality", "score"):
        assert ev[0].data.metrics[d] == run.data.metrics[d]


def test_mlflow_run_user_config_stops_at_preflight():
    r = mlflow_run("model=tiny-random", "epochs=5", "grad_accum=8", "batch_size=1")
    assert r.returncode != 0
    assert "50 optimizer steps" in r.stdout + r.stderr
    (run,) = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    assert run.info.status == "FAILED" and run.data.tags["molting.preflight"] == "fail"


def test_mlflow_run_sweep_nests_every_trial_under_the_run_mlflow_made():
    """`mlflow run` hands its run over in MLFLOW_RUN_ID; the first trial must still be a child."""
    r = mlflow_run("model=tiny-random", "n_trials=2", "search=epochs=1,2", "min_steps=10", "register=false", "seed=3",
                   entry="sweep")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    (parent,) = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    assert parent.data.tags["molting.stage"] == "sweep" and "optimizer_steps" not in parent.data.metrics
    kids = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(kids) == len(runs) - 1 >= 2
    assert any(k.data.tags.get("molting.reference") == "user-original" and k.data.tags["molting.trial"] == "0"
               for k in kids)


def test_mlproject_train_parameters_are_trainconfig_fields_passed_through():
    """One set of names: every train parameter is a TrainConfig field and reaches the CLI option."""
    import yaml

    from molting_mlflow.ground.config import TrainConfig

    spec = yaml.safe_load((ROOT / "MLproject").read_text(encoding="utf-8"))["entry_points"]["train"]
    fields = set(TrainConfig.__dataclass_fields__)
    for name in spec["parameters"]:
        assert name in fields, name
        assert f"--{name.replace('_', '-')} {{{name}}}" in spec["command"], name
    for name in TrainConfig.preset_fields():
        assert spec["parameters"][name]["default"] == "preset", name


def _mlproject_default(f, raw):
    """An MLproject default as the config field's value: 'preset' is None, "true" a bool, a relative path
    the project folder's file, `search`'s string the table it parses to."""
    from dataclasses import MISSING

    import click

    from molting_mlflow.ground.sweep_config import parse_search

    default = f.default if f.default is not MISSING else f.default_factory()
    if f.metadata.get("preset") and raw == "preset":
        return None
    if isinstance(default, bool):
        return click.BOOL.convert(raw, None, None)
    if f.name == "search":
        return parse_search(raw)
    if f.name in ("dataset", "questions", "persona"):      # 'persona' and '': the card's files, the run's own
        return raw if raw in ("persona", "") else (ROOT / raw).resolve()
    return type(default)(raw)


def test_mlproject_defaults_are_the_configs_defaults():
    """MLproject is a second file: each entry point's defaults must be its config's (TrainConfig,
    EvalConfig, SweepConfig), and rescore's and diagnose's the CLI's own. Fails when one side moves
    alone, e.g. `seed: {type: int, default: 43}` in MLproject, or config.DEFAULT_MIN_STEPS = 160."""
    from dataclasses import fields

    import click
    import yaml

    from molting_mlflow.cli import cli
    from molting_mlflow.ground.config import EvalConfig, TrainConfig
    from molting_mlflow.ground.sweep_config import SweepConfig

    entry_points = yaml.safe_load((ROOT / "MLproject").read_text(encoding="utf-8"))["entry_points"]
    assert set(entry_points) == {"train", "evaluate", "sweep", "rescore", "diagnose"}
    for entry, cls in (("train", TrainConfig), ("evaluate", EvalConfig), ("sweep", SweepConfig)):
        by_name, defaults = {f.name: f for f in fields(cls)}, cls()
        for name, spec in entry_points[entry]["parameters"].items():
            want = getattr(defaults, name)
            if name in ("dataset", "questions", "persona") and want not in ("persona", ""):
                want = Path(want).resolve()
            assert _mlproject_default(by_name[name], str(spec["default"])) == want, (entry, name, spec, want)
    # rescore and diagnose have no config: their MLproject defaults are the options' ("" for none)
    for entry, option_of in (("rescore", {"run_ids": "run_ids", "experiment_name": "experiment"}),
                             ("diagnose", {"run_id": "run_id", "vs": "vs"})):
        command = cli.commands[entry]
        ctx = click.Context(command)
        params = {p.name: p.get_default(ctx) for p in command.params}   # None, (), click's UNSET: none
        for name, spec in entry_points[entry]["parameters"].items():
            if "default" in spec:
                given = params[option_of[name]]
                assert spec["default"] == (given if isinstance(given, str) else ""), (entry, name, given)


def test_mlflow_run_with_a_missing_dataset_ends_its_run_failed():
    """MLflow made the run before our code started; the missing file must end it FAILED, not RUNNING."""
    r = mlflow_run("model=tiny-random", "dataset=/nonexistent/data.json")
    assert r.returncode != 0
    assert "Error: /nonexistent/data.json: dataset file not found" in r.stderr
    (run,) = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    assert run.info.status == "FAILED" and "dataset file not found" in run.data.tags["molting.error"]


def test_mlflow_run_with_a_hostile_chat_template_is_one_line_and_failed(tmp_path):
    """Through MLflow's runner too: our one line, no traceback (MLflow adds its own '=== Run … failed ===')."""
    template = tmp_path / "escape.jinja"
    template.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}", encoding="utf-8")
    r = mlflow_run("model=tiny-random", f"chat_template={template}")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "tries to leave Jinja's sandbox" in errors[0], r.stderr[-3000:]
    (run,) = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    assert run.info.status == "FAILED" and "tries to leave Jinja's sandbox" in run.data.tags["molting.error"]


def test_every_config_field_is_a_parameter_or_said_cli_only():
    """Both ways: each field of TrainConfig, EvalConfig and SweepConfig is its entry point's parameter
    (and reaches its option), unless mlproject.CLI_ONLY names it with a reason; and MLproject is exactly what
    `python -m molting_mlflow.mlproject --write` gives. Fails when a field is added to a config alone (e.g.
    warmup_ratio, EvalConfig.batch_size and SweepConfig.heartbeat_s were once missing, and nothing said so)."""
    from dataclasses import fields

    import yaml

    from molting_mlflow import mlproject

    spec = yaml.safe_load((ROOT / "MLproject").read_text(encoding="utf-8"))["entry_points"]
    for entry, config in mlproject.ENTRY_POINTS.items():
        for f in fields(config):
            if f.name in mlproject.CLI_ONLY[entry]:
                assert mlproject.CLI_ONLY[entry][f.name], f"{entry}.{f.name}: CLI-only without a reason"
                continue
            assert f.name in spec[entry]["parameters"], f"{entry}: config field {f.name} has no MLproject parameter"
            assert f"--{f.name.replace('_', '-')} {{{f.name}}}" in spec[entry]["command"], f.name
    assert mlproject.main(["--check"]) == 0


@pytest.mark.slow          # two `mlflow run`s: ~40 s each on an idle 2-core machine, minutes on a busy one
def test_mlflow_run_notes_the_experiment_only_where_it_fell_back_on_default():
    """`mlflow run --experiment-name espanol` put the run where the user said: no "put this run in
    experiment" note. Without --experiment-name the runner uses `Default`, not the project's `molting`:
    that note is said, with the flag that fixes it. Fails when tracking.stage_run notes every experiment
    other than `experiment` (the user's own name too), or none."""
    from mlflow.tracking import MlflowClient

    from molting_mlflow.store.experiments import ensure_experiment

    ensure_experiment("espanol")                  # made here: artifacts under the test's tmp dir
    MlflowClient().get_experiment("0")            # `Default` too
    train = [sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local"]
    params = ["-P", "model=tiny-random", "-P", "min_steps=0", "-P", "epochs=1", "-P", "evaluate=false"]
    for named, noted in ((["--experiment-name", "espanol"], False), ([], True)):
        r = subprocess.run(train + named + params, capture_output=True, text=True, env={**os.environ}, timeout=300,
                           cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        out = r.stdout + r.stderr
        assert ("`mlflow run` put this run in experiment" in out) is noted, out[-3000:]
    assert "molting: note: `mlflow run` put this run in experiment 'Default', not 'molting'; pass --experiment-name " \
           "molting to mlflow run to keep runs together" in out
    runs = [mlflow.search_runs(experiment_names=[e], output_format="list") for e in ("espanol", "Default")]
    assert [len(r) for r in runs] == [1, 1]
