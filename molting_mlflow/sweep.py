"""The sweep stage: an Optuna study over the SEARCH_SPACE table, each trial a nested MLflow run that
trains and evaluates exactly like `molting train`; the best adapter is registered.

Workers: one process by default; `workers=N` (0: one per visible GPU) starts N processes, each on
its own GPU, all in one study (Optuna's storage) and under one parent run (MLflow's store). Each
worker loads a base once and lends it to its trials (train.BaseCache). A worker that dies stops
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

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .config import ConfigError, TrainConfig, describe_fixes
from .paths import GPT2_TEMPLATE
from .rubric import DIMENSIONS

# The user's three mistakes: 79 / (1 × 8) × 5 = 50 optimizer steps, GPT-2 separators, no system
# prompt. The LR stays the preset's, as in the README's reproduction, so a run of that command is
# the same configuration and the sweep can reuse it.
USER_ORIGINAL = dict(epochs=5, grad_accum=8, batch_size=1, system_prompt="none",
                     chat_template=str(GPT2_TEMPLATE), preflight="warn")


# ---------------------------------------------------------------------------------------------
# The search space: one row a searched parameter. The CLI's options, the MLproject's `search`
# parameter and the trials all read it; adding a parameter is adding a row.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Space:
    name: str                      # the Optuna parameter (and the CLI option --<name>)
    kind: str                      # choice: values a,b,c | int: range lo,hi | log: log-uniform range lo,hi
    default: str                   # "" = not searched unless given
    help: str
    cast: Callable = float
    to_config: Callable = None     # value → TrainConfig fields (default: {name: value})

    def parse(self, text: str) -> list:
        try:
            vals = [self.cast(x.strip()) for x in str(text).split(",") if x.strip()]
        except ValueError:
            vals = []
        ok = bool(vals) and (self.kind == "choice" or (len(vals) == 2 and vals[0] <= vals[1]))
        if self.kind == "log":
            ok = ok and 0 < vals[0] < vals[1] < 1
        if not ok:
            form = {"choice": "comma-separated choices", "int": "a range lo,hi with lo ≤ hi",
                    "log": "a range lo,hi with 0 < lo < hi < 1"}[self.kind]
            raise ConfigError(f"{self.name}={text!r} is invalid: expected {form}, e.g. {self.default or 'see --help'}")
        return vals

    def suggest(self, trial, vals: list):
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, vals)
        if self.kind == "int":
            return trial.suggest_int(self.name, *vals)
        return trial.suggest_float(self.name, *vals, log=True)

    def config(self, value) -> dict:
        return self.to_config(value) if self.to_config else {self.name: value}


def _models(value: str) -> dict:
    return {"model": value}


SEARCH_SPACE: tuple[Space, ...] = (
    Space("grad_accum", "choice", "1,2,4,8", "Micro-batches an optimizer step, at the preset's batch_size (choices).",
          int),
    Space("epochs", "int", "1,4", "Passes over the data (range lo,hi).", int),
    Space("lr", "log", "2e-4,3e-3", "Peak learning rate (log-uniform range lo,hi).", float),
    Space("lora_r", "choice", "", "LoRA rank, alpha = 2 × rank (choices, e.g. 8,16,32).", int,
          lambda r: {"lora_r": r, "lora_alpha": 2 * r}),
    Space("models", "choice", "", "Presets compared in one study (choices, e.g. tinyllama,phi3); empty: --model.",
          str, _models),
)
SPACE = {s.name: s for s in SEARCH_SPACE}


def parse_search(text: str) -> dict[str, str]:
    """`grad_accum=1,2;lr=1e-4,1e-3` (the MLproject's `search` parameter) → {name: values}."""
    out = {}
    for part in filter(None, (p.strip() for p in re.split(r"[;\s]+", text or ""))):
        name, sep, vals = part.partition("=")
        if not sep or name not in SPACE:
            raise ConfigError(f"search={text!r} is invalid at {part!r}: expected name=values; names: "
                              + ", ".join(SPACE))
        out[name] = vals
    return out


@dataclass
class SweepConfig:
    model: str = "smol"
    n_trials: int = 12                 # trials this study should reach (across workers), references included
    target: float = 5.0                # rubric score to beat
    stop_at_target: bool = False
    storage: str = ""                  # SQLAlchemy URL; "" = sqlite:///optuna.db beside mlflow.db
    study_name: str = ""               # "" = molting-<model>
    search: dict = field(default_factory=dict)  # {space name: values}; rows not given take their default
    enqueue_user: bool = True          # the user's original configuration as a reference trial
    enqueue_default: bool = False      # the preset's default configuration as a reference trial
    prune: bool = True                 # stop losing trials at an epoch's end (median ref_nll)
    reuse: bool = True                 # a trial whose exact config already ran to the end reuses that run
    register: bool = True              # register the best adapter as molting-<model>
    seed: int = 42
    experiment: str = "molting"
    dataset: str = TrainConfig.dataset
    persona: str = TrainConfig.persona
    questions: str = TrainConfig.questions
    min_steps: int = TrainConfig.min_steps
    workers: int = 1                   # processes sharing the study; 0 = one per visible GPU
    heartbeat_s: int = 10              # a worker's beat; after 3 missed beats its trial is failed and retried
    precision: str = "auto"            # passed to every trial (runtime plan)

    def __post_init__(self):
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"n_trials={self.n_trials!r} is invalid: expected a whole number ≥ 1")
        if not 0 < float(self.target) <= 10:
            raise ConfigError(f"target={self.target!r} is invalid: expected a rubric score in (0, 10]")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers={self.workers!r} is invalid: expected a whole number ≥ 0 (0 = one per GPU)")
        unknown = set(self.search) - set(SPACE)
        if unknown:
            raise ConfigError(f"unknown searched parameter(s) {sorted(unknown)}; known: {', '.join(SPACE)}")
        self.space = {s.name: s.parse(self.search.get(s.name) or s.default) for s in SEARCH_SPACE
                      if self.search.get(s.name) or s.default}
        for model in self.models():
            TrainConfig(model=model, dataset=self.dataset, persona=self.persona, questions=self.questions,
                        min_steps=self.min_steps, seed=self.seed, precision=self.precision)

    def models(self) -> list[str]:
        return self.space.get("models") or [self.model]

    def resolved_storage(self) -> str:
        """The given URL; else optuna.db beside a SQLite MLflow store (sqlite:///…/mlflow.db), else here."""
        if self.storage:
            return self.storage
        import mlflow

        uri = mlflow.get_tracking_uri()
        folder = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else Path.cwd()
        return f"sqlite:///{folder.resolve() / 'optuna.db'}"

    def resolved_study(self) -> str:
        return self.study_name or f"molting-{'-'.join(self.models())}"

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items()})


# ---------------------------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------------------------

def _trial_config(trial, sc: SweepConfig) -> tuple[TrainConfig, str]:
    ref = trial.user_attrs.get("molting.reference", "")
    common = dict(model=sc.models()[0], dataset=sc.dataset, persona=sc.persona, questions=sc.questions, seed=sc.seed,
                  experiment=sc.experiment, min_steps=sc.min_steps, precision=sc.precision)
    if ref == "user-original":
        cfg = TrainConfig(**common, **USER_ORIGINAL)
        for k in ("grad_accum", "epochs", "lr"):
            trial.set_user_attr(k, getattr(cfg.resolve(), k))
        return cfg, ref
    if ref == "preset-default":
        return TrainConfig(**common), ref
    kw: dict = {}
    for name, vals in sc.space.items():
        kw.update(SPACE[name].config(SPACE[name].suggest(trial, vals)))
    return TrainConfig(**{**common, **kw}), ""


def _epoch_pruner_callback(trial, enabled: bool):
    """At each epoch's end, report the held-out ref_nll (the train stage computes it and puts it in
    the trainer's log history) to Optuna as its negative (the study maximises), and stop the trial
    if it should be pruned."""
    from transformers import TrainerCallback

    class EpochPruner(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kw):
            import optuna

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
    n_examples: int | None = None

    def __post_init__(self):
        from .tracking import lookup_order
        from .train import BaseCache

        self.bases = BaseCache()
        # reuse looks here first, then in every experiment holding the project's runs (`mlflow run .
        # -e train` puts them in `Default`): looked up once, not per trial
        self.reuse_in = lookup_order(self.experiment_id) if self.sc.reuse else []

    def preload(self) -> float:
        """Load the study's (first) base before the first trial: a worker's cost, not a trial's."""
        from .train import prepare

        cfg = TrainConfig(model=self.sc.models()[0], dataset=self.sc.dataset, persona=self.sc.persona,
                          questions=self.sc.questions, min_steps=0, precision=self.sc.precision)
        return self.bases.take(prepare(cfg))[1]

    def objective(self, trial):
        """Train one configuration (or reuse its finished run) and return its rubric score."""
        import optuna

        t_trial = time.time()
        cfg, ref = _trial_config(trial, self.sc)
        tags = {"molting.trial": str(trial.number), "molting.study": trial.study.study_name,
                "molting.reference": ref or "no", "molting.worker": self.name, "molting.gpu": self.gpu or "none"}
        trial.set_user_attr("worker", self.name)
        trial.set_user_attr("model", cfg.model)
        if not ref:
            self._prune_by_steps(trial, cfg, tags)
        from .train import find_finished_run, fingerprint, prepare, train

        t_prepare = time.time()
        prepared = prepare(cfg)
        prepare_s = time.time() - t_prepare
        done = find_finished_run(fingerprint(prepared), self.reuse_in) if self.sc.reuse else None
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
        import mlflow
        import optuna

        from .tracking import stage_run

        cfg_r = cfg.resolve()
        if self.n_examples is None:
            from .data import load_dataset
            self.n_examples = len(load_dataset(cfg_r.dataset, "x"))
        steps = cfg_r.optimizer_steps(self.n_examples)
        if steps >= cfg.min_steps:
            return
        reason = (f"{steps} optimizer steps, below the minimum of {cfg.min_steps}: {cfg_r.arithmetic(self.n_examples)}; "
                  f"not trained (would pass: {describe_fixes(cfg_r, self.n_examples)})")
        with stage_run(self.sc.experiment, f"trial-{trial.number}-pruned",
                       {**tags, "molting.stage": "train", "molting.trial_state": "PRUNED",
                        "molting.prune_reason": reason}, parent_run_id=self.parent_run_id):
            mlflow.log_params({f"train.{k}": v for k, v in asdict(cfg_r).items()
                               if k in ("model", "epochs", "grad_accum", "batch_size", "lr", "lora_r")})
            mlflow.log_metric("optimizer_steps", steps)
            trial.set_user_attr("prune_reason", reason)
            trial.set_user_attr("steps_pruned", True)
            raise optuna.TrialPruned(reason)  # inside: the child run ends KILLED, like an epoch-pruned one


def _log_trial_time(run_id: str, wall: float, share: float, prepare_s: float) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric("trial_wall_s", wall, now, 0),
                                              Metric("trial_overhead_share", share, now, 0),
                                              Metric("time_prepare_s", prepare_s, now, 0)])


def _reuse(done, tags: dict, trial, parent_run_id: str):
    """Record a trial answered by an earlier run with the same fingerprint: a nested run that copies
    its config and results and points at it (`molting.reused_run_id`; the adapter, loss curve and
    answers stay there). Seeded training makes retraining it cost time and change nothing."""
    import mlflow

    from .tracking import stage_run

    m = done.data.metrics
    with stage_run("", f"trial-{trial.number}-reused", {**tags, "molting.stage": "train",
                                                         "molting.reused_run_id": done.info.run_id},
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
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # A worker that dies stops beating; 3 beats later its trial is failed and re-queued once.
    storage = _open_storage(RDBStorage, sc.resolved_storage(), heartbeat_interval=sc.heartbeat_s,
                            grace_period=3 * sc.heartbeat_s,
                            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    sampler = optuna.samplers.TPESampler(seed=sc.seed, multivariate=True, n_startup_trials=4)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.create_study(study_name=sc.resolved_study(), storage=storage, direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def _open_storage(cls, url: str, **kw):
    """Open Optuna's RDB storage. Workers started together on an empty database race to create its
    schema (PostgreSQL: duplicate `CREATE TYPE studydirection`; SQLite: table exists); the loser
    retries and finds it made."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(8):
        try:
            return cls(url, **kw)
        except (IntegrityError, ProgrammingError, OperationalError):
            if attempt == 7:
                raise
            time.sleep(0.5 * (attempt + 1))


def _enough_trials(n: int):
    """Stop once the study holds n trials that trained or are training (step-pruned ones cost seconds
    and don't count), or 5·n trials in all, so a search space with no valid configuration still
    ends. Counted from the storage after each trial, running ones included, so workers sharing the
    study stop at the same total instead of each starting one more; a failed trial that is retried
    counts once."""
    from optuna.trial import TrialState

    def callback(study, trial):
        trials = study.get_trials(deepcopy=False)
        retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                                    TrialState.RUNNING)
                   and not t.user_attrs.get("steps_pruned") and t.number not in retried]
        if len(counted) >= n or len(trials) >= 5 * n:
            study.stop()

    return callback


def work(sc: SweepConfig, parent_run_id: str, name: str = "w0", gpu: str = "", t0: float | None = None) -> None:
    """One worker's loop: trials until the study holds enough, then the stale trials of dead workers
    are failed and their retries run, so no trial is left RUNNING."""
    from mlflow.tracking import MlflowClient
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from .runtime import set_threads
    from .reaper import sweep_up, touch_store

    set_threads()
    touch_store()
    study = open_study(sc)
    exp_id = MlflowClient().get_run(parent_run_id).info.experiment_id
    w = Worker(sc, parent_run_id, exp_id, name, gpu, t0 or time.time())
    MlflowClient().log_metric(parent_run_id, f"worker_load_s.{name}", w.preload())
    callbacks = [_enough_trials(sc.n_trials), _stop_at_target(sc)]
    study.optimize(w.objective, catch=(Exception,), gc_after_trial=True, callbacks=callbacks)
    deadline = time.time() + 4 * sc.heartbeat_s
    while time.time() < deadline:
        fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):        # a retry of a dead worker's trial
            study.optimize(w.objective, catch=(Exception,), n_trials=1, gc_after_trial=True)
            continue
        if not any(t.state == TrialState.RUNNING for t in trials):
            break
        time.sleep(sc.heartbeat_s / 2)
    _end_runs_of_failed_trials(study, exp_id)
    sweep_up()  # a worker that died mid-study (this host) also left its own sweep run RUNNING


def _end_runs_of_failed_trials(study, experiment_id: str) -> None:
    """A dead worker's trial: its MLflow run, still RUNNING, ends FAILED with the reason."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    client = MlflowClient()
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        for run in mlflow.search_runs([experiment_id], output_format="list", filter_string=(
                f"tags.`molting.study` = '{study.study_name}' and tags.`molting.trial` = '{t.number}' "
                "and attributes.status = 'RUNNING'")):
            client.set_tag(run.info.run_id, "molting.error", f"worker {t.user_attrs.get('worker', '?')} stopped "
                           "beating (killed or lost); the trial was failed and retried")
            client.set_terminated(run.info.run_id, "FAILED")


def _stop_at_target(sc: SweepConfig):
    from optuna.trial import TrialState

    def callback(study, trial):
        if (sc.stop_at_target and trial.state == TrialState.COMPLETE and trial.value is not None
                and trial.value > sc.target and not trial.user_attrs.get("molting.reference")):
            study.stop()

    return callback


def visible_gpus() -> list[str]:
    """GPU indices this process may use (CUDA_VISIBLE_DEVICES, else all torch sees)."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [g for g in env.split(",") if g.strip()] if env else [str(i) for i in range(torch.cuda.device_count())]


def _spawn_workers(sc: SweepConfig, parent_run_id: str, n: int, t0: float, log) -> None:
    """n worker processes, worker i on GPU i (when there are GPUs); waits for all of them."""
    gpus = visible_gpus()
    procs = []
    for i in range(n):
        env = {**os.environ, "MOLTING_SWEEP_T0": str(t0)}
        env.pop("MLFLOW_RUN_ID", None)
        gpu = gpus[i % len(gpus)] if gpus else ""
        if gpu:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, "-m", "molting_mlflow.cli", "sweep-worker", "--config", sc.to_json(),
               "--parent-run-id", parent_run_id, "--name", f"w{i}-of-{n}", "--gpu", gpu]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    dead = [f"w{i} (exit {c})" for i, c in enumerate(codes) if c]
    if dead:
        log(f"worker(s) {', '.join(dead)} stopped early; the others finished the study")


def sweep(sc: SweepConfig, log=print) -> dict:
    """Open the parent run and the study, run the workers, and report."""
    import mlflow

    from .models import resolve_model
    from .sweep_report import log_study
    from .reaper import touch_store
    from .tracking import stage_run

    for model in sc.models():
        resolve_model(model)                 # an unknown model fails here, in one line, before any trial
    _check_bundle(sc)
    n = sc.workers or max(1, len(visible_gpus()))
    touch_store()
    study = open_study(sc)                   # made here, once: workers only open it
    if not study.user_attrs.get("molting.references_enqueued"):
        study.set_user_attr("molting.references_enqueued", True)
        if sc.enqueue_user:
            study.enqueue_trial({}, user_attrs={"molting.reference": "user-original"})
        if sc.enqueue_default:
            study.enqueue_trial({}, user_attrs={"molting.reference": "preset-default"})
    t0 = time.time()
    with stage_run(sc.experiment, f"sweep-{study.study_name}", {"molting.stage": "sweep", "molting.model": sc.model,
                                                                "molting.study": study.study_name}) as parent:
        mlflow.log_params({f"sweep.{k}": v for k, v in asdict(sc).items() if k not in ("search", "storage")}
                          | {f"sweep.search.{k}": ",".join(map(str, v)) for k, v in sc.space.items()}
                          | {"sweep.storage": _redact(sc.resolved_storage()), "sweep.sampler": "TPE(multivariate)",
                             "sweep.workers": n, "sweep.pruner": "min-steps + MedianPruner(epoch ref_nll)"
                             if sc.prune else "min-steps"})
        if n == 1:
            work(sc, parent.info.run_id, f"w0-pid{os.getpid()}", (visible_gpus() or [""])[0], t0)
        else:
            _spawn_workers(sc, parent.info.run_id, n, t0, log)
        summary = log_study(study, sc, time.time() - t0, parent.info.run_id, log)
    return summary


def _check_bundle(sc: SweepConfig) -> None:
    """The persona card and its questions belong together, before any trial (the user's reference trial
    trains with preflight=warn, which would let a mismatch through)."""
    from . import bundle
    from .persona import load_persona
    from .rubric import load_questions

    cfg = TrainConfig(model=sc.models()[0], dataset=sc.dataset, persona=sc.persona, questions=sc.questions).resolve()
    bundle.check(load_persona(cfg.persona), cfg.questions, load_questions(cfg.questions) if cfg.questions else [])


def _redact(url: str) -> str:
    """Storage URL without a password."""
    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)
