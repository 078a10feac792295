"""A model judge beside the rubric, through a real OpenAI-compatible server on 127.0.0.1: `transformers
serve` with SmolLM2-135M-Instruct (the smol preset's offline GGUF, converted once into ~/.cache/molting).
A 135M judge is plumbing, not a reader to trust (docs/judge.md): these tests hold what is logged, not what
it says. One question keeps the judge's calls few (10 yes/no items an answer)."""
from __future__ import annotations

import json
import os
import socket
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
from molting_mlflow.ground.rubric import DIMENSIONS

pytestmark = pytest.mark.smol
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(folder: Path, name: str, port: int) -> subprocess.Popen:
    """`transformers serve <name>` pinned to the smol folder (served as `name`), answering on 127.0.0.1:port."""
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(exe), "serve", name, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            cwd=folder, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("transformers serve exited at start")
            time.sleep(1)
    proc.kill()
    raise RuntimeError("transformers serve did not answer in 180 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(judge option list, the process): SmolLM2 served as `smol`."""
    from molting_mlflow.ground.models import ensure_smol

    here = tmp_path_factory.mktemp("serve")
    (here / "smol").symlink_to(ensure_smol())
    port = _free_port()
    proc = _start(here, "smol", port)
    yield ["--judge", "openai:/smol", "--judge-base-url", f"http://127.0.0.1:{port}/v1"], proc
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def one_question(tmp_path_factory):
    p = tmp_path_factory.mktemp("q1") / "questions.json"
    p.write_text(json.dumps(json.loads((ROOT / "data/eval_questions.json").read_text(encoding="utf-8"))[:1],
                            ensure_ascii=False), encoding="utf-8")
    return str(p)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_question):
    """A tiny-random train run (not evaluated) in its own store: the run a judged evaluation reads."""
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages.train import train

    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    use_store(mp, uri)
    run_id = train(TrainConfig(model="tiny-random", epochs=1, min_steps=0, evaluate=False,
                               questions=one_question), log=lambda *a: None).run_id
    mp.undo()
    return run_id, uri


def test_evaluate_with_a_judge_logs_its_reading_per_answer_and_dimension(server, trained, one_question, monkeypatch):
    judge, _ = server
    run_id, uri = trained
    use_store(monkeypatch, uri)
    r = CliRunner().invoke(cli, ["evaluate", "--run-id", run_id[:8], "--questions", one_question, *judge])
    assert r.exit_code == 0, r.output
    ev = next(x for x in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if x.data.tags.get("molting.stage") == "evaluate")
    assert ev.info.status == "FINISHED"
    m, p = ev.data.metrics, ev.data.params
    assert p["judge.model"] == "openai:/smol" and p["judge.prompt_version"] and "calibration" in p["judge.calibration"]
    assert p["judge.base_url"].startswith("http://127.0.0.1:")
    assert "judge.score" in m and m["judge.seconds"] > 0
    # the judge's score beside the rubric's on the same answers, and its calibration said before the run
    assert f"judge.score {m['judge.score']:.2f}, the rubric's {m['score']:.2f} on the same answers" in r.output
    assert "judge openai:/smol: " in r.output and "calibration items right" in r.output
    # one answer: each dimension is a reading (its mean, its agreement with the rubric) or counted unanswered
    read = [d for d in DIMENSIONS if f"judge.{d}" in m]
    assert len(read) + m["judge.unanswered"] == len(DIMENSIONS) and read
    assert all(m[f"agreement.judge_vs_rubric.{d}.n"] == 1 for d in read)
    traces = mlflow.search_traces(locations=[ev.info.experiment_id], run_id=ev.info.run_id, return_type="list")
    assert len(traces) == 1
    for t in traces:
        mine = [a for a in t.info.assessments if a.name.startswith("judge.")]
        assert sorted(a.name for a in mine) == sorted(f"judge.{d}" for d in DIMENSIONS)       # one a dimension
        assert all(a.source.source_type == "LLM_JUDGE" and a.source.source_id == "openai:/smol" for a in mine)
        assert all(a.rationale and "→" in a.rationale for a in mine)                           # items and replies


def test_a_sweep_judges_exactly_its_finalists(server, one_question, tmp_path):
    """The MLproject's sweep with judge_finalists=2: two trials judged, both rankings on the parent run.
    (Before the stopped-server test below: it reads the module's server.)"""
    judge, _ = server
    base_url = judge[judge.index("--judge-base-url") + 1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", "sweep", "--env-manager", "local",
           "--experiment-name", "judged", "-P", "model=tiny-random", "-P", "n_trials=3", "-P", "min_steps=0",
           "-P", f"questions={one_question}", "-P", "judge=openai:/smol", "-P", f"judge_base_url={base_url}",
           "-P", "judge_finalists=2", "-P", "register=false", "-P", "prune=false"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["judged"], output_format="list")
    parent = next(x for x in runs if x.data.tags.get("molting.stage") == "sweep")
    judged = [x for x in runs if "judge.model" in x.data.params and x is not parent]
    assert len(judged) == 2 and parent.data.metrics["judge_finalists"] == 2
    ranking = MlflowClient().download_artifacts(parent.info.run_id, "study/judge_ranking.md")
    text = Path(ranking).read_text(encoding="utf-8")
    assert "| by rubric | by judge |" in text and text.count("| #") == 2
    assert "by rubric" in r.stdout and "judge.score" in r.stdout


def test_a_stopped_judge_is_one_line_before_any_run(server, trained, one_question, monkeypatch):
    judge, proc = server
    run_id, uri = trained
    use_store(monkeypatch, uri)
    before = {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    proc.terminate()
    proc.wait(30)
    t0 = time.time()
    r = CliRunner().invoke(cli, ["evaluate", "--run-id", run_id[:8], "--questions", one_question, *judge])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "is not reachable" in r.output, r.output
    assert time.time() - t0 < 60
    after = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert {x.info.run_id for x in after} == before and not [x for x in after if x.info.status == "RUNNING"]
