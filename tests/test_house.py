"""One source per fact: a row added to the search table and a dimension added to the rubric, at run time and
in no other file, show in the sweep's report, the MLflow UI's saved view, diagnose and the maximum score.
Fails where a reader keeps its own list of the searched names or the dimensions (or "/10" as a literal)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from helpers import use_store

from molting_mlflow.cli import cli
from molting_mlflow.ground.rubric import RUBRIC, Dimension, format_summary, score_responses
from molting_mlflow.ground.sweep_config import SEARCH_SPACE, SPACE, Space, SweepConfig

ROOT = Path(__file__).resolve().parent.parent


def _d6(a) -> int:
    """A toy rule: an answer of more than 40 words loses both points (the references have fewer)."""
    if len(a.text.split()) > 40:
        a.lose("d6.long", "D6: more than 40 words")
        return 0
    return 2


@pytest.fixture
def grown(monkeypatch):
    """The rubric with a sixth dimension and the search table with a warmup_ratio row, for this test only."""
    d6 = Dimension("d6_brevity", "brevity", 2, {"d6.long": "more than 40 words"}, (), _d6, "ask for shorter answers",
                   ("Is the answer short?",))
    row = Space("warmup_ratio", "choice", "", "Warmup share (choices).", float)
    monkeypatch.setattr(RUBRIC, "dimensions", [*RUBRIC.dimensions, d6])
    SEARCH_SPACE.append(row)
    yield d6, row
    SEARCH_SPACE.remove(row)


def test_the_maximum_score_and_the_summary_follow_the_table(grown):
    from molting_mlflow.ground.persona import load_persona
    from molting_mlflow.ground.questions import load_questions

    qs = load_questions(ROOT / "data/eval_questions.json")
    scored = score_responses(qs[:1], [{"id": qs[0].id, "response": "Sou o Cláudio, tá? Beleza, João! 🦞"}],
                             load_persona(ROOT / "data/persona.yaml"))
    assert RUBRIC.max_score == 12 and scored["results"][0]["d6_brevity"] == 2 and "d6_brevity" in scored["summary"]
    assert "/12" in format_summary(scored) and "D6 2.00" in format_summary(scored)


def test_the_ui_view_shows_the_new_dimension_and_the_searched_field(grown):
    from molting_mlflow.store.ui_view import view_columns

    cols = view_columns()
    assert "metrics.`d6_brevity`" in cols and "params.`train.warmup_ratio`" in cols


def test_the_sweep_report_shows_the_searched_row_and_the_dimension(grown):
    from molting_mlflow.stages.sweep_report import _summary_md

    sc = SweepConfig(model="tiny-random", search={"warmup_ratio": "0.0,0.1"})
    assert "warmup_ratio" in SPACE and "warmup_ratio" in sc.space
    attrs = {"d1_identity": 1, "d2_factual": 1, "d3_voice": 1, "d4_cleanliness": 1, "d5_quality": 1, "d6_brevity": 2,
             "optimizer_steps": 150}
    best = SimpleNamespace(number=1, value=7.0, user_attrs=attrs, params={"warmup_ratio": 0.1})
    text = _summary_md(sc, best, [], [], [], 10.0, [best])
    header = next(line for line in text.splitlines() if line.startswith("| trial"))
    assert "warmup_ratio" in header and "d6_brevity" in header, text


def test_diagnose_reports_the_new_dimension_of_a_logged_run(grown, tmp_path, monkeypatch):
    """A run of answers from a file (score --log) scored with D6: its metric, the scores table's column and
    the dimension's own finding with its advice."""
    use_store(monkeypatch, f"sqlite:///{tmp_path}/mlflow.db")
    qs = json.loads((ROOT / "data/eval_questions.json").read_text(encoding="utf-8"))[:2]
    (tmp_path / "q.json").write_text(json.dumps(qs, ensure_ascii=False), encoding="utf-8")
    long = "Sou o Cláudio, assistente do João na Softtor, tá? " * 6 + "🦞"      # 48 words
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"id": q["id"], "response": long}, ensure_ascii=False) + "\n"
                                              for q in qs), encoding="utf-8")
    r = CliRunner().invoke(cli, ["score", "--questions", str(tmp_path / "q.json"), "--responses",
                                 str(tmp_path / "r.jsonl"), "--log", "--run-name", "six"])
    assert r.exit_code == 0, r.output
    run_id = r.output.split("\nrun ")[-1].split()[0]
    import mlflow

    assert mlflow.get_run(run_id).data.metrics["d6_brevity"] == 0
    r = CliRunner().invoke(cli, ["diagnose", run_id[:8]])
    assert r.exit_code == 0, r.output
    assert "| run | D1 | D2 | D3 | D4 | D5 | D6 | score |" in r.output
    assert "brevity points lost (D6)" in r.output and "ask for shorter answers" in r.output
    assert "/12**" in r.output
