"""Reuse of finished runs: a run's fingerprint (what decides its adapter and scores), the code
version in it, and the look-up of a finished, scored run with the same fingerprint. A sweep's trial
that matches one is answered by it instead of retraining; only a run of the same code version
matches (MLflow's multistep example reuses a run only when its git commit matches too).

mlflow is imported where a look-up runs: `molting preflight` fingerprints nothing and starts fast.
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from importlib.metadata import PackageNotFoundError, version

from molting_mlflow.ground.paths import PACKAGE_DIR
from molting_mlflow.ground.tags import REUSED_RUN_TAG

DIST_NAME = "molting-mlflow"   # the distribution (pyproject's `name`): its installed version


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and, in a git checkout, its commit (+dirty): a changed training path
    never answers a sweep's trial with a stale run."""
    try:
        v = version(DIST_NAME)
    except PackageNotFoundError:
        v = "unknown"
    root = PACKAGE_DIR.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "molting_mlflow"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = dirty = ""
    return f"{v}+{sha}{'.dirty' if dirty else ''}" if sha else v


# Params that name where things are, how the run was asked for, or how fast it ran, not what trains:
# left out of the fingerprint, so the same config from `mlflow run` (relative paths) and a sweep
# (absolute) match, and a bigger card (another micro-batch) reuses a smaller one's run.
NOT_IN_FINGERPRINT = {"train.experiment", "train.dataset", "train.persona", "train.questions", "train.chat_template",
                       "train.preflight", "train.min_steps", "train.cpu_threads", "model.source", "template.source",
                       "train.precision_why", "train.micro_batch", "train.accum_steps", "train.attn_implementation",
                       "train.est_gpu_memory_gib", "train.gpu_memory_budget_gib", "train.gpu_memory_gib", "train.eval_merge",
                       "train.answer_logits_only",
                       "train.cpu_bf16", "train.optimizer", "train.gradient_checkpointing", "train.cpu_threads_why",
                       # who reads the answers beside the rubric changes no adapter and no rubric score
                       "train.judge", "train.judge_base_url", "train.judge_timeout_s"}


def fingerprint(params: dict, system_prompt_text: str | None) -> str:
    """sha256 of everything that decides a run's adapter and scores: its params (prepare.Prepared.params:
    the resolved config, the model revision, the dataset, the template, the persona and the questions
    by their sha256, the device and precision, and the code version) less NOT_IN_FINGERPRINT, and the
    system prompt's text. Training is seeded, so two runs with one fingerprint train the same adapter
    (up to floating-point reduction order) and a sweep may reuse a finished one instead of retraining."""
    ident = {k: str(v) for k, v in params.items() if k not in NOT_IN_FINGERPRINT}
    ident.update({"system_prompt_text": system_prompt_text or ""})
    return hashlib.sha256(json.dumps(ident, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def find_finished_run(fp: str, experiment_ids: list[str]):
    """A FINISHED, scored run with fingerprint `fp` in these experiments (an original, not a reuse), or None."""
    import mlflow

    if not experiment_ids:
        return None
    runs = mlflow.search_runs(experiment_ids=experiment_ids, output_format="list",
                              order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.`molting.fingerprint` = '{fp}' and attributes.status = 'FINISHED'")
    return next((r for r in runs if "score" in r.data.metrics and REUSED_RUN_TAG not in r.data.tags), None)
