"""`molting agreement [RUN_IDS…]`: the rubric's (and a judge's, where one read the answers) scores beside a
person's, for every answer a person labelled: per dimension and overall, n, Spearman, mean |Δ| and the
signed bias (score − human), and the five answers they disagree on most.

Each run gets its own numbers as metrics (`agreement.rubric.mean_abs`, `agreement.rubric.spearman`,
`agreement.rubric.bias`, `agreement.rubric.n`, `agreement.rubric.<dimension>.…`, `agreement.judge.…`) and
the table `agreement.json`; the report printed pools the runs given. Overall is the rubric's score against
the person's `overall` where they gave one, else the sum of their five dimensions where they gave all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import mlflow
from mlflow.tracking import MlflowClient

from molting_mlflow.ground.agreement import OVERALL, Agreement, agree
from molting_mlflow.ground.rubric import DIMENSIONS, RUBRIC, short_name
from molting_mlflow.store.assessments import readings
from molting_mlflow.store.experiments import experiments_to_search
from molting_mlflow.store.scoring import logged_results
from molting_mlflow.store.tracking import resolve_run_id

SCORERS = ("rubric", "judge")
AGREEMENT_TABLE = "agreement.json"
HOW_TO_LABEL = ("add them in the MLflow UI (a run's Traces tab → an answer → Add assessment, named d1_identity … or "
                "overall, source human) or from a file: molting label --run-id <run> labels.jsonl (docs/judge.md)")


@dataclass
class Row:
    """One labelled answer: the run and question, the text, and each scorer's and the person's points."""
    run_id: str
    id: str
    question: str
    response: str
    human: dict
    scores: dict = field(default_factory=dict)     # scorer → {dimension (or OVERALL): points}


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
    for res in logged_results(run_id) or []:
        r = labelled.get(res["id"])
        if r is None:
            continue
        rubric = {d: float(res[d]) for d in DIMENSIONS if res.get(d) is not None}
        row = Row(run_id, res["id"], res.get("question", ""), res.get("response", ""), dict(r.human), {"rubric": rubric})
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


def log_on_run(run_id: str, rows: list[Row]) -> dict:
    """The run's own agreement as metrics and the table agreement.json; the metrics logged."""
    metrics, table = {}, {}
    for scorer in SCORERS:
        found = measure(rows, scorer)
        for a in found:
            metrics |= a.as_metrics(f"agreement.{scorer}")
        table[scorer] = [a.__dict__ for a in found]
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    client.log_text(run_id, json.dumps({"answers": [r.__dict__ for r in rows], **table}, ensure_ascii=False, indent=1),
                    AGREEMENT_TABLE)
    return metrics


def runs_with_labels(run_ids: tuple, experiment: str | None) -> list[str]:
    """The runs named, or every scored run of the experiment(s) (all the project's, with none named)."""
    if run_ids:
        return [resolve_run_id(r) for r in run_ids]
    exps = [e.experiment_id for e in experiments_to_search(experiment)]
    if not exps:
        return []
    return [r.info.run_id for r in mlflow.search_runs(exps, filter_string="metrics.score >= 0", output_format="list",
                                                      max_results=5000)]


def agreement(run_ids: tuple = (), experiment: str | None = None, log=print) -> dict:
    """Measure, log on each run, and print the pooled report; {scorer: [Agreement]} of the pooled rows."""
    rows: list[Row] = []
    for run_id in runs_with_labels(run_ids, experiment):
        mine = rows_of(run_id)
        if mine:
            log_on_run(run_id, mine)
            rows += mine
    if not rows:
        log(f"no human labels yet on {'these runs' if run_ids else 'the scored runs'}: {HOW_TO_LABEL}")
        return {}
    pooled = {s: measure(rows, s) for s in SCORERS}
    log(report(rows, pooled))
    return pooled


def report(rows: list[Row], pooled: dict) -> str:
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
    lines.append("largest disagreements (rubric − human):")
    for gap, r in disagreements(rows):
        lines.append(f"  {gap:+.2f}  {r.run_id[:8]} {r.id} {r.question[:50]!r}: {r.response[:90]!r}")
    return "\n".join(lines)
