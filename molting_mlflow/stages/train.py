"""The train stage: pre-flight, then TRL's SFTTrainer with a peft LoRA, every step in MLflow.

Order matters for the user: everything that can be wrong with the input (config, model, dataset,
template, memory) is found before a run is opened or a weight is loaded, so a mistake costs seconds.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import torch
from datasets import Dataset
from mlflow.tracking import MlflowClient
from peft import LoraConfig
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import ProgressCallback
from trl import SFTConfig, SFTTrainer

from molting_mlflow.ground import bundle, runtime
from molting_mlflow.ground.config import TrainConfig
from molting_mlflow.ground.errors import MoltingError
from molting_mlflow.ground.generation import reference_nll
from molting_mlflow.ground.judge import Judge, check, judge_of
from molting_mlflow.ground.models import BaseCache, load_for_training
from molting_mlflow.ground.preflight import EVAL_LEAK, UNTRAINABLE
from molting_mlflow.ground.prepare import Prepared, prepare
from molting_mlflow.ground.tags import (ADAPTER_DIR, ADAPTER_LOGGED_TAG, ADAPTER_META, EVAL_LEAK_TAG, MODEL_TAG,
                                        PREFLIGHT_ARTIFACT, PREFLIGHT_TAG, STAGE_TAG, adapter_uri)
from molting_mlflow.store.evaluation import answer_and_score
from molting_mlflow.store.interrupt import Interrupted, interrupted_training, stop_at_step_end
from molting_mlflow.store.tracking import stage_run
from molting_mlflow.store.ui_view import UI_DEFAULT, traces_url, ui_base


class PreflightFailed(MoltingError, RuntimeError):
    """Pre-flight found errors and preflight=strict."""


class TrainingDiverged(MoltingError, RuntimeError):
    """The loss or the gradient norm became NaN or infinite: training stopped at that optimizer step."""
    def __init__(self, step: int, what: str, cfg: TrainConfig):
        self.step = step
        super().__init__(f"training diverged: {what} at optimizer step {step} (lr={cfg.lr:g}, lora_alpha/lora_r="
                         f"{cfg.lora_alpha / cfg.lora_r:g}); lower the learning rate or lora_alpha")


@dataclass
class TrainResult:
    run_id: str
    optimizer_steps: int
    final_loss: float
    train_runtime_s: float
    adapter_uri: str
    preflight: str
    losses: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)     # the rubric's summary when the run evaluated itself


class _Clock:
    """Seconds a run spends in each phase outside the training loop, logged as time_<phase>_s
    metrics: where a trial's fat is (the sweep's overhead share, the GPU benchmark's breakdown)."""
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t = time.time()
        try:
            yield
        finally:
            key = f"time_{phase}_s"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.time() - t


def _since_process_start() -> float:
    """Seconds from this process's start to now: interpreter start-up and imports, for a train run
    that is the process's first work (`molting train`, `mlflow run`'s child)."""
    return time.time() - psutil.Process().create_time()


def train(cfg: TrainConfig, log=print, *, nested: bool = False, tags: dict | None = None,
          callbacks: tuple = (), prepared: Prepared | None = None, bases: BaseCache | None = None,
          parent_run_id: str | None = None, loss_plot: bool = True) -> TrainResult:
    """Train (and evaluate) in one MLflow run: attached to `mlflow run`'s, a new one, or a
    nested child of the active run or of `parent_run_id` (the sweep's trials). `callbacks` are
    extra transformers TrainerCallbacks (the sweep's pruner); `bases` lends an already loaded base;
    `loss_plot=False` skips loss_curve.png (~0.4 s a run; the MLflow UI draws the logged loss itself)."""
    t_start, clock = time.time(), _Clock()
    if prepared is None and bases is None:   # the process's own run (a sweep's trials come later in a worker)
        clock.seconds["time_before_train_s"] = _since_process_start()
    with clock("prepare"):
        p = prepared or prepare(cfg)
    cfg = p.cfg
    judge = judge_of(cfg) if cfg.evaluate else None
    calibration = check(judge) if judge is not None else None   # before a weight loads: a dead judge costs seconds
    if calibration is not None:
        log(f"judge {judge.model}: {calibration}")
    tags = {STAGE_TAG: "train", MODEL_TAG: cfg.model, PREFLIGHT_TAG: p.report.status,
            **(tags or {})}
    if p.source.preset is not None and p.source.preset.only_for_plumbing:
        tags["molting.plumbing_only"] = "true"
    leak = next((f for f in p.report.findings if f.check == EVAL_LEAK), None)
    if leak is not None:      # the score of this run measures recall on these questions (compare, diagnose say so)
        tags[EVAL_LEAK_TAG] = f"{len(leak.data['questions'])}/{len(p.questions)}"
    t_open = time.time()
    with stage_run(cfg.experiment, cfg.run_name, tags, nested=nested, parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id
        clock.seconds["time_run_open_s"] = time.time() - t_open
        mlflow.log_text(p.report.to_json(), PREFLIGHT_ARTIFACT)
        mlflow.log_text(p.report.to_text() + "\n", "preflight.txt")
        log(p.report.to_text())
        errors = [f for f in p.report.findings if f.level == "error"]
        untrainable = [f for f in errors if f.check in UNTRAINABLE]
        if untrainable or (errors and cfg.preflight == "strict"):
            mlflow.log_params({**p.params, "train.loaded": False})
            first = (untrainable or errors)[0]
            raise PreflightFailed(f"pre-flight failed ({len(errors)} error(s)): {first.message}"
                                  + ("" if untrainable else " (preflight=warn trains anyway)"))
        if calibration is not None:
            mlflow.log_param("judge.calibration", calibration)
        result = _fit(p, run_id, log, callbacks, bases, loss_plot, clock)
        result.preflight = p.report.status
        mlflow.log_metrics({**clock.seconds, "time_in_train_s": time.time() - t_start})
    log(f"\nrun {run_id}: {result.optimizer_steps} optimizer steps, final loss {result.final_loss:.4f}, "
        f"{result.train_runtime_s:.0f} s training ({time.time() - t_start:.0f} s in all)\n"
        f"adapter: {result.adapter_uri}\n"
        f"see it:  mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}  (then open {UI_DEFAULT})"
        + (f"\nits answers and the rubric's reasons: {traces_url(ui_base(), run.info.experiment_id, run_id)}"
           if result.scores else ""))
    return result


def _fit(p: Prepared, run_id: str, log, callbacks: tuple = (), bases: BaseCache | None = None,
         loss_plot: bool = True, clock: _Clock | None = None) -> TrainResult:
    """Load (or borrow), train, log the numbers and the adapter, evaluate; the fingerprint tag comes
    last, so only a run that trained (and scored) carries it. A borrowed base goes back clean after
    success; after a failure it is dropped (it may still hold this trial's LoRA layers). A Ctrl-C or
    SIGTERM once training began raises interrupt.Interrupted with the line that says what was kept:
    the adapter is logged whole before evaluation starts, and a signal after the last step waits for it."""
    threads = runtime.set_threads()
    watch = () if p.plan.cuda or threads.others is None else (_thread_watch(threads, run_id, log),)
    p.plan.configure_backends()
    t_load = time.time()
    if bases is not None:
        model, load_s = bases.take(p.source, p.plan)
    else:
        model = load_for_training(p.source, p.plan)
        load_s = time.time() - t_load
    set_seed(p.cfg.seed)                      # after loading: a borrowed base and a fresh one start alike
    clock = clock or _Clock()
    trainer, kept = None, False        # kept: the adapter is whole on the run (an interrupt after it keeps it)
    try:
        with clock("params"):
            mlflow.log_params({**p.params, "train.cpu_threads": threads.n, "train.cpu_threads_why": threads.why})
            _log_dataset(p)
            bundle.log(p.persona, p.cfg.questions)
        questions = p.questions
        t_setup = time.time()
        trainer, losses = _trainer(p, model, run_id, questions, (*callbacks, *watch), bases)
        mlflow.log_text(_marked_example(trainer, p.tokenizer), "example_rendered.txt")
        setup_s = time.time() - t_setup
        # Ctrl-C / SIGTERM: training stops after its step (then KeyboardInterrupt, nothing kept); once
        # its last step is done, they wait until the adapter is on the run
        with stop_at_step_end() as stop:
            trainer.add_callback(stop.callback())
            stats = _run_trainer(trainer, p, losses, load_s)
            if not stop.cut_short:
                t_save = time.time()
                _log_adapter(trainer.model, p, run_id)
                kept = True
        if loss_plot:
            _log_loss_curve(p, losses, stats)
        # where a run's time goes besides training and evaluation (the sweep's overhead share);
        # time_adapter_log_s: the adapter and the loss curve
        mlflow.log_metrics({"time_trainer_setup_s": setup_s, "time_adapter_log_s": time.time() - t_save})
        result = TrainResult(run_id, stats["optimizer_steps"], stats["final_loss"], stats["train_runtime_s"],
                             adapter_uri(run_id), "", losses)
        if p.cfg.evaluate and questions:
            result.scores = _evaluate_in_run(p, trainer.model, questions, log, trainer.state.global_step, clock,
                                             judge_of(p.cfg), compiled=bases is not None and bases.compiled_decoding)
        elif p.cfg.evaluate:
            log(f"not evaluated: {p.cfg.persona} names no questions (pre-flight's persona.no_questions)")
    except BaseException as e:
        if bases is not None:
            bases.drop()
        began = trainer is not None and trainer.state.max_steps > 0     # Trainer sets max_steps as train() starts
        if began and isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
            # the run still ends KILLED (stage_run); the line says what it kept
            raise interrupted_training(run_id, trainer.state.global_step, trainer.state.max_steps, kept) from e
        raise
    if bases is not None:
        bases.give_back(trainer.model)
    mlflow.set_tag("molting.fingerprint", p.fingerprint())
    return result


def _log_dataset(p: Prepared) -> None:
    """The dataset as the run's input: rows of the chat messages that train (system prompt included)."""
    df = pd.DataFrame({"prompt": [json.dumps(r["prompt"], ensure_ascii=False) for r in p.dataset.rows],
                       "completion": [json.dumps(r["completion"], ensure_ascii=False) for r in p.dataset.rows]})
    mlflow.log_input(mlflow.data.from_pandas(df, source=str(Path(p.dataset.path).resolve()),
                                             name=Path(p.dataset.path).name, digest=p.dataset.sha256[:16]),
                     context="training")


def _trainer(p: Prepared, model, run_id: str, questions, callbacks: tuple, bases: BaseCache | None = None):
    """TRL's SFTTrainer on prompt/completion rows (loss on the completion, its end-of-turn token
    included), with the plan's speed settings and a callback that logs every optimizer step. A
    worker's later trials hand TRL the rows it tokenized for the first (it skips tokenizing them)."""
    cfg = p.cfg
    targets = p.lora_targets if isinstance(p.lora_targets, str) else list(p.lora_targets)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    args = _sft_args(p)
    losses: list[tuple[int, float]] = []

    class MlflowSteps(TrainerCallback):
        """loss, learning_rate and grad_norm at every optimizer step (step = global step); at each
        epoch's end the held-out ref_nll, so the UI shows it beside the training loss."""
        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            m = {k: float(logs[k]) for k in ("loss", "learning_rate", "grad_norm") if k in logs}
            # asynchronous: a step on a GPU takes milliseconds, a store write as long; the run's end flushes
            mlflow.log_metrics(m, step=state.global_step, run_id=run_id, synchronous=False)
            losses.append((state.global_step, m["loss"]))

        def on_epoch_end(self, args, state, control, model=None, **kw):
            nll = reference_nll(model, p.tokenizer, questions, p.system_prompt_text, p.template, p.fold)
            if nll is not None:
                mlflow.log_metric("ref_nll", nll, step=state.global_step, run_id=run_id)
                state.log_history.append({"ref_nll": nll, "epoch": state.epoch, "step": state.global_step})

    key = (p.dataset.sha256, p.system_prompt_text, hashlib.sha256(p.template.encode()).hexdigest(), cfg.max_seq_len,
           p.source.revision)
    rows = (bases.dataset(key) if bases is not None else None) or Dataset.from_list(p.dataset.rows)
    progress = _quiet_progress()()
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=p.tokenizer, peft_config=lora,
                         callbacks=[MlflowSteps(), _stop_on_divergence(cfg, run_id, progress), *callbacks])
    if bases is not None:
        bases.keep_dataset(key, trainer.train_dataset)
    trainer.remove_callback(ProgressCallback)  # it prints every step's log dict; keep the bar only
    trainer.add_callback(progress)
    return trainer, losses


def _sft_args(p: Prepared):
    """TRL's SFTConfig: the config's hyperparameters, loss on the completion only, every step logged,
    nothing saved (the adapter is logged to MLflow instead), and the plan's speed settings."""
    cfg = p.cfg
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="molting-train-"), num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr, lr_scheduler_type="linear", warmup_steps=cfg.warmup_ratio, logging_steps=1,
        save_strategy="no", report_to="none", seed=cfg.seed, data_seed=cfg.seed, max_length=cfg.max_seq_len,
        completion_only_loss=True, disable_tqdm=False, dataset_num_proc=None,
        # a NaN/inf step's loss is logged as it is (the default logs the window's mean instead)
        logging_nan_inf_filter=False, **p.plan.trainer_kwargs())
    if p.plan.cuda:
        # One process trains on one GPU, the plan's (cuda:0 of what it sees): with several visible,
        # Trainer would wrap the model in DataParallel, which TRL refuses. Several GPUs are the
        # sweep's workers, one process each.
        _ = args.device
        args._n_gpu = 1
    return args


def _run_trainer(trainer, p: Prepared, losses: list, load_s: float) -> dict:
    """Train; log and return the run's numbers."""
    cuda = p.plan.cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    out = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    runtime_s = time.time() - t0
    mlflow.flush_async_logging()
    tokens = p.report.numbers["train_tokens_per_epoch"] * p.cfg.epochs
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if cuda
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    # At batch 1 a step's loss is one example's: the mean of the last 10 steps says where training ended.
    tail = [v for _, v in losses[-10:]]
    stats = {"optimizer_steps": trainer.state.global_step, "train_tokens": tokens,
             "final_loss": sum(tail) / len(tail) if tail else float("nan"),
             "train_loss_mean": float(out.training_loss), "train_runtime_s": runtime_s,
             "train_tokens_per_s": tokens / runtime_s if runtime_s else 0.0, "peak_memory_mb": peak_mb,
             "model_load_s": load_s}
    mlflow.log_metrics(stats)
    mlflow.set_tag("molting.peak_memory", "cuda max_memory_allocated" if cuda else "process peak RSS")
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    return stats


def _log_adapter(model, p: Prepared, run_id: str) -> None:
    """adapter/ (PEFT weights, tokenizer with the model's own template, molting.json), then the tag
    ADAPTER_LOGGED_TAG: a run that carries it has its adapter whole, whatever ended the run after."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        model.save_pretrained(adapter)
        # Inference uses the model's own template; a foreign training template is kept beside it.
        p.tokenizer.chat_template = p.own_template
        p.tokenizer.save_pretrained(adapter)
        p.tokenizer.chat_template = p.template
        if p.template != p.own_template:
            (adapter / "training_chat_template.jinja").write_text(p.template, encoding="utf-8")
        (adapter / ADAPTER_META).write_text(json.dumps({
            "model": p.cfg.model, **p.source.as_params(), "device_trained": p.plan.device,
            "precision": p.plan.precision, "system_prompt": p.system_prompt_text, "system_prompt_fold": p.fold,
            "template_source": p.template_source, "train_run_id": run_id}, ensure_ascii=False, indent=1))
        bundle.write(adapter, p.persona, p.cfg.questions)    # the adapter carries its persona (registry, chat)
        mlflow.log_artifacts(str(adapter), ADAPTER_DIR)
    mlflow.set_tag(ADAPTER_LOGGED_TAG, "true")


def _log_loss_curve(p: Prepared, losses: list, stats: dict) -> None:
    """loss_curve.png (~1.4 s on a CPU, most of it matplotlib's text layout): after the adapter is kept."""
    with tempfile.TemporaryDirectory() as tmp:
        curve = Path(tmp) / "loss_curve.png"
        _plot_losses(losses, curve, f"{p.cfg.model}: {stats['optimizer_steps']} optimizer steps, "
                                    f"final loss {stats['final_loss']:.3f}")
        mlflow.log_artifact(str(curve))


def _evaluate_in_run(p: Prepared, model, questions, log, step: int, clock: _Clock, judge: Judge | None,
                     compiled: bool = False) -> dict:
    """Score the adapter still in memory (the saved one's weights, the same precision) on this run; the ref_nll
    is on the template it trained with, the answers through the model's own (as chat and the registry ask).
    Merged where the plan says so: into copies, or, on a base whose decoding its sweep worker compiled
    (`compiled`), into the base's own tensors, decoded by that graph (store.evaluation.MERGES)."""
    p.tokenizer.chat_template = p.own_template
    mlflow.log_param("eval.max_new_tokens", p.cfg.eval_max_new_tokens)
    try:
        scored = answer_and_score(model, p.tokenizer, questions, p.persona, system_prompt=p.system_prompt_text,
                                  fold=p.fold, nll_template=p.template, max_new_tokens=p.cfg.eval_max_new_tokens,
                                  seed=p.cfg.seed, merge=("worker" if compiled else "copy") if p.plan.eval_merge else None,
                                  step=step,
                                  judge=judge, log=log)
    finally:
        p.tokenizer.chat_template = p.template
    clock.seconds["time_eval_log_s"] = scored["eval_log_seconds"]
    return {**scored["summary"], "eval_seconds": scored["eval_seconds"], **scored.get("judge", {})}


def _stop_on_divergence(cfg: TrainConfig, run_id: str, progress):
    """After MlflowSteps has logged a step: a NaN/inf loss or gradient norm ends training there, raising
    TrainingDiverged (the run ends FAILED, no adapter is logged); the step is also the tag molting.diverged_step.
    The progress bar is closed first, so the error is a line of its own."""


    class StopOnDivergence(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            bad = [k for k in ("loss", "grad_norm") if k in (logs or {}) and not math.isfinite(float(logs[k]))]
            if bad:
                MlflowClient().set_tag(run_id, "molting.diverged_step", str(state.global_step))
                if progress.training_bar is not None:
                    progress.training_bar.close()
                raise TrainingDiverged(state.global_step, f"{bad[0]} = {float(logs[bad[0]])}", cfg)

    return StopOnDivergence()


# How often a run that chose its threads from the load looks again, seconds of training
RECHECK_S = 30


def _thread_watch(chosen: runtime.Threads, run_id: str, log):
    """Every RECHECK_S during training, the cores other processes used since the last look decide torch's
    threads again (runtime.fitting_threads): a laptop that gets busy mid-run stays fast, and one that
    quietens gets its cores back. Each change is said, and logged as the metric cpu_threads at its step."""
    class ThreadWatch(TrainerCallback):
        def __init__(self):
            self.n, self.last = chosen.n, runtime.cpu_snapshot()

        def on_step_end(self, args, state, control, **kw):
            now = runtime.cpu_snapshot()
            if now[0] - self.last[0] < RECHECK_S:
                return
            others, self.last = runtime.others_busy(self.last, now), now
            n = runtime.fitting_threads(others, chosen.cores)
            if n != self.n:
                log(f"molting: other processes now use ~{others:.1f} of {chosen.cores} cores: torch threads "
                    f"{self.n} → {n} from step {state.global_step}")
                torch.set_num_threads(n)
                self.n = n
                mlflow.log_metric("cpu_threads", n, step=state.global_step, run_id=run_id, synchronous=False)

    return ThreadWatch()


def _quiet_progress():
    class QuietProgress(ProgressCallback):
        """The progress bar, with the last loss as its postfix instead of a printed dict a step."""
        def on_log(self, args, state, control, logs=None, **kw):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

    return QuietProgress


def _marked_example(trainer, tok) -> str:
    """Example 0 as the trainer tokenized it, trained spans between ⟦ and ⟧. Each span is decoded
    whole: decoding token by token would split a multi-byte character (🦞 is 3 byte tokens) into �."""
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row.get("labels") or _completion_labels(row)
    out = []
    for trained, span in groupby(zip(ids, labels), key=lambda il: il[1] != -100):
        text = tok.decode([i for i, _ in span])
        out.append(f"⟦{text}⟧" if trained else text)
    return ("# Example 0 exactly as it trains; loss only on the text between ⟦ and ⟧.\n"
            f"# {len(ids)} tokens, {sum(lab != -100 for lab in labels)} trained.\n\n" + "".join(out) + "\n")


def _completion_labels(row) -> list[int]:
    """TRL keeps a completion_mask instead of labels: the trained positions."""
    return [i if m else -100 for i, m in zip(row["input_ids"], row["completion_mask"])]


def _plot_losses(losses, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
