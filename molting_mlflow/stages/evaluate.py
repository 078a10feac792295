"""The evaluate stage: answer the evaluation questions with a model (+ adapter), score them with the
rubric, log D1–D5, the score, ref_nll, ref_chrf and a per-question table to a new MLflow run.

A trained adapter is rebuilt on its base in the precision it trained in (runtime.eval_plan), so an
evaluation here gives the answers the train run's own evaluation gave.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow

from molting_mlflow.ground import bundle, runtime
from molting_mlflow.ground.config import DEFAULT_MODEL, EvalConfig
from molting_mlflow.ground.generation import adapter_prompt
from molting_mlflow.ground.judge import Judge, check, judge_of
from molting_mlflow.ground.models import (AdapterError, load_adapter_model, load_model, load_tokenizer, resolve_adapter,
                                          resolve_model)
from molting_mlflow.ground.paths import DEFAULT_PERSONA
from molting_mlflow.ground.persona import Persona, card_file, load_persona
from molting_mlflow.ground.questions import load_questions, load_responses
from molting_mlflow.ground.rubric import format_summary
from molting_mlflow.ground.tags import (BASELINE_TAG, EVAL_LEAK_ARTIFACT, EVAL_LEAK_TAG, MODEL_TAG, RESPONSES_MODEL,
                                        RESPONSES_TAG, STAGE_TAG, TRAIN_RUN_TAG, adapter_uri)
from molting_mlflow.ground.templates import folds
from molting_mlflow.store.evaluation import answer_and_score
from molting_mlflow.store.judging import judge_run
from molting_mlflow.store.lineage import train_run, training_leak
from molting_mlflow.store.scoring import log_scores
from molting_mlflow.store.tracking import resolve_run_id, resolve_run_uri, stage_run
from molting_mlflow.store.ui_view import traces_url, ui_base

__all__ = ["EvalConfig", "evaluate", "score_and_log", "AdapterError"]


@dataclass
class _Subject:
    """What is evaluated: the model and tokenizer, the prompt it gets, and how the run is named."""
    model: object
    tok: object
    system_prompt: str | None
    training_template: str | None
    plan: runtime.Plan
    tags: dict
    name: str
    fold: bool = False               # the system prompt goes into the first user turn (templates.folds)


def _adapter_subject(ref: str, adapter_dir: Path) -> _Subject:
    model, tok, meta, plan = load_adapter_model(adapter_dir)
    tags = {"molting.adapter": ref, MODEL_TAG: meta["model"]}
    if meta.get("train_run_id"):
        tags[TRAIN_RUN_TAG] = meta["train_run_id"]
    trained_with = adapter_dir / "training_chat_template.jinja"
    template = trained_with.read_text(encoding="utf-8") if trained_with.is_file() else None
    system_prompt, fold = adapter_prompt(meta, tok)
    return _Subject(model, tok, system_prompt, template, plan, tags,
                    f"eval-{meta['model']}-{(meta.get('train_run_id') or 'adapter')[:8]}", fold)


def _baseline_subject(model_name: str, system_prompt: str) -> _Subject:
    source = resolve_model(model_name)
    plan = runtime.eval_plan(source.auto_precision or runtime.AUTO)
    model = load_model(source, plan).eval()
    tok = load_tokenizer(source)
    return _Subject(model, tok, system_prompt, None, plan, {BASELINE_TAG: "true", MODEL_TAG: model_name},
                    f"baseline-{model_name}", folds(system_prompt, "persona", tok, tok.chat_template))


def evaluate(cfg: EvalConfig, log=print) -> dict:
    runtime.set_threads()
    ref = adapter_uri(resolve_run_id(cfg.run_id)) if cfg.run_id else resolve_run_uri(cfg.adapter)
    adapter_dir = resolve_adapter(ref) if ref else None
    persona, questions_path, source = _bundle(cfg, adapter_dir, log)
    questions = load_questions(questions_path) if questions_path else []
    bundle.check(persona, questions_path, questions)     # before any weight loads: a mismatch costs seconds
    judge = judge_of(cfg)
    calibration = check(judge) if judge is not None else None      # a dead judge, too
    if calibration is not None:
        log(f"judge {judge.model}: {calibration}")
    sub = _adapter_subject(ref, adapter_dir) if ref else _baseline_subject(cfg.model or DEFAULT_MODEL, persona.system_prompt)
    # questions the adapter trained on measure recall: said, tagged and logged as the train run's pre-flight does
    leak = training_leak(train_run(sub.tags.get(TRAIN_RUN_TAG)), questions, questions_path)
    if leak is not None:
        sub.tags[EVAL_LEAK_TAG] = f"{len(leak.data['questions'])}/{len(questions)}"
        log(f"note: {leak.message}")
    with stage_run(cfg.experiment, sub.name, {STAGE_TAG: "evaluate", **sub.tags}) as run:
        bundle.log(persona, questions_path)
        if leak is not None:
            mlflow.log_dict(asdict(leak), EVAL_LEAK_ARTIFACT)
        mlflow.log_params({"eval.questions": questions_path, "eval.persona": cfg.persona or source,
                           **bundle.params(persona, questions_path), "eval.max_new_tokens": cfg.max_new_tokens,
                           "eval.seed": cfg.seed, "eval.system_prompt": (sub.system_prompt or "none")[:500],
                           "eval.greedy": True, "eval.precision": sub.plan.precision, "eval.device": sub.plan.device,
                           "eval.system_prompt_fold": sub.fold, **({"judge.calibration": calibration} if judge else {})})
        # the model is thrown away after: merged in place, no copy
        scored = answer_and_score(sub.model, sub.tok, questions, persona, system_prompt=sub.system_prompt,
                                  fold=sub.fold, nll_template=sub.training_template, max_new_tokens=cfg.max_new_tokens,
                                  seed=cfg.seed, merge="in_place" if sub.plan.eval_merge else None,
                                  batch_size=cfg.batch_size, judge=judge, log=log)
    log(f"\nrun {run.info.run_id} ({sub.name}): score {scored['summary']['score']:.2f}\n"
        f"see it:  molting compare {run.info.run_id[:8]}   or   molting diagnose {run.info.run_id[:8]}\n"
        f"its answers and the rubric's reasons: {traces_url(ui_base(), run.info.experiment_id, run.info.run_id)}")
    scored["run_id"] = run.info.run_id
    return scored


def _bundle(cfg: EvalConfig, adapter_dir: Path | None, log) -> tuple[Persona, str, str]:
    """The card and the questions file to score with, and where they came from: the ones given; else
    the adapter's own (its train run logged them); else the shipped card and its questions (a bare model;
    an adapter trained before adapters carried their persona, which is said). A card given alone
    brings its own questions."""
    logged = bundle.found_in(adapter_dir) if adapter_dir is not None else None
    if adapter_dir is not None and logged is None and not cfg.persona:
        log(f"note: {adapter_dir} carries no persona (trained before adapters did): scored as {DEFAULT_PERSONA}; "
            "pass --persona/--questions for another")
    source = "given" if cfg.persona else "adapter" if logged else "shipped"
    persona = load_persona(cfg.persona or (logged[0] if logged else DEFAULT_PERSONA))
    if cfg.questions:
        return persona, cfg.questions, source
    return persona, logged[1] if source == "adapter" else card_file(persona, "questions"), source


def score_and_log(questions_path: str, responses_path: str, persona_path: str, experiment: str, run_name: str = "",
                  judge: Judge | None = None, log=print) -> dict:
    """Answers from anywhere (another model, a person, an old experiment) as an evaluation run: the same
    bundle, params, metrics, eval_results.json and traces as an evaluate run, so `molting label`,
    `molting agreement`, compare and the UI read it like one. Nothing is generated."""
    questions = load_questions(questions_path)
    records = load_responses(responses_path, questions)
    persona = load_persona(persona_path)
    bundle.check(persona, questions_path, questions)
    calibration = check(judge) if judge is not None else None
    if calibration is not None:
        log(f"judge {judge.model}: {calibration}")
    name = run_name or f"score-{Path(responses_path).stem}"
    with stage_run(experiment, name, {STAGE_TAG: "evaluate", MODEL_TAG: RESPONSES_MODEL,
                                      RESPONSES_TAG: str(Path(responses_path).resolve())}) as run:
        bundle.log(persona, questions_path)
        mlflow.log_params({"eval.questions": questions_path, "eval.persona": persona_path, "eval.responses": responses_path,
                           **bundle.params(persona, questions_path), **({"judge.calibration": calibration} if judge else {})})
        mlflow.log_artifact(responses_path, "responses")
        scored = log_scores(records, questions, persona, {})
        log(format_summary(scored))
        if judge is not None:
            scored["judge"] = judge_run(judge, persona, questions, records, scored["trace_ids"], scored["results"],
                                        run.info.run_id, log=log)
    log(f"\nrun {run.info.run_id} ({name}): score {scored['summary']['score']:.2f}; label it: molting label --run-id "
        f"{run.info.run_id[:8]} <labels.jsonl>, or in the UI: "
        f"{traces_url(ui_base(), run.info.experiment_id, run.info.run_id)}")
    scored["run_id"] = run.info.run_id
    return scored
