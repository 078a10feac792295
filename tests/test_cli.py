"""The command line: bad input is one line, exit code 2, no traceback, and no run left RUNNING."""
import json
from dataclasses import MISSING, fields

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli
from molting_mlflow.ground.config import EvalConfig, TrainConfig
from molting_mlflow.ground.sweep_config import SweepConfig

TINY = ["train", "--model", "tiny-random"]

BAD = [
    (TINY + ["--epochs", "0"], "epochs=0 is invalid: expected a whole number ≥ 1"),
    (TINY + ["--lr", "-1"], "lr=-1.0 is invalid"),
    (TINY + ["--grad-accum", "0"], "grad_accum=0 is invalid"),
    (TINY + ["--lr", "fast"], "'fast' is not a float nor 'preset'"),
    (TINY + ["--preflight", "maybe"], "preflight='maybe' is invalid: expected one of: strict, warn"),
    (TINY + ["--max-seq-len", "4"], "max_seq_len=4 is invalid"),
    (TINY + ["--chat-template", "nope.jinja"], "chat_template='nope.jinja' is invalid"),
    (["train", "--model", "gpt5"], "unknown model 'gpt5'"),
    (TINY + ["--dataset", "missing.json"], "missing.json: dataset file not found"),
    (["preflight", "--model", "tiny-random", "--persona", "nope.yaml"], "persona file not found"),
    (["evaluate", "--adapter", "/no/such/dir"], "no adapter_config.json"),
    (["evaluate", "--max-new-tokens", "0", "--model", "tiny-random"], "max_new_tokens=0 is invalid"),
    # what is wrong with the argument, not the argument alone: fails when rubric._read_text says less
    (["score", "--questions", "q.json", "--responses", "r.jsonl"],
     "q.json: file not found; expected a JSON list of question objects"),
    # a sweep's judge reads its finalists: a judge named without them read nothing, silently
    (["sweep", "--model", "tiny-random", "--judge", "openai:/smol"],
     "judge=openai:/smol reads no trial with judge_finalists=0; give judge_finalists=<N ≥ 1>"),
    (["sweep", "--model", "tiny-random", "--judge-finalists", "2"], "judge_finalists=2 needs a judge"),
    (["sweep", "--model", "tiny-random", "--champion-by", "judge"], "champion_by=judge needs judged trials"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(a[1:4]) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(args, expected):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert expected in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args,env,expected", [
    (TINY + ["--precision", "fp16"], {}, "precision='fp16' is invalid: expected one of: auto, fp32, bf16, nf4"),
    (TINY + ["--precision", "nf4"], {"MOLTING_DEVICE": "cpu"}, "precision=nf4 needs a model bitsandbytes can quantise"),
    (TINY, {"MOLTING_THREADS": "two"}, "MOLTING_THREADS='two' is invalid"),
    (TINY + ["--gpu-memory-gib", "-1"], {}, "gpu_memory_gib=-1.0 is invalid"),
])
def test_bad_runtime_setting_is_one_line_exit_2_before_a_run_opens(monkeypatch, args, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and expected in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")  # stopped before a run opened


def test_nf4_on_a_cpu_is_one_line_before_a_run_opens(tmp_path, monkeypatch):
    """A model bitsandbytes could quantise (a local folder; tiny-random is refused earlier, for not being
    one) asked for nf4 on a CPU. Fails when runtime._cpu_plan stops refusing nf4 (its `if precision ==
    "nf4": raise PlanError(...)` removed): a run then opens and trains (exit code 0)."""
    from molting_mlflow.ground.models import build_tiny_random

    model, tok = build_tiny_random()
    model.save_pretrained(tmp_path / "local-model")
    tok.save_pretrained(tmp_path / "local-model")
    monkeypatch.setenv("MOLTING_DEVICE", "cpu")
    r = CliRunner().invoke(cli, ["train", "--model", str(tmp_path / "local-model"), "--precision", "nf4",
                                 "--epochs", "1", "--min-steps", "0"])
    assert r.exit_code == 2 and "precision=nf4 needs a CUDA GPU" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_malformed_dataset_names_file_and_example(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "oi"}, {"role": "assistant", "content": "opa"}]}\n'
                   '{"messages": [{"role": "user", "content": "oi"}]}\n', encoding="utf-8")
    r = CliRunner().invoke(cli, TINY + ["--dataset", str(bad)])
    assert r.exit_code == 2 and f"{bad}: example 1: no assistant turn" in r.output


def test_real_preset_without_weights_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MOLTING_PHI3_PATH", raising=False)
    r = CliRunner().invoke(cli, ["train", "--model", "phi3"])
    assert r.exit_code == 2
    assert "microsoft/Phi-3-mini-4k-instruct not found in the Hugging Face cache" in r.output
    assert "MOLTING_PHI3_PATH" in r.output and len(r.output.strip().splitlines()) == 1


def test_attached_run_ends_failed_on_bad_input(monkeypatch):
    """Under `mlflow run` the run exists before our code starts; a user error must end it FAILED."""
    exp = mlflow.create_experiment("molting")
    run = MlflowClient().create_run(exp)
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    r = CliRunner().invoke(cli, TINY + ["--epochs", "0"])
    assert r.exit_code == 2
    got = MlflowClient().get_run(run.info.run_id)
    assert got.info.status == "FAILED" and "epochs=0" in got.data.tags["molting.error"]


def test_strict_preflight_stops_the_run_failed():
    """The user's configuration: 50 steps. The run ends FAILED before training, tagged and explained."""
    r = CliRunner().invoke(cli, TINY + ["--epochs", "5", "--grad-accum", "8", "--batch-size", "1"])
    assert r.exit_code == 2
    assert "= 50 optimizer steps" in r.output and "Error: pre-flight failed" in r.output
    runs = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED" and run.data.tags["molting.preflight"] == "fail"
    assert "loss" not in run.data.metrics
    pre = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/preflight.json"))
    assert pre["status"] == "fail" and pre["numbers"]["optimizer_steps"] == 50


def test_preflight_command():
    r = CliRunner().invoke(cli, ["preflight", "--model", "tiny-random"])
    assert r.exit_code == 0 and "pre-flight: PASS" in r.output
    r = CliRunner().invoke(cli, ["preflight", "--model", "tiny-random", "--system-prompt", "none"])
    assert r.exit_code == 1 and "no system prompt" in r.output


def test_no_run_left_running_after_bad_inputs(monkeypatch):
    """Each bad input under `mlflow run` (the run exists before our code starts) ends that run FAILED with
    the error; with no run handed over, none is opened. Then no run of the store is RUNNING."""
    client = MlflowClient()
    exp = mlflow.create_experiment("molting")
    for args, expected in BAD:
        attached = client.create_run(exp).info.run_id
        monkeypatch.setenv("MLFLOW_RUN_ID", attached)
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, r.output
        got = client.get_run(attached)
        assert got.info.status == "FAILED" and expected in got.data.tags["molting.error"], (args, got.info.status)
    monkeypatch.delenv("MLFLOW_RUN_ID")
    for args, _ in BAD:
        CliRunner().invoke(cli, args)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == len(BAD) and not [r for r in runs if r.info.status == "RUNNING"]


def test_score_round_trip(tmp_path):
    """Responses from anywhere: one result per line, input order, shared ids allowed, summary means."""
    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS

    lines = [
        {"id": "q1", "response": "Sou o Cláudio, assistente do João na Softtor, tá? 🦞", "finish_reason": "stop"},
        {"id": "q2", "response": "Eu sou o ChatGPT, criado pela OpenAI.", "finish_reason": "stop"},
        {"id": "q1", "response": "", "finish_reason": "length"},
    ]
    r_path = tmp_path / "r.jsonl"
    r_path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["score", "--questions", str(DEFAULT_QUESTIONS), "--responses", str(r_path)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [x["id"] for x in out["results"]] == ["q1", "q2", "q1"]
    first, chatgpt, empty = out["results"]
    assert first["d1_identity"] == 2 and first["score"] >= 8
    assert chatgpt["d1_identity"] == 0 and any(s.startswith("D1") for s in chatgpt["reasons"])
    assert empty["score"] == 0
    dims = ("d1_identity", "d2_factual", "d3_voice", "d4_cleanliness", "d5_quality")
    for d in dims:
        assert out["summary"][d] == round(sum(x[d] for x in out["results"]) / 3, 3)     # means to 3 decimals
    assert out["summary"]["score"] == pytest.approx(sum(out["summary"][d] for d in dims), abs=2e-3)


def test_score_bad_responses_file(tmp_path):
    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS

    r_path = tmp_path / "r.jsonl"
    r_path.write_text('{"id": "q99", "response": "oi"}\n', encoding="utf-8")
    r = CliRunner().invoke(cli, ["score", "--questions", str(DEFAULT_QUESTIONS), "--responses", str(r_path)])
    assert r.exit_code == 2 and "q99" in r.output and str(r_path) in r.output


def test_sigterm_ends_the_run_killed_not_running(tmp_path):
    """A worker stopped by kill/a scheduler leaves no run RUNNING forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    proc = subprocess.Popen([sys.executable, "-m", "molting_mlflow.cli", "train", "--model", "tiny-random",
                             "--epochs", "200", "--min-steps", "0"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client, deadline = MlflowClient(), time.time() + 120
    while time.time() < deadline:  # wait until it is training (a loss metric logged)
        exp = client.get_experiment_by_name("molting")
        runs = mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []
        if runs and runs[0].data.metrics.get("loss") is not None:
            break
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    (run,) = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert run.info.status == "KILLED" and run.data.tags["molting.error"] == "interrupted"


def test_every_config_field_carries_its_help_and_the_options_show_it():
    """TrainConfig, EvalConfig and SweepConfig: each field says what it is (config.opt), and the option of
    train, evaluate or sweep with its name shows that help and that default. Fails on a field added as a
    bare default (EvalConfig's `persona: str = str(DEFAULT_PERSONA)`) or an option with a default of its own
    (`--workers default=2`); both checked."""
    from dataclasses import MISSING, fields

    from molting_mlflow.ground.config import EvalConfig, TrainConfig
    from molting_mlflow.ground.sweep_config import SweepConfig

    for cls, command in ((TrainConfig, "train"), (EvalConfig, "evaluate"), (SweepConfig, "sweep")):
        options = {p.name: p for p in cli.commands[command].params}
        for f in fields(cls):
            assert f.metadata.get("help"), (cls.__name__, f.name)
            option = options.get(f.name)
            if option is not None:
                assert option.help.startswith(f.metadata["help"]), (command, f.name)
                if f.default is not MISSING and option.default is not None and not f.metadata.get("preset"):
                    assert option.default == f.default, (command, f.name)


@pytest.mark.parametrize("command, config, own", [("train", "TrainConfig", set()), ("evaluate", "EvalConfig", set()),
                                                  ("sweep", "SweepConfig", {"search"})])
def test_every_config_field_is_an_option_with_the_fields_default_and_help(command, config, own):
    """cli.config_options: each field of the command's config is its option, default and help included
    (a field added without an option, or an option whose default drifts from its field, fails here)."""
    cls = {"TrainConfig": TrainConfig, "EvalConfig": EvalConfig, "SweepConfig": SweepConfig}[config]
    params = {p.name: p for p in cli.commands[command].params}
    for f in fields(cls):
        if f.name in own:
            continue
        assert f.name in params, f"{command} has no option for {config}.{f.name}"
        default = "preset" if f.metadata.get("preset") else f.default
        assert default is not MISSING and params[f.name].default == default, f.name
        assert params[f.name].help == f.metadata["help"], f.name


# ---- languages and cards: read when used, a word YAML reads as no word is one line ---------------

HELP_OPENS = """
import json, os, sys
opened = []
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.realpath(os.fsdecode(args[0])))
sys.addaudithook(hook)
import atexit
from molting_mlflow.cli import main
from molting_mlflow.ground.paths import DATA_DIR    # the package's data/, as this process imported it
# main() ends the process with os._exit once the exit handlers ran: the report is one of them
atexit.register(lambda: print("OPENED " + json.dumps({"data": os.path.realpath(DATA_DIR), "opened": opened})))
main(["--help"])
"""


def test_molting_help_reads_no_persona_or_language_file():
    """`molting --help` opens nothing under data/ (no persona card, no language file): a broken language
    file cannot break --help, and help starts at once. Fails when a language or card is read at import
    (language.py's old `YOU = {…}` table, any module-level package_languages())."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", HELP_OPENS], capture_output=True, text=True, timeout=300,
                       env={**os.environ})
    assert r.returncode == 0 and "Usage: molting" in r.stdout, r.stderr[-2000:]
    seen = json.loads(r.stdout.rsplit("OPENED ", 1)[1])
    assert any("molting_mlflow" in p for p in seen["opened"])       # the hook saw the package's imports
    assert [p for p in seen["opened"] if p.startswith(seen["data"] + os.sep)] == []


def _rosa_beside(folder):
    """examples/rosa's card, dataset and questions copied into folder, and the card's path."""
    import shutil
    from pathlib import Path

    for f in (Path(__file__).resolve().parent.parent / "examples" / "rosa").iterdir():
        shutil.copyfile(f, folder / f.name)
    return folder / "persona.yaml"


def _score_args(card):
    responses = card.parent / "r.jsonl"
    responses.write_text('{"id": "who", "response": "I\'m Rosa. 🌱"}\n', encoding="utf-8")
    return ["score", "--persona", str(card), "--questions", str(card.parent / "questions.json"),
            "--responses", str(responses)]


def test_a_bare_no_in_a_language_file_beside_the_card_is_one_line_naming_it(tmp_path):
    """en.yaml beside Rosa's card (it takes the package's place) with `negations: [no, nunca]`: YAML reads
    `no` as false. preflight and score say it in one line, file, list, item and fix, exit 2. Fails when
    yamlwords.read_words stops checking each item's node (a bare 'must be a list of words', or a crash)."""
    from molting_mlflow.ground.paths import DATA_DIR

    card = _rosa_beside(tmp_path)
    for ext in ("txt", "yaml"):
        (tmp_path / f"en.{ext}").write_text((DATA_DIR / "languages" / f"en.{ext}").read_text(encoding="utf-8"),
                                            encoding="utf-8")
    en = tmp_path / "en.yaml"
    en.write_text(en.read_text(encoding="utf-8").replace("negations: [not, never]", "negations: [no, nunca]"),
                  encoding="utf-8")
    for args in (["preflight", "--model", "tiny-random", "--persona", str(card)], _score_args(card)):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
        assert r.output.startswith(f"Error: {en}: negations item 1 is no (line ") and \
            r.output.strip().endswith('which YAML reads as a boolean, not a word; quote it: "no"'), r.output


@pytest.mark.parametrize("line,said", [
    ("voice_markers: [yes, tá]", 'voice_markers item 1 is yes (line 4), which YAML reads as a boolean, not a word; '
                                 'quote it: "yes"'),
    ("name: no", 'name is no (line 4), which YAML reads as a boolean, not a word; quote it: name: "no"'),
])
def test_a_card_field_yaml_reads_as_no_word_is_one_line_naming_it(tmp_path, line, said):
    """Fails when persona.load_persona stops checking each field's node (yamlwords.node_problem)."""
    card = _rosa_beside(tmp_path)
    key = line.split(":")[0]
    rest = [ln for ln in card.read_text(encoding="utf-8").splitlines() if not ln.startswith(f"{key}:")]
    card.write_text("\n".join(["# mine", "", "", line, *rest]) + "\n", encoding="utf-8")      # on line 4
    for args in (["preflight", "--model", "tiny-random", "--persona", str(card)], _score_args(card)):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
        assert r.output.strip() == f"Error: {card}: {said}", r.output
