"""Hostile input (issue 24): every failure a user can cause is one line naming the problem and the fix,
exit 2, no traceback, no run left RUNNING; errors derive from one base (errors.MoltingError) and
MOLTING_DEBUG=1 shows the traceback. tiny-random throughout; the `mlflow run` cases are in test_faults.py.
"""
import json
import os
import re
import shutil
import sqlite3
import struct
import sys
import time
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from helpers import made_read_only, use_store
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli
from molting_mlflow.ground.errors import MoltingError

TINY = ["--model", "tiny-random"]
DATA = Path(__file__).resolve().parent.parent / "data"
TURNS = [{"role": "user", "content": "Quem é você?"}, {"role": "assistant", "content": "Sou o Cláudio."}]


def one_line(r, code: int = 2) -> str:
    """The command's whole output: one line, no traceback, the exit code."""
    assert r.exit_code == code, r.output[-3000:]
    assert "Traceback" not in r.output, r.output[-3000:]
    lines = [line for line in r.output.splitlines() if line.strip() and not line.startswith("molting: ")
             and not re.match(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow", line)]   # MLflow's store creation
    assert len(lines) == 1, r.output[-3000:]
    return lines[0]


def nothing_running():
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert "RUNNING" not in {r.info.status for r in runs}, [r.info.status for r in runs]


# ---------------------------------------------------------------------------------------------
# One base class, shown as one line; MOLTING_DEBUG=1 re-raises
# ---------------------------------------------------------------------------------------------

def test_every_user_error_class_derives_from_the_base():
    from molting_mlflow.ground.config import ConfigError
    from molting_mlflow.ground.data import DatasetError
    from molting_mlflow.ground.models import AdapterError, ModelError, WeightsNotFound
    from molting_mlflow.ground.persona import PersonaError
    from molting_mlflow.ground.rehearsal import RehearsalError
    from molting_mlflow.ground.questions import RubricInputError
    from molting_mlflow.ground.runtime import PlanError
    from molting_mlflow.ground.templates import ChatTemplateError
    from molting_mlflow.stages.diagnose import DiagnoseError
    from molting_mlflow.stages.sweep import SweepFailed
    from molting_mlflow.stages.train import PreflightFailed, TrainingDiverged
    from molting_mlflow.store.reaper import StoreUnreachable, StoreUnwritable

    for cls in (ConfigError, DatasetError, DiagnoseError, AdapterError, ModelError, WeightsNotFound, PersonaError,
                StoreUnreachable, StoreUnwritable, RehearsalError, RubricInputError, PlanError, SweepFailed,
                ChatTemplateError, PreflightFailed, TrainingDiverged):
        assert issubclass(cls, MoltingError), cls


def test_a_new_error_class_is_one_line_without_being_listed(monkeypatch):
    """The CLI knows the base, not a list: an error class it has never seen still gets one line."""
    class BrandNew(MoltingError):
        pass

    def fail(*a, **kw):
        raise BrandNew("the new thing is wrong; do the new fix\nand a second line, kept on the one")

    monkeypatch.setattr("molting_mlflow.stages.diagnose.diagnose", fail)
    assert one_line(CliRunner().invoke(cli, ["diagnose", "abc"])) == \
        "Error: the new thing is wrong; do the new fix\\nand a second line, kept on the one"


def test_molting_debug_re_raises_with_the_traceback(monkeypatch):
    monkeypatch.setenv("MOLTING_DEBUG", "1")
    r = CliRunner().invoke(cli, ["preflight", *TINY, "--dataset", "missing.json"])
    from molting_mlflow.ground.data import DatasetError

    assert isinstance(r.exception, DatasetError) and r.exc_info[2] is not None


def test_ctrl_c_before_the_attached_run_opens_ends_it_killed(monkeypatch):
    """Ctrl-C while pre-flight runs, under `mlflow run` (MLFLOW_RUN_ID set, the run not yet attached)."""
    from molting_mlflow.store.experiments import ensure_experiment

    run = MlflowClient().create_run(ensure_experiment("molting"))
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr("molting_mlflow.stages.train.prepare", interrupted)
    r = CliRunner().invoke(cli, ["train", *TINY])
    assert r.exit_code != 0
    got = MlflowClient().get_run(run.info.run_id)
    assert got.info.status == "KILLED" and got.data.tags["molting.error"] == "interrupted"


# ---------------------------------------------------------------------------------------------
# Datasets and persona cards
# ---------------------------------------------------------------------------------------------

def test_dataset_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "data").mkdir()
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--dataset", str(tmp_path / "data")]))
    assert "is a directory, not a dataset file" in line and "not found" not in line


def test_json_nested_200000_deep_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    assert "nested deeper than the parser's limit" in one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--dataset", str(deep)]))
    deep.write_text('{"messages": ' + "[" * 200_000 + "]" * 200_000 + "}\n")   # JSONL
    assert "(line 1)" in one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--dataset", str(deep)]))


@pytest.mark.parametrize("tag", ["!!python/object:os.system {}", "!!python/object/apply:os.system ['echo owned']"])
def test_persona_card_with_a_python_tag_says_the_tag_is_refused(tmp_path, tag):
    card = tmp_path / "persona.yaml"
    card.write_text(f"name: {tag}\nsystem_prompt: x\n", encoding="utf-8")
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--persona", str(card)]))
    assert f"line 1: the YAML tag {tag.split()[0]} is refused" in line and "UTF-8" not in line, line


@pytest.mark.parametrize("turns,problem", [
    ([TURNS[1], TURNS[0], TURNS[1]], "example 1: the first turn after the system prompt is 'assistant'"),
    ([TURNS[0], TURNS[0], TURNS[1]], "example 1: turns 0 and 1 are both 'user'"),
    ([{"role": "system", "content": "s"}, TURNS[0], TURNS[1], TURNS[1]], "example 1: turns 2 and 3 are both"),
])
def test_turns_out_of_order_are_a_preflight_error(tmp_path, turns, problem):
    ds = tmp_path / "ds.jsonl"
    ds.write_text(json.dumps({"messages": TURNS}) + "\n" + json.dumps({"messages": turns}) + "\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["preflight", *TINY, "--dataset", str(ds)])
    assert r.exit_code == 1, r.output
    assert "[error] turn_order: 1 of 2 examples break the turn order" in r.output and problem in r.output, r.output


def test_turns_in_order_raise_no_turn_order_finding(tmp_path):
    ds = tmp_path / "ds.jsonl"
    ds.write_text(json.dumps({"messages": [*TURNS, *TURNS]}) + "\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["preflight", *TINY, "--dataset", str(ds), "--min-steps", "0"])
    assert "turn_order" not in r.output and r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------
# Pre-flight bounds from the data and the model
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,finding,fix", [
    (["--epochs", "1000000000"], "[error] epochs_bound: epochs=1000000000 passes over 79 examples", "Fix: epochs=15"),
    (["--lora-r", "1000000"], "[error] lora_rank_bound: lora_r=1000000 exceeds 32", "Fix: lora_r=16"),
    (["--epochs", "10000000000"], "[error] time_bound: training needs at least", "Fix: epochs=15"),
])
def test_absurd_plans_are_preflight_errors_with_their_fix(args, finding, fix):
    r = CliRunner().invoke(cli, ["preflight", *TINY, *args])
    assert r.exit_code == 1, r.output
    line = next((line for line in r.output.splitlines() if finding in line), None)
    assert line is not None and fix in line, r.output


def test_absurd_plan_stops_train_before_a_weight_loads():
    r = CliRunner().invoke(cli, ["train", *TINY, "--lora-r", "1000000"])
    assert r.exit_code == 2 and "Error: pre-flight failed" in r.output and "lora_r=1000000 exceeds" in r.output
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.status == "FAILED" and "loss" not in run.data.metrics


def test_a_sane_plan_has_no_bound_finding():
    r = CliRunner().invoke(cli, ["preflight", *TINY, "--epochs", "200", "--lora-r", "32"])
    assert "_bound" not in r.output and r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------
# Chat templates: syntax errors, raise_exception and sandbox escapes
# ---------------------------------------------------------------------------------------------

HOSTILE_TEMPLATES = [
    ("{% for m in messages %}{{ m.content }", "Jinja syntax error on line 1"),
    ("{{ raise_exception('only system turns here') }}", "refuses a user/assistant conversation (only system"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "tries to leave Jinja's sandbox"),
    ("{{ cycler.__init__.__globals__.os.system('id') }}", "tries to leave Jinja's sandbox"),
    ("{% include '/etc/passwd' %}", "reads another file"),
    ("{{ messages[0]['content'] / 0 }}", "fails to render (TypeError"),
    ("{{ ''.__class__ }}", "without the user and assistant turn's text"),
]


@pytest.mark.parametrize("template,expected", HOSTILE_TEMPLATES, ids=[e.split()[0] for _, e in HOSTILE_TEMPLATES])
def test_hostile_training_template_is_one_line(tmp_path, template, expected):
    f = tmp_path / "t.jinja"
    f.write_text(template, encoding="utf-8")
    line = one_line(CliRunner().invoke(cli, ["train", *TINY, "--chat-template", str(f)]))
    assert line.startswith(f"Error: chat_template={f}: ") and expected in line, line
    assert "root:" not in line
    nothing_running()


# ---------------------------------------------------------------------------------------------
# Damaged adapter folders, in `molting chat` and `molting evaluate`
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """One tiny-random adapter folder, trained once for the module."""
    from helpers import store_in

    folder = tmp_path_factory.mktemp("adapter")
    with store_in(folder):
        r = CliRunner().invoke(cli, ["train", *TINY, "--epochs", "1", "--min-steps", "0", "--evaluate", "false"])
        assert r.exit_code == 0, r.output
        run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
        out = folder / "adapter"
        shutil.copytree(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/adapter"), out)
    return out


def _damage(folder, how):
    weights, config = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "random":
        weights.write_bytes(os.urandom(len(data)))
    elif how == "huge header":
        weights.write_bytes(struct.pack("<Q", 2**62) + data[8:])   # a header length of 4 EiB
    elif how == "config not JSON":
        config.write_text("{not json", encoding="utf-8")
    elif how == "molting.json not JSON":
        (folder / "molting.json").write_text("[1, 2", encoding="utf-8")
    elif how == "unknown precision":
        meta = json.loads((folder / "molting.json").read_text())
        (folder / "molting.json").write_text(json.dumps({**meta, "precision": "fp7"}))
    elif how == "hostile template":
        (folder / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}", encoding="utf-8")
    elif how == "targets the base lacks":    # peft's NoMatchingPeftModuleError was a traceback
        cfg = json.loads(config.read_text())
        config.write_text(json.dumps({**cfg, "target_modules": ["no_such_module"]}))
    elif how == "rank the weights lack":     # torch's size mismatch from load_state_dict was a traceback
        cfg = json.loads(config.read_text())
        config.write_text(json.dumps({**cfg, "r": cfg["r"] * 2}))


DAMAGE = [("truncated", "not a readable safetensors file (Error while deserializing header: incomplete metadata"),
          ("random", "not a readable safetensors file"),
          ("huge header", "not a readable safetensors file (Error while deserializing header: header too large"),
          ("config not JSON", "adapter_config.json: not a JSON object (JSONDecodeError)"),
          ("molting.json not JSON", "molting.json: not a JSON object (JSONDecodeError)"),
          ("unknown precision", "records precision 'fp7', which is none of"),
          ("hostile template", "its chat template: the template tries to leave Jinja's sandbox"),
          ("targets the base lacks", "does not fit its base tiny-random (Target modules {'no_such_module'} not found"),
          ("rank the weights lack", "does not fit its base tiny-random (Error(s) in loading state_dict")]


# every damage through chat (no store: fast); through evaluate (a fresh store each: ~5 s), one of each file
CASES = [("chat", how, expected) for how, expected in DAMAGE] + [
    ("evaluate", how, expected) for how, expected in DAMAGE if how in ("truncated", "config not JSON", "hostile template")]


@pytest.mark.parametrize("command,how,expected", CASES, ids=[f"{c}-{h}" for c, h, _ in CASES])
def test_damaged_adapter_is_one_line(adapter, tmp_path, how, expected, command):
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    _damage(folder, how)
    args = ["chat", "--model", str(folder), "Quem é você?"] if command == "chat" else ["evaluate", "--adapter",
                                                                                         str(folder)]
    line = one_line(CliRunner().invoke(cli, args))
    assert expected in line, line
    nothing_running()


def test_adapter_on_another_base_revision_is_a_clear_warning(adapter, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    meta = json.loads((folder / "molting.json").read_text())
    (folder / "molting.json").write_text(json.dumps({**meta, "model.revision": "gguf-sha256:0123456789abcdef"}))
    r = CliRunner().invoke(cli, ["chat", "--model", str(folder), "--max-new-tokens", "2", "Oi"])
    assert r.exit_code == 0, r.output
    assert ("warning: adapter" in r.output and "trained on tiny-random revision gguf-sha256:0123456789abcdef, but this "
            "machine resolves tiny-random to revision random-init") in r.output, r.output
    r = CliRunner().invoke(cli, ["chat", "--model", str(adapter), "--max-new-tokens", "2", "Oi"])
    assert r.exit_code == 0 and "warning" not in r.output, r.output


# ---------------------------------------------------------------------------------------------
# MLflow failures by their error codes: a refusal is not "not found"
# ---------------------------------------------------------------------------------------------

def _denied(*a, **kw):
    raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)


@pytest.mark.parametrize("target,args", [
    ("molting_mlflow.stages.registry.list_versions", ["registry", "--name", "molting-smol"]),
    ("mlflow.tracking.MlflowClient.get_run", ["diagnose", "0123456789abcdef0123456789abcdef"]),
    ("mlflow.tracking.MlflowClient.get_run", ["rescore", "0123456789abcdef0123456789abcdef"]),
    ("molting_mlflow.stages.registry.promote", ["promote", "molting-smol", "1"]),
    ("mlflow.artifacts.download_artifacts", ["evaluate", "--adapter", "runs:/0123456789abcdef0123456789abcdef/adapter"]),
])
def test_a_refusal_is_reported_as_a_refusal_not_as_not_found(monkeypatch, target, args):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ana")
    monkeypatch.setattr(target, _denied)
    line = one_line(CliRunner().invoke(cli, args))
    assert "user 'ana' may not do this (HTTP 403)" in line and "not found" not in line and "sweep first" not in line, line


def test_not_found_is_still_not_found():
    assert "run a sweep first" in one_line(CliRunner().invoke(cli, ["registry", "--name", "nope"]))
    assert "not found" in one_line(CliRunner().invoke(cli, ["diagnose", "0123456789abcdef0123456789abcdef"]))
    r = CliRunner().invoke(cli, ["evaluate", "--adapter", "runs:/0123456789abcdef0123456789abcdef/adapter"])
    assert "not found" in one_line(r)


# ---------------------------------------------------------------------------------------------
# The store: read-only, locked
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    """The test's SQLite store, made (and migrated) up front."""
    MlflowClient().search_experiments()
    return tmp_path / "mlflow.db"


@pytest.fixture
def read_only(store):
    """The store made read-only for this process (helpers.made_read_only)."""
    with made_read_only(store):
        yield store


@pytest.mark.parametrize("args", [["train", *TINY, "--epochs", "1", "--min-steps", "0"], ["evaluate", *TINY],
                                  ["rescore", "0123456789abcdef0123456789abcdef"]])
def test_read_only_store_is_one_line_before_any_work(read_only, args):
    line = one_line(CliRunner().invoke(cli, args))
    assert line == (f"Error: the tracking store {read_only} is read-only for this process; make it writable "
                    "(chmod u+w, chattr -i; its folder too) or point MLFLOW_TRACKING_URI at a store you can write")


def test_read_only_store_still_reads(read_only):
    assert CliRunner().invoke(cli, ["compare"]).exit_code == 0


def test_locked_store_is_one_line_within_seconds(store, monkeypatch):
    import time

    from molting_mlflow.store import reaper

    monkeypatch.setattr(reaper, "LOCK_WAIT_S", 1)
    holder = sqlite3.connect(store, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.time()
        line = one_line(CliRunner().invoke(cli, ["evaluate", *TINY]))
        assert time.time() - t0 < 20
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert f"the tracking store {store} is locked by another process (waited 1 s)" in line, line
    nothing_running()


def test_store_gone_read_only_mid_command_is_one_line(monkeypatch):
    """A write MLflow makes after the check (the store turned read-only under it): SQLite's code, not words."""
    from molting_mlflow.cli import _world_error

    cause = sqlite3.OperationalError("attempt to write a readonly database")
    cause.sqlite_errorcode = sqlite3.SQLITE_READONLY
    wrapped = MlflowException("(sqlite3.OperationalError) whatever the words", error_code="TEMPORARILY_UNAVAILABLE")
    wrapped.__cause__ = cause
    assert "is read-only for this process" in _world_error(wrapped)
    cause.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert _world_error(wrapped) is None


# ---------------------------------------------------------------------------------------------
# A sweep in which no trial completes exits non-zero
# ---------------------------------------------------------------------------------------------

def test_sweep_with_no_completed_trial_exits_non_zero(monkeypatch):
    """Every trial fails (here its training raises): the sweep exits 2 with the count and the first
    reason, and its parent run ends FAILED. (A search that cannot reach min_steps at all is refused
    earlier, before any trial: sweep.check_reach, tests/test_sweep.py.)"""
    def broken(*a, **kw):
        raise RuntimeError("boom in training")

    monkeypatch.setattr("molting_mlflow.stages.sweep.train", broken)   # the name the sweep calls
    r = CliRunner().invoke(cli, ["sweep", *TINY, "--n-trials", "1", "--enqueue-user", "false",
                                 "--register", "false", "--study-name", "all-failed"])
    assert r.exit_code == 2, r.output
    line = next(line for line in r.output.splitlines() if line.startswith("Error:"))
    assert line.startswith("Error: no trial of study 'all-failed' completed (0 pruned, 1 failed of 1 run"), line
    assert "boom in training" in line, line
    parent = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()],
                                        "tags.`molting.stage` = 'sweep'")[0]
    assert parent.info.status == "FAILED" and parent.data.tags["molting.error"].startswith("no trial of study")
    nothing_running()


# ---------------------------------------------------------------------------------------------
# Round 3 (a corpus outside the repo, 2026-12-02): what it found, held here
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row,expected", [
    ('{"messages": [{"role": "user", "content": "oi \\ud83e"}, {"role": "assistant", "content": "olá"}]}',
     "turn 0 (user) content holds an unpaired UTF-16 surrogate (\\ud83e at character 3)"),   # was a TypeError
    ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "oi"}]}, '
     '{"role": "assistant", "content": "olá"}]}', "write the turn's text as one string"),
    ('{"messages": null}', "'messages' must be a list of {role, content} objects; an example reads {\"messages\""),
    ('{"messages": [null]}', "turn 0 must be an object with 'role' and 'content'; an example reads"),
    ('{"prompt": [], "completion": []}', "no turns; an example reads"),
])
def test_a_dataset_row_the_corpus_broke_names_its_fix(tmp_path, row, expected):
    ds = tmp_path / "ds.jsonl"
    ds.write_text(row + "\n", encoding="utf-8")
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--min-steps", "0", "--dataset", str(ds)]))
    assert expected in line, line


def test_a_file_the_os_will_not_open_is_one_line(tmp_path, monkeypatch):
    """Permission denied on the dataset was a PermissionError traceback (the corpus ran as `nobody`; the
    suite may run as root, whom chmod does not stop, so the OS's refusal is simulated)."""
    ds = tmp_path / "ds.jsonl"
    ds.write_text(json.dumps({"messages": TURNS}) + "\n", encoding="utf-8")
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if self == ds else real(self))
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--dataset", str(ds)]))
    assert line.endswith(f"{ds}: cannot read it (Permission denied); make it readable (chmod u+r) or pass another file")


def test_a_path_with_a_line_break_stays_one_line(tmp_path):
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--dataset", str(tmp_path / "no\nsuch.jsonl")]))
    assert "no\\nsuch.jsonl: dataset file not found; pass dataset=" in line


def test_a_yaml_alias_bomb_quoted_in_an_error_is_cut_to_a_line(tmp_path):
    """'billion laughs' in a field: each level 9 aliases of the one before, 6 levels = 9^6 'lol's (~4 MB as
    text); the error quoted the value whole (the corpus's 7 levels: one line of 39 MB). Now it names the
    field's form and quotes nothing of it."""
    levels = ["&a [" + ", ".join(["lol"] * 9) + "]"]
    for prev, name in zip("abcde", "bcdef"):
        levels.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    card = tmp_path / "p.yaml"
    ours = (DATA / "persona.yaml").read_text(encoding="utf-8")
    card.write_text(re.sub(r"(?m)^language: .*$", f"language: [{', '.join(levels)}]", ours), encoding="utf-8")
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--persona", str(card)]))
    assert len(line) < 1100 and "field 'language' must be an ISO 639-1 code" in line, line[:300]


@pytest.mark.parametrize("card,expected", [
    ("name: [a, b]\nsystem_prompt: x\nlanguage: pt\n", "field 'name' must be a non-empty string; write it as `name: <text>`"),
    ("name: X\nlanguage: pt\n", "missing field 'system_prompt'; add it to the card (data/persona.yaml shows every field)"),
])
def test_a_card_field_the_corpus_broke_names_its_fix(tmp_path, card, expected):
    p = tmp_path / "p.yaml"
    p.write_text(card, encoding="utf-8")
    assert expected in one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--persona", str(p)]))


@pytest.mark.parametrize("args,expected", [
    (["train", *TINY, "--seed", str(2**64)], "seed=18446744073709551616 is invalid: expected a whole number in "
                                            "0..4294967295"),                  # numpy's ValueError, mid-run
    (["sweep", *TINY, "--heartbeat-s", "0"], "heartbeat_s=0 is invalid"),     # optuna's ValueError
    (["chat", "--model", "tiny-random", "--max-new-tokens", "0", "Oi"], "'--max-new-tokens': 0 is not in the range"),
    (["compare", "--csv", "/nonexistent/dir/x.csv"], "--csv /nonexistent/dir/x.csv: cannot write it ("),
])
def test_a_bound_or_an_output_path_the_corpus_broke_is_one_line(args, expected):
    line = one_line(CliRunner().invoke(cli, args))
    assert expected in line, line
    nothing_running()


def test_a_template_macro_that_calls_itself_is_one_line(tmp_path):
    t = tmp_path / "t.jinja"
    t.write_text("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", encoding="utf-8")     # was a RecursionError
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--chat-template", str(t)]))
    assert "the template recurses without end" in line, line


# Loops nested in each other: each range() is within the sandbox's 100,000, their product is 10^10 iterations.
# Without templates._time_bound the first (no output at all) renders for hours and the second for minutes.
ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% set x = i * j %}{% endfor %}{% endfor %}"
HUGE = "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}{{ messages[0].content }}{{ messages[1].content }}"


@pytest.mark.parametrize("template,expected", [
    (ENDLESS, "renders a two-turn conversation for more than 1 s (loops without bound)"),
    (HUGE, "renders a two-turn conversation into 10,000,0"),
    ("{{ 'x' * 10 ** 15 }}", "builds a text larger than memory"),
], ids=["endless", "huge", "memory"])
def test_a_template_that_renders_without_bound_is_one_line(tmp_path, monkeypatch, template, expected):
    import molting_mlflow.ground.templates as templates

    monkeypatch.setattr(templates, "RENDER_S", 1.0)
    t = tmp_path / "t.jinja"
    t.write_text(template, encoding="utf-8")
    started = time.monotonic()
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--chat-template", str(t)]))
    assert expected in line, line
    assert time.monotonic() - started < 60


def test_the_render_bound_puts_back_a_tracer_already_set():
    from molting_mlflow.ground.templates import _time_bound

    def tracer(frame, event, arg):
        return None

    before = sys.gettrace()       # coverage's, under a coverage run
    sys.settrace(tracer)
    try:
        with _time_bound(1.0):
            pass
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(before)


@pytest.mark.parametrize("uri,expected", [
    ("foo://x", "the tracking store foo://x cannot be opened (UnsupportedModelRegistryStoreURIException"),
    ("file:///proc/molting", "the tracking store file:///proc/molting cannot be opened (MlflowException: The "
                             "filesystem tracking backend"),
])
def test_a_tracking_uri_mlflow_cannot_open_is_one_line(monkeypatch, uri, expected):
    from helpers import use_store

    use_store(monkeypatch, uri)
    line = one_line(CliRunner().invoke(cli, ["train", *TINY]))
    assert expected in line and "secret" not in line, line


def test_an_artifact_folder_the_os_refuses_is_one_line():
    """Run as a user who may not write the folder it runs in (the corpus ran as `nobody`): MLflow's
    PermissionError creating ./mlruns was a traceback; the CLI's reading of it is tested directly."""
    from molting_mlflow.cli import _world_error

    msg = _world_error(PermissionError(13, "Permission denied", "/work/x/mlruns"))
    assert msg.startswith("/work/x/mlruns: Permission denied; run from a folder you can write"), msg
    assert _world_error(OSError(5, "Input/output error", "/x")) is None     # not a fault the user fixes this way


@pytest.mark.parametrize("mode", ["strict", "warn"])
def test_a_limit_that_leaves_no_answer_token_stops_train_even_with_warn(mode):
    """max_seq_len=48: every prompt (tiny-random's: 43 tokens of system prompt, then the question; 60 to 75) fills
    it, TRL dropped every example and training stopped on an IndexError traceback; a pre-flight error that even
    preflight=warn does not pass. (Under 43 the system prompt alone is too long: prepare's own error, above.)"""
    r = CliRunner().invoke(cli, ["train", *TINY, "--min-steps", "0", "--max-seq-len", "48", "--preflight", mode])
    (line,) = [x for x in r.output.splitlines() if x.startswith("Error: ")]     # pre-flight's report besides
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output[-2000:]
    assert "79 of 79 examples have a prompt of max_seq_len=48 tokens or more" in line and "Fix: max_seq_len=" in line
    assert "trains anyway" not in line
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.status == "FAILED" and "loss" not in run.data.metrics


def test_a_sweep_storage_that_is_no_url_is_one_line_before_a_run():
    line = one_line(CliRunner().invoke(cli, ["sweep", *TINY, "--n-trials", "1", "--storage", "notaurl"]))
    assert "storage='notaurl' is invalid: expected a SQLAlchemy URL" in line      # was SQLAlchemy's ArgumentError
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


@pytest.mark.parametrize("args", [
    ["train", *TINY],                                                                     # the tracking store
    ["sweep", *TINY, "--n-trials", "1", "--storage", "postgresql+psycopg2://u:secret@127.0.0.1:1/x"],   # Optuna's
])
def test_a_database_that_refuses_connections_is_one_line_in_seconds(monkeypatch, args):
    """MLflow's engine retried a refused PostgreSQL connection for ~100 s, then raised a traceback."""
    from helpers import use_store

    if args[0] == "train":
        use_store(monkeypatch, "postgresql+psycopg2://u:secret@127.0.0.1:1/db")
    line = one_line(CliRunner().invoke(cli, args))
    assert "127.0.0.1:1/" in line and "is not reachable (Connection refused); start the database" in line, line
    assert "secret" not in line


def test_chat_ends_at_the_end_of_its_input(adapter):
    """Ctrl-D (or piped input running out) ends the conversation as an empty line does: it said 'Aborted!', exit 1."""
    r = CliRunner().invoke(cli, ["chat", "--model", str(adapter), "--max-new-tokens", "2"], input="")
    assert r.exit_code == 0 and "Aborted" not in r.output, r.output


def test_a_model_folder_without_a_usable_tokenizer_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "nonexistent-arch", "vocab_size": -1}')
    line = one_line(CliRunner().invoke(cli, ["preflight", "--model", str(tmp_path)]))
    assert f"no usable tokenizer in {tmp_path}" in line, line


def test_the_rescore_entry_point_takes_space_separated_ids(tmp_path):
    """MLflow quotes run_ids="<a> <b>" into one argument; the entry point read it as one id."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "entrypoints" / "rescore.py"), f"{'a' * 32} {'f' * 32}", "--experiment", ""],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ}, timeout=120)
    assert "aaaaaaaa: skipped: not found" in r.stdout and "ffffffff: skipped: not found" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, str(root / "entrypoints" / "rescore.py"), "", "--experiment", ""],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ}, timeout=120)
    assert r.returncode == 2 and "give run ids or --experiment <name>" in r.stderr, r.stderr


def test_an_exception_without_a_message_still_has_a_first_line():
    # str(e).splitlines()[0] was an IndexError for `raise X()` (cli's registry errors, the reaper's notes)
    from molting_mlflow.ground.errors import first_line

    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("  \n  ")) == "ValueError"
    assert first_line(ValueError("first\nsecond"), 3) == "fir"


@pytest.mark.parametrize("body,expected", [
    (b"name: [x, y\nlanguage: pt\n", "not valid YAML at line 2, column 9 (expected ',' or ']', but got ':'); fix the "
                                     "card's syntax"),
    (b"\xff\xfename: x\n", "not UTF-8 text (byte 0xff at offset 0); save the card as UTF-8"),
    (b"- a\n- b\n", "expected a mapping of persona fields at top level, got list; write the card as `field: value`"),
], ids=["syntax", "not-utf8", "a-list"])
def test_a_card_that_is_not_a_yaml_mapping_says_where_and_the_fix(tmp_path, body, expected):
    # round 4's corpus: "not valid UTF-8 YAML (while parsing a flow sequence)" named neither the place nor a fix
    card = tmp_path / "p.yaml"
    card.write_bytes(body)
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--persona", str(card)]))
    assert line.startswith(f"Error: {card}: {expected}"), line


def test_a_system_prompt_longer_than_max_seq_len_is_one_line_before_the_dataset_is_tokenized(tmp_path):
    # round 4's corpus: a 1 MB system_prompt rendered into each of 79 examples twice ran past 120 s
    card = tmp_path / "p.yaml"
    text = (DATA / "persona.yaml").read_text(encoding="utf-8")
    card.write_text(re.sub(r"(?m)^system_prompt:.*$", "system_prompt: " + "palavra " * 5000, text, count=1),
                    encoding="utf-8")
    started = time.monotonic()
    line = one_line(CliRunner().invoke(cli, ["preflight", *TINY, "--persona", str(card), "--max-seq-len", "512",
                                             "--dataset", str(DATA / "dataset_personality_v1.json")]))
    assert line.startswith("Error: the system prompt is ") and "and max_seq_len=512: no turn of the dataset fits" \
        in line, line
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("what", ["questions", "responses", "card"])
def test_questions_responses_or_a_card_nested_200000_deep_are_one_line(tmp_path, what):
    # round 4's corpus (Q07): questions nested 200,000 deep were a RecursionError traceback in evaluate
    f = tmp_path / {"questions": "q.json", "responses": "r.jsonl", "card": "p.yaml"}[what]
    f.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    args = {"questions": ["score", "--questions", str(f), "--responses", str(f)],
            "responses": ["score", "--questions", str(DATA / "eval_questions.json"), "--responses", str(f)],
            "card": ["preflight", *TINY, "--persona", str(f)]}[what]
    line = one_line(CliRunner().invoke(cli, args))
    assert f"{f}: nested deeper than the parser's limit of " in line and "check how the file was written" in line, line


@pytest.mark.parametrize("command", [["train", *TINY], ["compare"]])
def test_a_store_that_is_not_a_sqlite_database_is_one_line(tmp_path, monkeypatch, command):
    # round 4's corpus (U16): random bytes as mlflow.db were sqlite3's DatabaseError traceback from the write probe
    db = tmp_path / "garbage.db"
    db.write_bytes(bytes(range(256)) * 20)
    use_store(monkeypatch, f"sqlite:///{db}")
    line = one_line(CliRunner().invoke(cli, command))
    assert line == (f"Error: the tracking store {db} is not a SQLite database, or a damaged one (file is not a "
                    "database); move it away (a new store is made in its place) or point MLFLOW_TRACKING_URI at "
                    "another file"), line


def test_rescore_with_a_broken_card_of_the_user_s_own_is_its_error_not_a_skip(tmp_path):
    # round 4's corpus (R16): "<run>: skipped: <card>: not valid YAML …; rescore it with --persona <card>", exit 1
    card = tmp_path / "p.yaml"
    card.write_text("name: [x\n", encoding="utf-8")
    line = one_line(CliRunner().invoke(cli, ["rescore", "0123abcd", "--persona", str(card)]))
    assert line.startswith(f"Error: {card}: not valid YAML at line 2"), line
