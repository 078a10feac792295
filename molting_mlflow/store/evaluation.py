"""The evaluation step that train and evaluate share: the answers to the questions (greedy, batched), the
loss on their reference answers, the rubric's scores logged on the active run (metrics, eval_results.json,
the evaluation view's traces), and a model judge's reading beside them where one is named.
"""
from __future__ import annotations

import contextlib
import time

import mlflow

from molting_mlflow.ground.generation import generate, merged_lora, reference_nll, unloaded_merged
from molting_mlflow.ground.judge import Judge
from molting_mlflow.ground.persona import Persona
from molting_mlflow.ground.rubric import format_summary
from molting_mlflow.store.judging import judge_run
from molting_mlflow.store.scoring import log_scores

# How a LoRA is folded into its base while decoding: "copy" (generation.merged_lora) keeps the base as it was,
# "in_place" changes it (a model thrown away afterwards), "worker" (generation.unloaded_merged) folds it into
# the lent base's own tensors and decodes the plain base with a static cache (compiled once a sweep worker, on
# CUDA), None decodes unmerged (a CPU, a quantized base)
MERGES = {"copy": lambda m: merged_lora(m, restore=True), "in_place": lambda m: merged_lora(m, restore=False),
          "worker": unloaded_merged}


def answer_and_score(model, tok, questions: list, persona: Persona, *, system_prompt: str | None, fold: bool,
                     nll_template: str | None, max_new_tokens: int, seed: int, merge: str | None,
                     batch_size: int = 8, step: int = 0, judge: Judge | None = None, log=print) -> dict:
    """Answer, score and log on the active run; the rubric's {"results", "summary", "trace_ids"} with the
    seconds spent: eval_seconds (answers and ref_nll), eval_log_seconds (scoring and logging) and, with a
    judge, its metrics under "judge"."""
    t0 = time.time()
    model.eval()
    with MERGES[merge](model) if merge else contextlib.nullcontext(model) as decoding:
        records, stats = generate(decoding, tok, questions, system_prompt, max_new_tokens, batch_size, seed, fold,
                                  static=merge == "worker" and _cuda(decoding))
        nll = reference_nll(decoding, tok, questions, system_prompt, nll_template, fold)
    stats["eval_seconds"] = time.time() - t0     # answers and ref_nll: the sweep's time accounting
    t_log = time.time()
    scored = log_scores(records, questions, persona, stats, ref_nll=nll, step=step)
    scored["eval_log_seconds"] = time.time() - t_log
    scored["eval_seconds"] = stats["eval_seconds"]
    log(format_summary(scored))
    if judge is not None:
        scored["judge"] = judge_run(judge, persona, questions, records, scored["trace_ids"], scored["results"],
                                    mlflow.active_run().info.run_id, step, log)
    return scored


def _cuda(model) -> bool:
    return next(model.parameters()).device.type == "cuda"
