"""The ruler does not move silently: the rubric scores a fixed corpus (tests/data/rubric/corpus.jsonl, 456
answers to the shipped personas' questions: the hand-labelled cases, references, dataset answers and their
mutations) and must give exactly the points and reason codes of the snapshot named by RUBRIC_VERSION
(tests/data/rubric/snapshot-<version>.jsonl). A rule change that moves any score is a new version: bump
RUBRIC_VERSION (docs/rubric.md says what changed) and write its snapshot:

    python tests/test_rubric_snapshot.py --write      # refuses to overwrite an existing version's snapshot

Older snapshots stay: they are what runs scored under those versions were measured with.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "rubric"
CORPUS = DATA / "corpus.jsonl"


def snapshot_path(version: str) -> Path:
    return DATA / f"snapshot-{version}.jsonl"


def score_corpus() -> list[dict]:
    from molting_mlflow.ground.persona import load_persona
    from molting_mlflow.ground.rubric import DIMENSIONS, score_response
    from molting_mlflow.ground.questions import Question, load_questions

    cards, question_files, out = {}, {}, []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item["card"] not in cards:
            cards[item["card"]] = load_persona(ROOT / item["card"])
        persona = cards[item["card"]]
        if "question" in item:        # a hand-labelled case's question, inline
            q = Question(**item["question"])
        else:
            if item["questions"] not in question_files:
                question_files[item["questions"]] = {q.id: q for q in load_questions(ROOT / item["questions"])}
            q = question_files[item["questions"]][item["id"]]
        s = score_response(q, item["response"], item["finish_reason"], persona)
        out.append({**{d: s[d] for d in DIMENSIONS}, "codes": s["codes"]})
    return out


def read_snapshot(version: str) -> list[dict]:
    return [json.loads(line) for line in snapshot_path(version).read_text(encoding="utf-8").splitlines()]


def test_the_corpus_scores_as_the_snapshot_of_this_rubric_version():
    from molting_mlflow.ground.rubric import RUBRIC_VERSION

    path = snapshot_path(RUBRIC_VERSION)
    assert path.is_file(), (f"no snapshot for rubric v{RUBRIC_VERSION}: write it (python tests/test_rubric_snapshot.py "
                            "--write) once the new rules are what you mean")
    want, got = read_snapshot(RUBRIC_VERSION), score_corpus()
    assert len(want) == len(got), "the corpus and the snapshot have different lengths: the corpus changed"
    moved = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
    assert not moved, (f"{len(moved)} of {len(got)} corpus answers score differently under the same RUBRIC_VERSION "
                       f"{RUBRIC_VERSION} (first: item {moved[0][0]}: snapshot {moved[0][1]}, now {moved[0][2]}); "
                       "a change of the ruler is a new version: bump RUBRIC_VERSION and write its snapshot")


def test_each_older_version_kept_its_snapshot_and_they_differ():
    """A version's snapshot is its definition on the corpus: two versions with equal snapshots were one ruler."""
    versions = sorted(p.stem.removeprefix("snapshot-") for p in DATA.glob("snapshot-*.jsonl"))
    assert "1.1" in versions and len(versions) >= 2, versions
    snaps = [read_snapshot(v) for v in versions]
    for (a, sa), (b, sb) in zip(zip(versions, snaps), zip(versions[1:], snaps[1:])):
        assert sa != sb, f"rubric v{a} and v{b} score the corpus alike: they are the same ruler"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_rubric_snapshot.py --write")
    sys.path.insert(0, str(ROOT))
    from molting_mlflow.ground.rubric import RUBRIC_VERSION

    target = snapshot_path(RUBRIC_VERSION)
    if target.exists():
        sys.exit(f"{target} exists: a version's snapshot is never rewritten; bump RUBRIC_VERSION first")
    target.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in score_corpus()), encoding="utf-8")
    print(f"wrote {target}")
