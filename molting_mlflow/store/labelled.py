"""The answers of a run that a person labelled, beside the rubric's points (its eval_results.json: the
scores as they are now) and a judge's (its assessments), and their agreement per scorer: what `molting
agreement` logs and prints and `molting diagnose` reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from molting_mlflow.ground.agreement import OVERALL, Agreement, agree
from molting_mlflow.ground.rubric import DIMENSIONS, RUBRIC, short_name
from molting_mlflow.store.assessments import readings
from molting_mlflow.store.scoring import logged_results
from molting_mlflow.store.ui_view import traces_url, ui_base

SCORERS = ("rubric", "judge")
HOW_TO_LABEL = ("add them in the MLflow UI (a run's Traces tab → an answer → Assess → Add feedback, named "
                "d1_identity … or overall, type Number) or from a file: molting label --run-id <run> labels.jsonl "
                "(docs/judge.md)")


@dataclass
class Row:
    """One labelled answer: the run and question, the text, and each scorer's and the person's points."""
    run_id: str
    id: str
    question: str
    response: str
    human: dict
    scores: dict = field(default_factory=dict)     # scorer → {dimension (or OVERALL): points}
    trace_id: str = ""                             # the answer's trace, where the person's reading is
    experiment_id: str = ""


def _overall(points: dict) -> float | None:
    """The whole score of a reading: its OVERALL, else the sum of every dimension where all are there."""
    if OVERALL in points:
        return points[OVERALL]
    return sum(points[d] for d in DIMENSIONS) if all(d in points for d in DIMENSIONS) else None


def rows_of(run_id: str) -> list[Row]:
    """The answers of a run that a person labelled, with the rubric's points (its eval_results.json, the
    scores as they are now) and the judge's (its assessments), where there are any."""
    labelled = {qid: r for qid, r in readings(run_id).items() if r.human}
    if not labelled:
        return []
    out = []
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    for res in logged_results(run_id) or []:
        r = labelled.get(res["id"])
        if r is None:
            continue
        rubric = {d: float(res[d]) for d in DIMENSIONS if res.get(d) is not None}
        row = Row(run_id, res["id"], res.get("question", ""), res.get("response", ""), dict(r.human),
                  {"rubric": rubric}, r.trace_id, experiment_id)
        if r.judge:
            row.scores["judge"] = dict(r.judge)
        for scorer, pts in row.scores.items():
            if (o := _overall(pts)) is not None:
                pts[OVERALL] = o
        if (o := _overall(row.human)) is not None:
            row.human[OVERALL] = o
        out.append(row)
    return out


def measure(rows: list[Row], scorer: str) -> list[Agreement]:
    """Agreement of one scorer with the person, per dimension then overall (dimensions nobody labelled left out)."""
    out = []
    for dim in (*DIMENSIONS, OVERALL):
        pairs = [(r.scores[scorer][dim], r.human[dim]) for r in rows
                 if scorer in r.scores and dim in r.scores[scorer] and dim in r.human]
        if pairs:
            out.append(agree(dim, pairs))
    return out


def disagreements(rows: list[Row], scorer: str = "rubric", k: int = 5) -> list[tuple[float, Row]]:
    """The k answers whose overall score (else their largest dimension gap) differs most from the person's."""
    def gap(r: Row) -> float:
        s = r.scores.get(scorer, {})
        if OVERALL in s and OVERALL in r.human:
            return s[OVERALL] - r.human[OVERALL]
        diffs = [s[d] - r.human[d] for d in DIMENSIONS if d in s and d in r.human]
        return max(diffs, key=abs, default=0.0)

    return sorted(((gap(r), r) for r in rows), key=lambda x: -abs(x[0]))[:k]


def agreement_report(rows: list[Row], pooled: dict) -> str:
    runs = sorted({r.run_id[:8] for r in rows})
    lines = [f"agreement with a person: {len(rows)} labelled answers of {len(runs)} run(s) ({', '.join(runs)}); "
             f"score − human: above 0 the score is kinder than the person", ""]
    for scorer, found in pooled.items():
        if not found:
            continue
        lines += [f"{scorer}:", "  dimension        n  spearman  mean|Δ|   bias"]
        for a in found:
            name = "overall" if a.dimension == OVERALL else f"{short_name(a.dimension)} {RUBRIC.dimension(a.dimension).title}"
            rho = "–" if a.spearman is None else f"{a.spearman:+.3f}"
            lines.append(f"  {name:<14} {a.n:>3}  {rho:>8}  {a.mean_abs:>7.3f}  {a.bias:+.3f}")
        lines.append("")
    lines.append("largest disagreements (rubric − human), each with its trace in the MLflow UI:")
    base = ui_base()
    for gap, r in disagreements(rows):
        lines.append(f"  {gap:+.2f}  {r.run_id[:8]} {r.id} {r.question[:50]!r}: {r.response[:90]!r}")
        lines.append(f"         {traces_url(base, r.experiment_id, r.run_id, r.trace_id)}")
    return "\n".join(lines)
