"""The sweep stage: an Optuna study over grad_accum, epochs and learning rate, each trial a nested
MLflow run that trains and evaluates exactly like `molting train`; the best adapter is registered.

What we know is used to spend CPU well:
- a trial whose optimizer steps fall below the pre-flight minimum is pruned before it loads a
  weight (the user's 50-step run is the reason that minimum exists);
- a trial whose held-out ref_nll (the loss on the evaluation questions' reference answers) at an
  epoch's end is worse than the median of earlier trials at the same epoch is stopped there
  (MedianPruner): on CPU a trial's cost is its epochs, and the training loss says how well a trial
  fits its data, not whether it answers right.
Reference trials (the user's original configuration; the preset's default on request) are
enqueued, marked `molting.reference`, and kept out of `trials_to_target`.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import ConfigError, TrainConfig, describe_fixes
from .paths import GPT2_TEMPLATE
from .rubric import DIMENSIONS

# The user's three mistakes: 79 / (1 × 8) × 5 = 50 optimizer steps, GPT-2 separators, no system
# prompt. The LR stays the preset's, as in the README's reproduction (`mlflow run . -e train -P
# epochs=5 -P grad_accum=8 -P batch_size=1 -P system_prompt=none -P chat_template=… -P preflight=warn`),
# so a run of that command is the same configuration and the sweep can reuse it.
USER_ORIGINAL = dict(epochs=5, grad_accum=8, batch_size=1, system_prompt="none",
                     chat_template=str(GPT2_TEMPLATE), preflight="warn")


def _floats(text: str, name: str, n: int | None = None) -> list[float]:
    try:
        vals = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or (n is not None and len(vals) != n):
        raise ConfigError(f"{name}={text!r} is invalid: expected {n or 'one or more'} comma-separated numbers")
    return vals


@dataclass
class SweepConfig:
    model: str = "smol"
    n_trials: int = 12                 # trials this study should reach (across workers), references included
    target: float = 5.0                # rubric score to beat
    stop_at_target: bool = False
    storage: str = ""                  # SQLAlchemy URL; "" = sqlite:///optuna.db beside mlflow.db
    study_name: str = ""               # "" = molting-<model>
    grad_accum: str = "1,2,4,8"        # categorical choices
    epochs: str = "1,4"                # int range lo,hi
    lr: str = "2e-4,3e-3"              # log-uniform range lo,hi
    lora_r: str = ""                   # optional categorical choices, e.g. "8,16,32"
    enqueue_user: bool = True          # the user's original configuration as a reference trial
    enqueue_default: bool = False      # the preset's default configuration as a reference trial
    prune: bool = True                 # stop losing trials at an epoch's end (median ref_nll)
    reuse: bool = True                 # a trial whose exact config already ran to the end reuses that run
    register: bool = True              # register the best adapter as molting-<model>
    seed: int = 42
    experiment: str = "molting"
    dataset: str = TrainConfig.dataset
    min_steps: int = TrainConfig.min_steps

    def __post_init__(self):
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"n_trials={self.n_trials!r} is invalid: expected a whole number ≥ 1")
        if not 0 < float(self.target) <= 10:
            raise ConfigError(f"target={self.target!r} is invalid: expected a rubric score in (0, 10]")
        self.ga_choices = [int(x) for x in _floats(self.grad_accum, "grad_accum")]
        self.epoch_range = [int(x) for x in _floats(self.epochs, "epochs", 2)]
        self.lr_range = _floats(self.lr, "lr", 2)
        self.r_choices = [int(x) for x in _floats(self.lora_r, "lora_r")] if self.lora_r.strip() else []
        if min(self.ga_choices) < 1 or not 1 <= self.epoch_range[0] <= self.epoch_range[1]:
            raise ConfigError("grad_accum choices must be ≥ 1 and epochs a range lo,hi with 1 ≤ lo ≤ hi")
        if not 0 < self.lr_range[0] < self.lr_range[1] < 1:
            raise ConfigError(f"lr={self.lr!r} is invalid: expected lo,hi with 0 < lo < hi < 1, e.g. 2e-4,3e-3")
        TrainConfig(model=self.model, dataset=self.dataset, min_steps=self.min_steps, seed=self.seed)

    def resolved_storage(self) -> str:
        """The given URL; else optuna.db beside a SQLite MLflow store (sqlite:///…/mlflow.db), else here."""
        if self.storage:
            return self.storage
        import mlflow

        uri = mlflow.get_tracking_uri()
        folder = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else Path.cwd()
        return f"sqlite:///{folder.resolve() / 'optuna.db'}"

    def resolved_study(self) -> str:
        return self.study_name or f"molting-{self.model}"


class StepPruned(Exception):
    """Marker: a trial pruned before training (too few optimizer steps)."""


def _trial_config(trial, sc: SweepConfig) -> tuple[TrainConfig, str]:
    ref = trial.user_attrs.get("molting.reference", "")
    common = dict(model=sc.model, dataset=sc.dataset, seed=sc.seed, experiment=sc.experiment, min_steps=sc.min_steps)
    if ref == "user-original":
        cfg = TrainConfig(**common, **USER_ORIGINAL)
        for k in ("grad_accum", "epochs", "lr"):
            trial.set_user_attr(k, getattr(cfg.resolve(), k))
        return cfg, ref
    if ref == "preset-default":
        return TrainConfig(**common), ref
    kw = dict(grad_accum=trial.suggest_categorical("grad_accum", sc.ga_choices),
              epochs=trial.suggest_int("epochs", *sc.epoch_range),
              lr=trial.suggest_float("lr", *sc.lr_range, log=True))
    if sc.r_choices:
        r = trial.suggest_categorical("lora_r", sc.r_choices)
        kw.update(lora_r=r, lora_alpha=2 * r)
    return TrainConfig(**common, **kw), ""


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


def sweep(sc: SweepConfig, log=print) -> dict:
    import mlflow
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from .tracking import lookup_order, stage_run
    from .train import find_finished_run, fingerprint, prepare, train

    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # A worker that dies stops beating; after grace_period its trial is marked FAIL and re-queued once.
    storage = _open_storage(RDBStorage, sc.resolved_storage(), heartbeat_interval=30, grace_period=120,
                            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    sampler = optuna.samplers.TPESampler(seed=sc.seed, multivariate=True, n_startup_trials=4)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    study = optuna.create_study(study_name=sc.resolved_study(), storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if not study.user_attrs.get("molting.references_enqueued"):
        study.set_user_attr("molting.references_enqueued", True)
        if sc.enqueue_user:
            study.enqueue_trial({}, user_attrs={"molting.reference": "user-original"})
        if sc.enqueue_default:
            study.enqueue_trial({}, user_attrs={"molting.reference": "preset-default"})
    t0 = time.time()
    n_examples = None

    def objective(trial):
        nonlocal n_examples
        cfg, ref = _trial_config(trial, sc)
        tags = {"molting.trial": str(trial.number), "molting.study": study.study_name,
                "molting.reference": ref or "no"}
        cfg_r = cfg.resolve()
        if n_examples is None:
            from .data import load_dataset
            n_examples = len(load_dataset(cfg.dataset, "x"))
        steps = cfg_r.optimizer_steps(n_examples)
        if not ref and steps < cfg.min_steps:
            reason = (f"{steps} optimizer steps, below the minimum of {cfg.min_steps}: {cfg_r.arithmetic(n_examples)}; "
                      f"not trained (would pass: {describe_fixes(cfg_r, n_examples)})")
            with stage_run(sc.experiment, f"trial-{trial.number}-pruned", {**tags, "molting.stage": "train",
                                                                           "molting.trial_state": "PRUNED",
                                                                           "molting.prune_reason": reason},
                           nested=True):
                mlflow.log_params({f"train.{k}": v for k, v in asdict(cfg_r).items()
                                   if k in ("epochs", "grad_accum", "batch_size", "lr", "lora_r")})
                mlflow.log_metric("optimizer_steps", steps)
                trial.set_user_attr("prune_reason", reason)
                trial.set_user_attr("steps_pruned", True)
                raise optuna.TrialPruned(reason)  # inside: the child run ends KILLED, like an epoch-pruned one
        t_trial = time.time()
        prepared = prepare(cfg)
        done = find_finished_run(fingerprint(prepared), reuse_in) if sc.reuse else None
        if done is not None:  # this exact configuration already trained and scored: reuse it
            s, run_id, steps, final_loss = _reuse(done, tags, trial, sc.experiment)
        else:
            try:
                result = train(cfg, log=lambda *a: None, nested=True, tags=tags, prepared=prepared,
                               callbacks=(_epoch_pruner_callback(trial, sc.prune and not ref),))
            except optuna.TrialPruned as e:
                trial.set_user_attr("prune_reason", str(e))
                raise
            s, run_id, steps, final_loss = result.scores, result.run_id, result.optimizer_steps, result.final_loss
        for k in (*DIMENSIONS, "score"):
            trial.set_user_attr(k, s[k])
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("optimizer_steps", steps)
        trial.set_user_attr("final_loss", final_loss)
        trial.set_user_attr("elapsed_s", time.time() - t0)
        log(f"trial {trial.number}{' (reference: ' + ref + ')' if ref else ''}: score {s['score']:.2f} "
            f"({steps} steps, {time.time() - t_trial:.0f} s{', reused run ' + run_id[:8] if done else ''})")
        return s["score"]

    def stop_at_target(study_, trial):
        if (sc.stop_at_target and trial.state == TrialState.COMPLETE and trial.value is not None
                and trial.value > sc.target and not trial.user_attrs.get("molting.reference")):
            study_.stop()

    reuse_in: list[str] = []      # set once the parent run exists (the objective reads it)
    with stage_run(sc.experiment, f"sweep-{study.study_name}", {"molting.stage": "sweep", "molting.model": sc.model,
                                                                "molting.study": study.study_name}) as parent:
        # where `mlflow run` or --experiment put it: the trials go there; reuse looks in every experiment
        # holding the project's runs (a train run `mlflow run . -e train` put in `Default`, say)
        reuse_in[:] = lookup_order(parent.info.experiment_id) if sc.reuse else []   # once, not per trial
        mlflow.log_params({f"sweep.{k}": v for k, v in asdict(sc).items()} |
                          {"sweep.storage": _redact(sc.resolved_storage()), "sweep.sampler": "TPE(multivariate)",
                           "sweep.pruner": "min-steps + MedianPruner(epoch loss)" if sc.prune else "min-steps"})
        study.optimize(objective, catch=(Exception,), gc_after_trial=True,
                       callbacks=[_enough_trials(sc.n_trials), stop_at_target])
        summary = _log_study(study, sc, time.time() - t0, parent.info.run_id, log)
    return summary


def _reuse(done, tags: dict, trial, experiment: str):
    """Record a trial answered by an earlier run with the same fingerprint: a nested run that copies
    its config and results and points at it (`molting.reused_run_id`; the adapter, loss curve and
    answers stay there). Seeded training makes retraining it cost time and change nothing."""
    import mlflow

    from .tracking import stage_run

    m = done.data.metrics
    with stage_run(experiment, f"trial-{trial.number}-reused", {**tags, "molting.stage": "train",
                                                                 "molting.reused_run_id": done.info.run_id}, nested=True):
        mlflow.log_params({k: v for k, v in done.data.params.items()
                           if k.startswith(("train.", "model.", "data.", "template.", "lora.", "eval."))})
        mlflow.log_metrics({k: v for k, v in m.items() if k not in ("loss", "learning_rate", "grad_norm")})
    trial.set_user_attr("reused_run_id", done.info.run_id)
    scores = {k: m[k] for k in (*DIMENSIONS, "score")}
    return scores, done.info.run_id, int(m.get("optimizer_steps", 0)), m.get("final_loss", float("nan"))


def _open_storage(cls, url: str, **kw):
    """Open Optuna's RDB storage. Workers started together on an empty database race to create its
    schema (PostgreSQL: duplicate `CREATE TYPE studydirection`); the loser retries and finds it made."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(6):
        try:
            return cls(url, **kw)
        except (IntegrityError, ProgrammingError):
            if attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))


def _enough_trials(n: int):
    """Stop once the study holds n trials that trained (step-pruned ones cost seconds and don't
    count), or 5·n trials in all, so a search space with no valid configuration still ends.
    Counted from the storage, so every worker sharing the study stops at the same total."""
    from optuna.trial import TrialState

    def callback(study, trial):
        trials = study.get_trials(deepcopy=False)
        trained = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
                   and not t.user_attrs.get("steps_pruned")]
        if len(trained) >= n or len(trials) >= 5 * n:
            study.stop()

    return callback


def _redact(url: str) -> str:
    """Storage URL without a password."""
    import re

    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


def _log_study(study, sc: SweepConfig, wall_s: float, parent_run_id: str, log) -> dict:
    import mlflow
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    searched = [t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get("molting.reference")]
    refs = [t for t in trials if t.user_attrs.get("molting.reference") and t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    best = max(searched, key=lambda t: t.value, default=None)
    hit = [t for t in sorted(searched, key=lambda t: t.number) if t.value > sc.target]
    metrics = {"n_trials": len(trials), "n_complete": len(searched) + len(refs), "n_pruned": len(pruned),
               "sweep_wall_s": wall_s}
    if best is not None:
        metrics["best_score"] = best.value
        metrics.update({f"best_{d}": best.user_attrs[d] for d in DIMENSIONS})
    if hit:
        metrics["trials_to_target"] = hit[0].number
        metrics["time_to_target_s"] = hit[0].user_attrs.get("elapsed_s", float("nan"))
    mlflow.log_metrics(metrics)
    mlflow.set_tag("molting.trials_to_target", str(hit[0].number) if hit else "none")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        df = study.trials_dataframe()
        df.to_csv(t / "trials.csv", index=False)
        _write_plots(study, t)
        (t / "sweep_summary.md").write_text(_summary_md(sc, best, refs, pruned, hit, wall_s), encoding="utf-8")
        mlflow.log_artifacts(tmp, "study")
    out = {"best": best, "refs": refs, "metrics": metrics, "parent_run_id": parent_run_id}
    log(_summary_md(sc, best, refs, pruned, hit, wall_s))
    user = next((t for t in refs if t.user_attrs["molting.reference"] == "user-original"), None)
    if best is not None and not _in_this_store(best.user_attrs["run_id"]):
        # Workers sharing a study but not a tracking server: the best run lives in another store.
        log(f"best trial #{best.number} ran on another worker (run {best.user_attrs['run_id'][:8]} is not in "
            f"{mlflow.get_tracking_uri()}): no diagnosis or registration here; share one tracking server "
            "(MLFLOW_TRACKING_URI) across workers to get them")
        return out
    if best is not None:
        from .diagnose import report

        user_id = user.user_attrs["run_id"] if user and _in_this_store(user.user_attrs["run_id"]) else None
        mlflow.log_text(report(best.user_attrs["run_id"], user_id), "diagnosis_best_vs_user.md")
    if sc.register and best is not None:
        from .registry import register_best

        out["version"] = register_best(best.user_attrs["run_id"], sc.model, sc.target, log)
    return out


def _in_this_store(run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def _write_plots(study, folder: Path) -> None:
    """Optuna's plots as self-contained HTML (plotly.js inlined: they open offline)."""
    import optuna.visualization as vis

    for name, fn in (("optimization_history", vis.plot_optimization_history),
                     ("param_importances", vis.plot_param_importances),
                     ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            fn(study).write_html(folder / f"{name}.html", include_plotlyjs=True)
        except Exception as e:  # importances need ≥ 2 completed trials with varied params
            (folder / f"{name}.txt").write_text(f"not drawn: {e}\n", encoding="utf-8")


def _summary_md(sc, best, refs, pruned, hit, wall_s) -> str:
    lines = [f"# Sweep {sc.resolved_study()} ({sc.model})", "",
             f"- trials: best score **{best.value:.2f}**" if best else "- no searched trial completed",
             f"- target {sc.target}: " + (f"first beaten by trial {hit[0].number} after "
                                          f"{hit[0].user_attrs.get('elapsed_s', 0):.0f} s" if hit else "not reached"),
             f"- pruned: {len(pruned)} ({sum('optimizer steps' in t.user_attrs.get('prune_reason', '') for t in pruned)} "
             "for too few optimizer steps, before training)",
             f"- wall time: {wall_s:.0f} s", ""]
    rows = [("best", best)] + [(f"reference: {t.user_attrs['molting.reference']}", t) for t in refs]
    rows = [(n, t) for n, t in rows if t is not None]
    if rows:
        lines += ["| trial | grad_accum | epochs | lr | steps | " + " | ".join(DIMENSIONS) + " | score |",
                  "|---" * (6 + len(DIMENSIONS)) + "|"]
        for name, t in rows:
            ga = t.params.get("grad_accum", t.user_attrs.get("grad_accum", "preset"))
            ep = t.params.get("epochs", t.user_attrs.get("epochs", "preset"))
            lr = t.params.get("lr", t.user_attrs.get("lr", "preset"))
            lr = f"{lr:.2e}" if isinstance(lr, float) else lr
            lines.append(f"| {name} (#{t.number}) | {ga} | {ep} | {lr} | {t.user_attrs.get('optimizer_steps')} | "
                         + " | ".join(f"{t.user_attrs[d]:.2f}" for d in DIMENSIONS) + f" | {t.value:.2f} |")
    return "\n".join(lines) + "\n"
