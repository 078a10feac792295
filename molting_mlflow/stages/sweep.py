"""The sweep stage: an Optuna study over the SEARCH_SPACE table, each trial a nested MLflow run that
trains and evaluates exactly like `molting train`; the best adapter is registered.

Workers: one process by default; `workers=N` (0: one per visible GPU) starts N processes, each on
its own GPU, all in one study (Optuna's storage) and under one parent run (MLflow's store). Each
worker loads a base once and lends it to its trials (models.BaseCache). A worker that dies stops
its heartbeat: its trial is failed and retried once by a surviving worker.

What we know is used to spend compute well:
- a trial whose optimizer steps fall below the pre-flight minimum is pruned before it loads a
  weight (the user's 50-step run is the reason that minimum exists);
- a trial whose held-out ref_nll (the loss on the evaluation questions' reference answers) at an
  epoch's end is worse than the median of earlier trials at the same epoch is stopped there
  (MedianPruner): a trial's cost is its epochs, and the training loss says how well a trial fits
  its data, not whether it answers right.
Reference trials (the user's original configuration; the preset's default on request) are
enqueued, marked `molting.reference`, and kept out of `trials_to_target`.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import mlflow
import optuna
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from transformers import TrainerCallback

from molting_mlflow.ground import bundle, runtime
from molting_mlflow.ground.config import ConfigError, TrainConfig, describe_fixes
from molting_mlflow.ground.data import load_dataset
from molting_mlflow.ground.errors import MoltingError, first_line
from molting_mlflow.ground.generation import generate
from molting_mlflow.ground.judge import check, judge_of
from molting_mlflow.ground.models import BaseCache, resolve_model
from molting_mlflow.ground.paths import GPT2_TEMPLATE
from molting_mlflow.ground.persona import load_persona
from molting_mlflow.ground.prepare import prepare
from molting_mlflow.ground.questions import load_questions
from molting_mlflow.ground.reuse import find_finished_run
from molting_mlflow.ground.rubric import DIMENSIONS
from molting_mlflow.ground.runtime import set_threads
from molting_mlflow.ground.sweep_config import SEARCH_SPACE, SPACE, Space, SweepConfig
from molting_mlflow.ground.tags import (ERROR_TAG, MODEL_TAG, PREFLIGHT_TAG, PRUNE_REASON_TAG, REFERENCE,
                                        REUSED_RUN_TAG, RUBRIC_VERSION_TAG, STAGE_TAG, STUDY_TAG, TRIAL_STATE_TAG)
from molting_mlflow.stages.sweep_report import PRUNED_AT_EPOCH, PRUNED_FOR_STEPS, log_study
from molting_mlflow.stages.train import train
from molting_mlflow.store.experiments import lookup_order
from molting_mlflow.store.reaper import check_database, redact, sweep_up, touch_store
from molting_mlflow.store.tracking import stage_run

# The user's three mistakes: 79 / (1 × 8) × 5 = 50 optimizer steps, GPT-2 separators, no system
# prompt. The LR stays the preset's, as in the README's reproduction, so a run of that command is
# the same configuration and the sweep can reuse it.
USER_ORIGINAL = dict(epochs=5, grad_accum=8, batch_size=1, system_prompt="none",
                     chat_template=str(GPT2_TEMPLATE), preflight="warn")


# ---------------------------------------------------------------------------------------------
# Which searched configurations can train at all
# ---------------------------------------------------------------------------------------------

def step_reach(sc: SweepConfig, model: str, n_examples: int) -> tuple[int, int, TrainConfig]:
    """(configurations of the searched grad_accum × epochs that reach min_steps, all of them, the one
    with the most steps) for one model, at its preset's batch size."""
    base = sc.trial_config(model).resolve()
    accums = sc.space.get("grad_accum", [base.grad_accum])
    lo, hi = sc.space.get("epochs", [base.epochs, base.epochs])
    grid = [replace(base, grad_accum=g, epochs=e) for g in accums for e in range(lo, hi + 1)]
    passing = sum(c.optimizer_steps(n_examples) >= sc.min_steps for c in grid)
    return passing, len(grid), max(grid, key=lambda c: c.optimizer_steps(n_examples))


def check_reach(sc: SweepConfig, n_examples: int) -> list[str]:
    """One line a model on how many searched configurations train; a ConfigError, before any trial,
    where none can (all of them would be pruned before loading a weight)."""
    lines = []
    for model in sc.models():
        passing, total, most = step_reach(sc, model, n_examples)
        if not passing:
            per = most.steps_per_epoch(n_examples)
            need = math.ceil(sc.min_steps / per)
            raise ConfigError(f"no configuration of the search reaches min_steps={sc.min_steps} on {model}: at most "
                              f"{most.arithmetic(n_examples)}; search epochs={need},{need + 5} (at grad_accum="
                              f"{most.grad_accum}), or lower min_steps")
        lines.append(f"{passing} of {total} (grad_accum, epochs) pairs reach min_steps={sc.min_steps} on {model}"
                     + ("" if passing == total else "; the others are pruned before loading a weight"))
    return lines


# ---------------------------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------------------------

def _trial_config(trial, sc: SweepConfig) -> tuple[TrainConfig, str]:
    ref = trial.user_attrs.get(REFERENCE, "")
    if ref == "user-original":
        cfg = sc.trial_config(**USER_ORIGINAL)
        resolved = cfg.resolve()
        for row in SEARCH_SPACE:           # what it has where the search would set a value: the report's columns
            for f in row.config_fields:
                trial.set_user_attr(f, getattr(resolved, f))
        return cfg, ref
    if ref == "preset-default":
        return sc.trial_config(), ref
    kw: dict = {}
    for name, vals in sc.space.items():
        kw.update(SPACE[name].config(SPACE[name].suggest(trial, vals)))
    return sc.trial_config(**kw), ""


def _epoch_pruner_callback(trial, enabled: bool):
    """At each epoch's end, report the held-out ref_nll (the train stage computes it and puts it in
    the trainer's log history) to Optuna as its negative (the study maximises), and stop the trial
    if it should be pruned."""
    class EpochPruner(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kw):
            nll = next((h["ref_nll"] for h in reversed(state.log_history) if "ref_nll" in h), None)
            if nll is None:
                return
            epoch = round(state.epoch or 0)
            trial.report(-nll, epoch)
            if enabled and epoch < args.num_train_epochs and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: ref_nll {nll:.3f} worse than the median of earlier "
                                         "trials at this epoch")

    return EpochPruner()


@dataclass
class Worker:
    """What a worker keeps between trials: its name and device, the parent run, the bases it has
    loaded, and the study's start for time-to-target."""
    sc: SweepConfig
    parent_run_id: str
    experiment_id: str
    name: str = "w0"
    gpu: str = ""
    t0: float = field(default_factory=time.time)
    slot: int = 0                      # which of the trials sharing this worker's GPU
    n_examples: int | None = None

    def __post_init__(self):
        self.bases = BaseCache()
        # reuse looks here first, then in every experiment holding the project's runs (`mlflow run .
        # -e train` puts them in `Default`): looked up once, not per trial
        self.reuse_in = lookup_order(self.experiment_id) if self.sc.reuse else []

    def preload(self, compile_decoding: bool) -> dict:
        """Load the study's (first) base before the first trial, and on CUDA, where the worker has its GPU to
        itself (`compile_decoding`), compile its decoding of the evaluation questions (static cache): a
        worker's costs, paid once, not a trial's. Their seconds.

        Only alone: one Phi-3-mini worker on an H200 then decodes a trial's 8 answers in 0.79 s (3.3 s
        uncompiled), but seven or eight compiled workers on one card grew to ~30 GiB each (their graphs'
        memory pools beside training's), against a plan of 17, and ran it out of memory (2026-12-03,
        benchmarks/README_gpu.md)."""
        p = prepare(self.sc.trial_config(min_steps=0))
        model, load_s = self.bases.take(p.source, p.plan)
        out = {f"worker_load_s.{self.name}": load_s}
        if compile_decoding and p.plan.cuda and p.plan.eval_merge and p.questions:   # trials decode "worker"-merged
            t, p.tokenizer.chat_template = time.time(), p.own_template
            generate(model, p.tokenizer, p.questions, p.system_prompt_text, p.cfg.eval_max_new_tokens,
                     seed=p.cfg.seed, fold=p.fold, static=True)
            p.tokenizer.chat_template = p.template
            self.bases.compiled_decoding = True
            out[f"worker_compile_s.{self.name}"] = time.time() - t
        return out

    def objective(self, trial):
        """Train one configuration (or reuse its finished run) and return its rubric score."""
        t_trial = time.time()
        cfg, ref = _trial_config(trial, self.sc)
        tags = {"molting.trial": str(trial.number), STUDY_TAG: trial.study.study_name,
                REFERENCE: ref or "no", "molting.worker": self.name, "molting.gpu": self.gpu or "none",
                "molting.slot": str(self.slot)}
        trial.set_user_attr("worker", self.name)
        trial.set_user_attr("model", cfg.model)
        # where a trial came from: a resumed study says so, and a report keeps to its own experiment
        trial.set_user_attr("sweep_run_id", self.parent_run_id)
        trial.set_user_attr("experiment_id", self.experiment_id)
        if not ref:
            self._prune_by_steps(trial, cfg, tags)

        t_prepare = time.time()
        prepared = prepare(cfg)
        prepare_s = time.time() - t_prepare
        done = find_finished_run(prepared.fingerprint(), self.reuse_in) if self.sc.reuse else None
        if done is not None:   # this exact configuration already trained and scored: reuse it
            s, run_id, steps, final_loss = _reuse(done, tags, trial, self.parent_run_id)
            busy = 0.0
        else:
            try:
                result = train(cfg, log=lambda *a: None, tags=tags, prepared=prepared, bases=self.bases,
                               parent_run_id=self.parent_run_id, loss_plot=False,
                               callbacks=(_epoch_pruner_callback(trial, self.sc.prune and not ref),))
            except optuna.TrialPruned as e:
                trial.set_user_attr("prune_reason", str(e))
                trial.set_user_attr("prune_cause", PRUNED_AT_EPOCH)
                print(f"trial {trial.number} [{self.name}]: pruned at {e}", flush=True)
                raise
            s, run_id, steps, final_loss = result.scores, result.run_id, result.optimizer_steps, result.final_loss
            busy = result.train_runtime_s + s.get("eval_seconds", 0.0)
        wall = time.time() - t_trial
        attrs = {**{k: s[k] for k in (*DIMENSIONS, "score")}, "run_id": run_id, "optimizer_steps": steps,
                 "final_loss": final_loss, "elapsed_s": time.time() - self.t0, "trial_wall_s": wall}
        if busy:
            attrs["overhead_share"] = max(0.0, 1 - busy / wall)
            _log_trial_time(run_id, wall, attrs["overhead_share"], prepare_s)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        print(f"trial {trial.number} [{self.name}]{' (reference: ' + ref + ')' if ref else ''}: score "
              f"{s['score']:.2f} ({steps} steps, {wall:.0f} s{', reused run ' + run_id[:8] if done else ''})", flush=True)
        return s["score"]

    def _prune_by_steps(self, trial, cfg: TrainConfig, tags: dict) -> None:
        """Below the step minimum: a child run that says why, and no training."""
        cfg_r = cfg.resolve()
        if self.n_examples is None:
            self.n_examples = len(load_dataset(cfg_r.dataset, "x"))
        steps = cfg_r.optimizer_steps(self.n_examples)
        if steps >= cfg.min_steps:
            return
        reason = (f"{cfg_r.too_few_steps(self.n_examples)}; not trained (would pass: "
                  f"{describe_fixes(cfg_r, self.n_examples)})")
        with stage_run(self.sc.experiment, f"trial-{trial.number}-pruned",
                       {**tags, STAGE_TAG: "train", TRIAL_STATE_TAG: "PRUNED",
                        PRUNE_REASON_TAG: reason, "molting.prune_cause": PRUNED_FOR_STEPS},
                       parent_run_id=self.parent_run_id):
            mlflow.log_params({f"train.{k}": v for k, v in asdict(cfg_r).items()
                               if k in ("model", "epochs", "grad_accum", "batch_size", "lr", "lora_r")})
            mlflow.log_metric("optimizer_steps", steps)
            trial.set_user_attr("prune_reason", reason)
            trial.set_user_attr("prune_cause", PRUNED_FOR_STEPS)
            print(f"trial {trial.number} [{self.name}]: pruned before loading a weight: {steps} optimizer steps "
                  f"< min_steps={cfg.min_steps}", flush=True)
            raise optuna.TrialPruned(reason)  # inside: the child run ends KILLED, like an epoch-pruned one


def _log_trial_time(run_id: str, wall: float, share: float, prepare_s: float) -> None:
    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric("trial_wall_s", wall, now, 0),
                                              Metric("trial_overhead_share", share, now, 0),
                                              Metric("time_prepare_s", prepare_s, now, 0)])


def _reuse(done, tags: dict, trial, parent_run_id: str):
    """Record a trial answered by an earlier run with the same fingerprint: a nested run that copies
    its config and results and points at it (`molting.reused_run_id`; the adapter, loss curve and
    answers stay there). Seeded training makes retraining it cost time and change nothing."""
    m = done.data.metrics
    # the rubric version goes with the scores copied (without it, compare and diagnose take them for v1.0)
    copied = {k: done.data.tags[k] for k in (RUBRIC_VERSION_TAG, PREFLIGHT_TAG) if k in done.data.tags}
    with stage_run("", f"trial-{trial.number}-reused", {**tags, **copied, STAGE_TAG: "train",
                                                         REUSED_RUN_TAG: done.info.run_id},
                   parent_run_id=parent_run_id):
        mlflow.log_params({k: v for k, v in done.data.params.items()
                           if k.startswith(("train.", "model.", "data.", "template.", "lora.", "eval.", "persona.",
                                            "questions."))})
        mlflow.log_metrics({k: v for k, v in m.items() if k not in ("loss", "learning_rate", "grad_norm")})
    trial.set_user_attr("reused_run_id", done.info.run_id)
    scores = {k: m[k] for k in (*DIMENSIONS, "score")}
    return scores, done.info.run_id, int(m.get("optimizer_steps", 0)), m.get("final_loss", float("nan"))


# ---------------------------------------------------------------------------------------------
# The study: storage, stopping, workers
# ---------------------------------------------------------------------------------------------

def open_study(sc: SweepConfig):


    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # A worker that dies stops beating; 3 beats later its trial is failed and re-queued once.
    storage = _open_storage(RDBStorage, sc.resolved_storage(), heartbeat_interval=sc.heartbeat_s,
                            grace_period=3 * sc.heartbeat_s,
                            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    sampler = _sampler(sc.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.create_study(study_name=sc.resolved_study(), storage=storage, direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def _sampler(seed: int):
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=4)


def _open_storage(cls, url: str, **kw):
    """Open Optuna's RDB storage. Workers started together on an empty database race to create its
    schema (PostgreSQL: duplicate `CREATE TYPE studydirection`; SQLite: table exists); the loser
    retries and finds it made."""
    check_database(url, "the sweep's storage")
    for attempt in range(8):
        try:
            return cls(url, **kw)
        except ImportError as e:   # optuna: "Failed to import DB access module" (the URL's driver is not installed)
            why = e.__cause__ or e          # optuna's ImportError wraps the driver's ModuleNotFoundError
            raise ConfigError(f"storage={redact(url)}: its database driver is not installed ({why}); install it, "
                              "name one you have (postgresql+psycopg2://…), or leave storage empty (optuna.db)") from None
        except (IntegrityError, ProgrammingError, OperationalError):
            if attempt == 7:
                raise
            time.sleep(0.5 * (attempt + 1))


def _enough_trials(n: int, first: int = 0):
    """Stop once this sweep's trials (numbered from `first`: a resumed study's earlier ones are not
    this sweep's) hold n that trained or are training (step-pruned ones cost seconds and don't
    count), or 10·n in all, so a search space where most configurations are pruned still ends.
    Counted from the storage after each trial, running ones included, so workers sharing the study
    stop at the same total instead of each starting one more; a failed trial that is retried counts
    once."""
    def callback(study, trial):
        trials = [t for t in study.get_trials(deepcopy=False) if t.number >= first]
        retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                                    TrialState.RUNNING)
                   and t.user_attrs.get("prune_cause") != PRUNED_FOR_STEPS and t.number not in retried]
        if len(counted) >= n or len(trials) >= 10 * n:
            study.stop()

    return callback


def sweep_key(parent_run_id: str) -> str:
    """The study's user attribute that records one sweep: its first trial number and experiment."""
    return f"molting.sweep.{parent_run_id}"


def work(sc: SweepConfig, parent_run_id: str, name: str = "w0", gpu: str = "", t0: float | None = None,
         slot: int = 0, alone: bool = True) -> None:
    """One worker's loop: trials until the study holds enough, then the stale trials of dead workers
    are failed and their retries run, so no trial is left RUNNING. `alone`: no other trial shares its GPU
    (then it compiles its decoding once: Worker.preload)."""
    set_threads()
    touch_store()
    study = open_study(sc)
    exp_id = MlflowClient().get_run(parent_run_id).info.experiment_id
    w = Worker(sc, parent_run_id, exp_id, name, gpu, t0 or time.time(), slot)
    for k, v in w.preload(alone).items():
        MlflowClient().log_metric(parent_run_id, k, v)
    first = study.user_attrs.get(sweep_key(parent_run_id), {}).get("first_trial", 0)
    if first:   # a resumed study: seeded as at its start, the sampler would draw its first trials again
        study.sampler = _sampler(sc.seed + first)
    callbacks = [_enough_trials(sc.n_trials, first), _stop_at_target(sc)]
    objective = _recording_failures(w.objective)
    study.optimize(objective, catch=(Exception,), gc_after_trial=True, callbacks=callbacks)
    deadline = time.time() + 4 * sc.heartbeat_s
    while time.time() < deadline:
        fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):        # a retry of a dead worker's trial
            study.optimize(objective, catch=(Exception,), n_trials=1, gc_after_trial=True)
            continue
        if not any(t.state == TrialState.RUNNING for t in trials):
            break
        time.sleep(sc.heartbeat_s / 2)
    _end_runs_of_failed_trials(study, exp_id)
    sweep_up()  # a worker that died mid-study (this host) also left its own sweep run RUNNING


def _recording_failures(objective):
    """The objective, keeping a failed trial's error (its first line) as the trial's fail_reason: a study
    goes on past a failed trial (catch=(Exception,)), and a sweep whose every trial failed says why."""
    @functools.wraps(objective)
    def recorded(trial):
        try:
            return objective(trial)
        except Exception as e:
            if not _is_pruned(e):
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {first_line(e, 500)}")
            raise

    return recorded


def _is_pruned(e: BaseException) -> bool:
    return isinstance(e, optuna.TrialPruned)


class SweepFailed(MoltingError, RuntimeError):
    """No trial of this sweep completed: there is nothing to compare or register."""


def require_a_completed_trial(study, before: set[int]) -> None:
    """Raise SweepFailed when no trial this sweep ran completed (or the study holds none at all); the
    message counts the pruned and failed ones and gives the first reason."""
    trials = study.get_trials(deepcopy=False)
    new = [t for t in trials if t.number not in before]
    if any(t.state == TrialState.COMPLETE for t in (new or trials)):
        return
    pruned = [t for t in new if t.state == TrialState.PRUNED]
    failed = [t for t in new if t.state == TrialState.FAIL]
    first = next((t for t in failed + pruned if t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason")),
                 None)
    why = "" if first is None else (f"; trial {first.number}: " + (first.user_attrs.get("fail_reason") or
                                                                    first.user_attrs["prune_reason"])[:300])
    raise SweepFailed(f"no trial of study '{study.study_name}' completed ({len(pruned)} pruned, {len(failed)} failed of "
                      f"{len(new)} run{why}); fix that, or widen the search (e.g. --epochs) or lower --min-steps, "
                      "and run again")


def _end_runs_of_failed_trials(study, experiment_id: str) -> None:
    """A dead worker's trial: its MLflow run, still RUNNING, ends FAILED with the reason."""
    client = MlflowClient()
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        for run in mlflow.search_runs([experiment_id], output_format="list", filter_string=(
                f"tags.`{STUDY_TAG}` = '{study.study_name}' and tags.`molting.trial` = '{t.number}' "
                "and attributes.status = 'RUNNING'")):
            client.set_tag(run.info.run_id, ERROR_TAG, f"worker {t.user_attrs.get('worker', '?')} stopped "
                           "beating (killed or lost); the trial was failed and retried")
            client.set_terminated(run.info.run_id, "FAILED")


def _stop_at_target(sc: SweepConfig):
    def callback(study, trial):
        if (sc.stop_at_target and trial.state == TrialState.COMPLETE and trial.value is not None
                and trial.value > sc.target and not trial.user_attrs.get(REFERENCE)):
            study.stop()

    return callback


def visible_gpus() -> list[str]:
    """GPU indices this process may use (CUDA_VISIBLE_DEVICES, else all torch sees)."""
    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [g for g in env.split(",") if g.strip()] if env else [str(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class Layout:
    """Where the sweep's workers run: n workers, worker i on GPU gpus[i % len(gpus)] in slot
    i // len(gpus) (round-robin, so the cards fill evenly), each card's budget split between its slots."""
    workers: int
    gpus: tuple[str, ...]
    per_gpu: int                       # trials sharing one card (1 on a CPU)
    why: str
    share_gib: float = 0.0             # each trial's memory budget (0: the card's, one trial a card)

    def place(self, i: int) -> tuple[str, int]:
        """(GPU, slot) of worker i."""
        return (self.gpus[i % len(self.gpus)], i // len(self.gpus)) if self.gpus else ("", 0)


def layout(sc: SweepConfig, gpus: list[str]) -> Layout:
    """How many workers and where: on a CPU one (or `workers`); on GPUs `workers` if given, else
    trials_per_gpu per card (0: runtime.trials_per_gpu from the first model's plan), never more
    workers than trials."""
    if not gpus:
        return Layout(sc.workers or 1, (), 1, "no GPU: trials run one after another in this process")
    budget = sc.gpu_memory_gib or runtime.gpu_free_gib()     # one card's, read once
    if sc.workers:
        k = max(1, -(-sc.workers // len(gpus)))       # ceil: the fullest card's trials
        return Layout(sc.workers, tuple(gpus), k, f"workers={sc.workers} asked for", _share(sc, k, budget))
    if sc.trials_per_gpu:
        k, why = sc.trials_per_gpu, f"trials_per_gpu={sc.trials_per_gpu} asked for"
    else:
        p = prepare(sc.trial_config(min_steps=0))
        k, why = runtime.trials_per_gpu(p.plan.peak_gib or 0.0, budget, os.cpu_count() or 1, len(gpus))
    k = min(k, max(1, -(-sc.n_trials // len(gpus))))
    return Layout(min(k * len(gpus), max(sc.n_trials, len(gpus))), tuple(gpus), k, why, _share(sc, k, budget))


def _share(sc: SweepConfig, k: int, budget: float) -> float:
    """A trial's memory budget when k share a card of `budget` GiB: budget / k (the configured budget,
    0 = the card's, when one trial has it all)."""
    if k == 1:
        return sc.gpu_memory_gib
    return round(budget / k, 2)


def _spawn_workers(sc: SweepConfig, parent_run_id: str, lay: Layout, t0: float, log) -> None:
    """The layout's worker processes, each seeing only its GPU and a share of the host's cores; waits
    for all of them."""
    procs = []
    threads = max(1, (os.cpu_count() or 1) // lay.workers)
    wsc = replace(sc, gpu_memory_gib=lay.share_gib) if lay.gpus else sc
    for i in range(lay.workers):
        gpu, slot = lay.place(i)
        env = {**os.environ, "MOLTING_SWEEP_T0": str(t0), "MOLTING_THREADS": str(threads)}
        env.pop("MLFLOW_RUN_ID", None)
        if gpu:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, "-m", "molting_mlflow.cli", "sweep-worker", "--config", wsc.to_json(),
               "--parent-run-id", parent_run_id, "--name", f"w{i}-of-{lay.workers}", "--gpu", gpu,
               "--slot", str(slot), *(["--alone"] if lay.per_gpu == 1 else [])]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    dead = [f"w{i} (exit {c})" for i, c in enumerate(codes) if c]
    if dead:
        log(f"worker(s) {', '.join(dead)} stopped early; the others finished the study")


def sweep(sc: SweepConfig, log=print) -> dict:
    """Open the parent run and the study, say what this sweep will do, run the workers, and report."""
    for model in sc.models():
        resolve_model(model)                 # an unknown model fails here, in one line, before any trial
    data = sc.trial_config().resolve()
    _check_bundle(data)
    if sc.judge_finalists:          # a dead judge is one line now, not after the study
        log(f"judge {sc.judge}: {check(judge_of(sc))}")
    reach = check_reach(sc, len(load_dataset(data.dataset, "x")))   # a search that can train nothing, too
    lay = layout(sc, visible_gpus())
    touch_store()
    t0 = time.time()
    with stage_run(sc.experiment, "sweep", {STAGE_TAG: "sweep", MODEL_TAG: sc.model}) as parent:
        experiment = mlflow.get_experiment(parent.info.experiment_id)
        sc = replace(sc, study_name=sc.resolved_study(experiment.name))   # the workers open this one
        study = open_study(sc)                   # made here, once: workers only open it
        first = _begin(study, sc, parent.info.run_id, experiment)
        log(announce(study, sc, first, experiment.name, reach))
        log(f"  on {lay.workers} worker(s){' on GPU(s) ' + ','.join(lay.gpus) if lay.gpus else ''}: {lay.why}")
        mlflow.set_tags({"mlflow.runName": f"sweep-{study.study_name}", STUDY_TAG: study.study_name})
        mlflow.log_params({f"sweep.{k}": v for k, v in asdict(sc).items() if k not in ("search", "storage")}
                          | {f"sweep.search.{k}": ",".join(map(str, v)) for k, v in sc.space.items()}
                          | {"sweep.storage": redact(sc.resolved_storage()), "sweep.sampler": "TPE(multivariate)",
                             "sweep.workers": lay.workers, "sweep.trials_per_gpu": lay.per_gpu,
                             "sweep.trials_per_gpu_why": lay.why[:500], "sweep.trial_memory_gib": lay.share_gib,
                             "sweep.first_trial": first,
                             "sweep.pruner": "min-steps + MedianPruner(epoch ref_nll)" if sc.prune else "min-steps"})
        if lay.workers == 1:
            work(sc, parent.info.run_id, f"w0-pid{os.getpid()}", lay.place(0)[0], t0, alone=lay.per_gpu == 1)
        else:
            _spawn_workers(sc, parent.info.run_id, lay, t0, log)
        summary = log_study(study, sc, time.time() - t0, parent.info.run_id, log, first)
        require_a_completed_trial(study, set(range(first)))   # inside: the parent run ends FAILED with the reason
    return summary


def _begin(study, sc: SweepConfig, parent_run_id: str, experiment) -> int:
    """Record this sweep on the study (its first trial number, its experiment) and enqueue the
    reference trials where the study is new. Returns the first trial number this sweep makes."""
    first = len(study.get_trials(deepcopy=False))
    study.set_user_attr(sweep_key(parent_run_id), {"first_trial": first, "experiment_id": experiment.experiment_id,
                                                   "experiment": experiment.name, "n_trials": sc.n_trials})
    if not study.user_attrs.get("molting.references_enqueued"):
        study.set_user_attr("molting.references_enqueued", True)
        if sc.enqueue_user:
            study.enqueue_trial({}, user_attrs={REFERENCE: "user-original"})
        if sc.enqueue_default:
            study.enqueue_trial({}, user_attrs={REFERENCE: "preset-default"})
    return first


def announce(study, sc: SweepConfig, first: int, experiment: str, reach: list[str]) -> str:
    """What this sweep will do, before it does it: a new or resumed study (with its earlier trials and
    the sweeps they came from), how many new trials, the searched ranges, and what gets registered."""
    where = f"'{study.study_name}' in {redact(sc.resolved_storage())}"
    if first:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < first]
        states = Counter(t.state.name.lower() for t in earlier)
        origins = Counter(t.user_attrs.get("sweep_run_id", "") for t in earlier)
        head = (f"sweep: resuming study {where}: {first} trial(s) so far ("
                + ", ".join(f"{k} {v}" for k, v in sorted(states.items())) + "), from "
                + ", ".join(f"{_origin(study, run_id)} ({count})" for run_id, count in origins.items())
                + f"; this sweep adds {sc.n_trials} new trial(s), numbered from {first} "
                "(another --study-name starts a new study)")
    else:
        refs = [t.user_attrs[REFERENCE] for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get(REFERENCE)]
        head = (f"sweep: new study {where} for experiment '{experiment}': {sc.n_trials} new trial(s)"
                + (f", the reference(s) {', '.join(refs)} first" if refs else ""))
        if refs and sc.n_trials <= len(refs):
            head += f" (n_trials={sc.n_trials} trains only the reference(s): raise it to search)"
    ranges = " × ".join(f"{k} {_range_text(SPACE[k], v)}" for k, v in sc.space.items())
    tail = (f"registers the best searched trial as molting-{sc.models()[0]}" if sc.register
            else "registers nothing (register=false)")
    return "\n".join([head, f"  searching {ranges}", *(f"  {line}" for line in reach), f"  then {tail}"])


def _range_text(row: Space, vals: list) -> str:
    """'1,2,4,8', '15–20', '0.0002–0.003 (log)': a searched row's range as the announcement says it."""
    if row.kind == "choice":
        return ",".join(map(str, vals))
    return f"{vals[0]:g}–{vals[1]:g}" + (" (log)" if row.kind == "log" else "")


def _origin(study, parent_run_id: str) -> str:
    """'sweep run 1a2b3c4d in experiment 'molting'', from what the study recorded of that sweep."""
    if not parent_run_id:
        return "trials that never started or older sweeps"
    seen = study.user_attrs.get(sweep_key(parent_run_id), {})
    return f"sweep run {parent_run_id[:8]} in experiment '{seen.get('experiment', '?')}'"


def _check_bundle(cfg: TrainConfig) -> None:
    """The persona card and its questions belong together, before any trial (the user's reference trial
    trains with preflight=warn, which would let a mismatch through). `cfg`: a trial's, resolved."""
    bundle.check(load_persona(cfg.persona), cfg.questions, load_questions(cfg.questions) if cfg.questions else [])
