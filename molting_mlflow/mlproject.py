"""MLproject, written from the configs: every field of TrainConfig, EvalConfig and SweepConfig is its entry
point's parameter, with the field's default and the type MLflow checks, and its `--option {name}` in the
command. One source: a field added to a config is a parameter here (tests/test_mlproject.py holds MLproject to
this output, and names the fields left out on purpose, CLI_ONLY).

    python -m molting_mlflow.mlproject --check     # exit 1 where MLproject is not what the configs give
    python -m molting_mlflow.mlproject --write     # write it
"""
from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from pathlib import Path

from molting_mlflow.ground.config import EvalConfig, TrainConfig
from molting_mlflow.ground.paths import PACKAGE_DIR
from molting_mlflow.ground.sweep_config import SweepConfig

MLPROJECT = PACKAGE_DIR.parent / "MLproject"
# Config fields that are no parameter, and why (none today: every setting of a run can be set under mlflow run)
CLI_ONLY: dict[str, dict[str, str]] = {"train": {}, "evaluate": {}, "sweep": {}}

HEAD = """\
# Written by `python -m molting_mlflow.mlproject --write` from the configs (TrainConfig, EvalConfig,
# SweepConfig): change a field there, not here. Help for each parameter: `molting <entry point> --help`.
name: molting-mlflow
# Without conda on the machine: `mlflow run . -e train --env-manager local` (or `uv`).
conda_env: conda.yaml

entry_points:
"""

NOTES = {
    "train": """\
    # Hyperparameters left at `preset` take the model preset's defaults (molting_mlflow/ground/presets.py);
    # the resolved values are logged as params under `train.*`.
    # dataset, questions and persona are strings, not `path`: MLflow checks a path parameter itself, after
    # creating the run and before our code starts, and a missing file left that run RUNNING for good; our
    # check ends it FAILED. A relative path is taken from the project folder. dataset and questions
    # "persona" are the files the card names, so `-P persona=examples/rosa/persona.yaml` alone trains and
    # scores Rosa (docs/own-persona.md). judge: a model that reads the answers beside the rubric (docs/judge.md).
""",
    "evaluate": """\
    # run_id: a train run; adapter: runs:/…, models:/…@alias or a folder; neither: the bare model.
    # persona, questions: "" scores against the ones the adapter's train run logged (a bare model:
    # data/persona.yaml and the questions it names).
""",
    "sweep": """\
    # Optuna over the sweep's search table (molting_mlflow/ground/sweep_config.py SEARCH_SPACE); each trial a
    # nested run; the best is registered. search: "name=values;…" overrides rows, e.g.
    # "lr=1e-4,1e-3;lora_r=8,16" or "models=tinyllama,phi3". judge_finalists: the N best read by the judge too.
""",
}

TAIL = """\
  rescore:
    # Scores logged answers again under the current rubric (no model); run_ids: space-separated, or experiment.
    parameters:
      run_ids: {type: string, default: ""}
      experiment_name: {type: string, default: ""}
    command: "python entrypoints/rescore.py {run_ids} --experiment {experiment_name}"

  diagnose:
    # Explains run_id's score (and its difference against vs) from what the runs logged.
    parameters:
      run_id: {type: string, default: ""}   # required: "" is our one line, not MLflow's
      vs: {type: string, default: ""}
    command: "python entrypoints/diagnose.py {run_id} --vs {vs}"
"""

ENTRY_POINTS = {"train": TrainConfig, "evaluate": EvalConfig, "sweep": SweepConfig}


def _param(f) -> tuple[str, str]:
    """(MLflow type, default as written) of a config field: a preset field is a string ('preset' or a
    number); a bool is a string ("true"/"false", as click reads it); numbers keep their type."""
    default = f.default if f.default is not MISSING else f.default_factory()
    if f.metadata.get("preset"):
        return "string", "preset"
    if isinstance(default, bool):
        return "string", f'"{str(default).lower()}"'
    if isinstance(default, int):
        return "int", str(default)
    if isinstance(default, float):
        return "float", f"{default:g}"
    if isinstance(default, dict):          # the sweep's search table: its string form (parse_search)
        return "string", '""'
    return "string", f'"{default}"' if default == "" or default in ("true", "false") else _relative(default)


def _relative(value: str) -> str:
    """A default path inside the project as the project folder's relative path (mlflow run starts there)."""
    p = Path(value)
    if p.is_absolute() and p.is_relative_to(MLPROJECT.parent):
        return str(p.relative_to(MLPROJECT.parent))
    return value


def entry_point(name: str, config) -> str:
    params = [f for f in fields(config) if f.name not in CLI_ONLY[name]]
    lines = [f"  {name}:", NOTES[name].rstrip("\n"), "    parameters:"]
    lines += [f"      {f.name}: {{type: {kind}, default: {default}}}" for f in params for kind, default in [_param(f)]]
    options = [f"--{f.name.replace('_', '-')} {{{f.name}}}" for f in params]
    lines.append("    command: >-")
    line = f"      python entrypoints/{name}.py"
    for opt in options:
        if len(line) + 1 + len(opt) > 116:
            lines.append(line)
            line = "      " + opt
        else:
            line += " " + opt
    lines.append(line)
    return "\n".join(lines) + "\n"


def render() -> str:
    return HEAD + "\n".join(entry_point(n, c) for n, c in ENTRY_POINTS.items()) + "\n" + TAIL


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        MLPROJECT.write_text(render(), encoding="utf-8")
        print(f"wrote {MLPROJECT}")
        return 0
    if argv == ["--check"]:
        if MLPROJECT.read_text(encoding="utf-8") == render():
            return 0
        print(f"{MLPROJECT} is not what the configs give: python -m molting_mlflow.mlproject --write", file=sys.stderr)
        return 1
    print("usage: python -m molting_mlflow.mlproject --check | --write", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
