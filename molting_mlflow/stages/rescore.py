"""The rescore stage: score runs already in the store again, from the answers they logged
(`eval_results.json`), under the current rubric, without loading a model.

A run's D1–D5 and score metrics, its per-question table and its tag `molting.rubric_version` are
updated in place (the MLflow UI and `molting compare` then show the new scores; the old version is
kept in the tag `molting.rescored_from`); nothing else of the run changes. A run with no logged
answers gets a one-line reason and is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from molting_mlflow.ground import bundle
from molting_mlflow.ground.config import ConfigError
from molting_mlflow.ground.errors import first_line, missing_in_store
from molting_mlflow.ground.paths import DEFAULT_PERSONA, DEFAULT_QUESTIONS
from molting_mlflow.ground.judge import Judge, check
from molting_mlflow.ground.persona import PersonaError, load_persona
from molting_mlflow.ground.rubric import RUBRIC_VERSION, UNTAGGED_RUBRIC_VERSION, score_responses
from molting_mlflow.ground.questions import RubricInputError, load_questions
from molting_mlflow.ground.tags import REUSED_RUN_TAG, RUBRIC_VERSION_TAG
from molting_mlflow.store.experiments import experiments_to_search, project_experiments
from molting_mlflow.store.scoring import RESULTS_TABLE, logged_results, results_rows, score_metrics
from molting_mlflow.store.assessments import question_traces
from molting_mlflow.store.judging import judge_run
from molting_mlflow.store.tracking import resolve_run_id


@dataclass
class Rescored:
    run_id: str
    old_version: str
    old_score: float | None
    new_score: float | None
    skipped: str = ""            # the reason, when the run was not rescored


def runs_to_rescore(run_ids: list[str], experiment: str | None) -> list[str]:
    """The given runs, or every run of the experiment that has a score."""
    if run_ids:
        return [resolve_run_id(r) for r in run_ids]
    if not experiment:
        where = ", ".join(e.name for e in project_experiments()) or "none yet"
        raise ConfigError(f"give run ids or --experiment <name> (experiments holding the project's runs: {where}; "
                          "see: molting rescore --help)")
    exp = experiments_to_search(experiment)[0]
    runs = mlflow.search_runs([exp.experiment_id], filter_string="metrics.score >= 0", output_format="list",
                              max_results=50000)
    return [r.info.run_id for r in runs]


def rescore_run(run_id: str, persona_path: str | None = None, questions_path: str | None = None,
                judge: Judge | None = None, log=print) -> Rescored:
    """Rescore one run with its own persona card and questions (the files it logged under persona/; a
    run logged before bundles were: the paths its params name), or the ones given."""

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if not missing_in_store(e):
            raise
        return Rescored(run_id, "", None, None, f"not found in {mlflow.get_tracking_uri()}")
    old_version = run.data.tags.get(RUBRIC_VERSION_TAG, UNTAGGED_RUBRIC_VERSION)
    old_score = run.data.metrics.get("score")
    records = logged_results(run_id)
    if records is None:
        why = ("a reused trial: its answers are on run " + run.data.tags[REUSED_RUN_TAG][:8]
               if REUSED_RUN_TAG in run.data.tags else f"no logged answers ({RESULTS_TABLE})")
        return Rescored(run_id, old_version, old_score, None, why)

    params = run.data.params
    logged = bundle.of_run(run_id) or ("", "")
    try:
        questions = load_questions(questions_path or logged[1] or params.get("eval.questions")
                                   or params.get("train.questions") or DEFAULT_QUESTIONS)
        persona = load_persona(persona_path or logged[0] or params.get("train.persona") or DEFAULT_PERSONA)
    except (PersonaError, RubricInputError) as e:
        return Rescored(run_id, old_version, old_score, None, f"{first_line(e)}; rescore it with "
                        "--persona <card> / --questions <file>")
    scored = score_responses(questions, [{k: r.get(k) for k in ("id", "response", "finish_reason")}
                                         for r in records], persona)
    if "ref_nll" in run.data.metrics:        # the model's loss on the references: not text, kept as logged
        scored["summary"]["ref_nll"] = run.data.metrics["ref_nll"]
    # at the step of the score it replaces (a train run scores at its last optimizer step): MLflow
    # shows the value at the highest step, the newest there
    history = client.get_metric_history(run_id, "score")
    step = max((m.step for m in history), default=0)
    for k, v in score_metrics(scored["summary"]).items():
        client.log_metric(run_id, k, v, step=step)
    text = pd.DataFrame(results_rows(scored)).to_json(orient="split", index=False, date_format="iso")
    client.log_text(run_id, text, RESULTS_TABLE)   # the same path: the table is replaced, not appended to
    client.set_tag(run_id, RUBRIC_VERSION_TAG, RUBRIC_VERSION)
    if old_version != RUBRIC_VERSION:
        client.set_tag(run_id, "molting.rescored_from", old_version)
    if judge is not None:     # the logged answers read by the judge too, on the answers' own traces
        traces = {qid: t.info.trace_id for qid, t in question_traces(run_id).items()}
        judge_run(judge, persona, questions, records, traces, scored["results"], run_id, step, log)
    return Rescored(run_id, old_version, old_score, scored["summary"]["score"])


def rescore(run_ids: list[str], experiment: str | None = None, log=print, persona: str | None = None,
            questions: str | None = None, judge: Judge | None = None) -> list[Rescored]:
    if judge is not None:
        log(f"judge {judge.model}: {check(judge)}")      # before any run: a dead judge is one line
    out = []
    for run_id in runs_to_rescore(run_ids, experiment):
        r = rescore_run(run_id, persona, questions, judge, log)
        out.append(r)
        if r.skipped:
            log(f"{run_id[:8]}: skipped: {r.skipped}")
        else:
            old = f"{r.old_score:.2f}" if r.old_score is not None else "–"
            log(f"{run_id[:8]}: rubric v{r.old_version} {old} → v{RUBRIC_VERSION} {r.new_score:.2f}")
    return out
