"""A model judge's reading of a run's answers, on the run: one LLM-judge assessment a dimension on each
answer's trace (its points and the items it answered, the judge's words as the rationale), `judge.score`
and `judge.<dimension>` beside `score`, `judge.seconds`, the judge's model, prompt version and base URL as
params, and how far judge and rubric agree (`agreement.judge_vs_rubric.*`, no person needed).
"""
from __future__ import annotations

import mlflow

from molting_mlflow.ground import bundle
from molting_mlflow.ground.agreement import OVERALL, agree
from molting_mlflow.ground.judge import PROMPT_VERSION, Judge, judge_answers, judge_summary
from molting_mlflow.ground.persona import Persona, load_persona
from molting_mlflow.ground.questions import load_questions
from molting_mlflow.ground.rubric import DIMENSIONS
from molting_mlflow.store.assessments import log_judge, question_traces
from molting_mlflow.store.scoring import logged_results


def judge_run(judge: Judge, persona: Persona, questions: list, records: list[dict], trace_ids: dict,
              results: list[dict], run_id: str, step: int = 0, log=print) -> dict:
    """Judge the answers `records` (one a question) of run `run_id`, whose traces are `trace_ids` and whose
    rubric points are `results`; log it all on the run; the metrics logged."""
    verdicts = judge_answers(judge, persona, questions, records)
    for qid, found in verdicts.items():
        if qid == "_seconds" or qid not in trace_ids:
            continue
        for v in found:
            log_judge(trace_ids[qid], v.dimension, v.points, v.rationale, judge.model,
                      {"prompt_version": PROMPT_VERSION, "items_answered": f"{v.answered}/{v.asked}"})
    metrics = judge_summary(verdicts)
    rubric = {r["id"]: r for r in results}
    for dim in DIMENSIONS:
        pairs = [(v.points, rubric[qid][dim]) for qid, found in verdicts.items() if qid != "_seconds"
                 for v in found if v.dimension == dim and v.points is not None and qid in rubric]
        metrics |= agree(dim, pairs).as_metrics("agreement.judge_vs_rubric") if pairs else {}
    whole = [(sum(v.points for v in found), rubric[qid]["score"]) for qid, found in verdicts.items()
             if qid != "_seconds" and qid in rubric and len(found) == len(DIMENSIONS)
             and all(v.points is not None for v in found)]
    metrics |= agree(OVERALL, whole).as_metrics("agreement.judge_vs_rubric") if whole else {}
    client = mlflow.MlflowClient()
    for k, v in judge.params().items():
        client.log_param(run_id, k, v)
    for k, v in metrics.items():
        client.log_metric(run_id, k, v, step=step)
    missing = sorted(set(verdicts) - {"_seconds"} - set(trace_ids))
    read = [rubric[qid]["score"] for qid in verdicts if qid != "_seconds" and qid in rubric]
    beside = f"the rubric's {sum(read) / len(read):.2f} on the same answers" if read else "no answer the rubric scored"
    log(f"judge {judge.model}: judge.score {metrics.get('judge.score', float('nan')):.2f}, {beside}; "
        f"{metrics['judge.unanswered']} readings without a yes or no, {metrics['judge.seconds']:.1f} s"
        + (f"; answers {missing} have no trace to hold its reading" if missing else ""))
    return metrics


def judge_logged(judge: Judge, run_id: str, log=print) -> dict:
    """Judge a run's logged answers (eval_results.json) as its own card and questions (the bundle it logged),
    on its own traces: what the sweep does for its finalists. The metrics logged; {} where it has no answers."""
    results, logged = logged_results(run_id), bundle.of_run(run_id)
    if not results or not logged or not logged[1]:
        log(f"run {run_id[:8]}: no logged answers or questions for the judge to read")
        return {}
    traces = {qid: t.info.trace_id for qid, t in question_traces(run_id).items()}
    return judge_run(judge, load_persona(logged[0]), load_questions(logged[1]), results, traces, results, run_id,
                     log=log)
