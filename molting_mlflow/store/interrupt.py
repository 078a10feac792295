"""How a molting process meets Ctrl-C and SIGTERM.

Outside training, SIGTERM (kill, a scheduler, a closed terminal) unwinds like Ctrl-C, a
KeyboardInterrupt, so the MLflow run ends KILLED instead of staying RUNNING forever
(`interrupt_on_signals`, installed by the CLI). During training both stop it after the current
optimizer step, not wherever they land (`stop_at_step_end`).

Why: twice in CI a `molting train` never exited after Ctrl-C (not reproduced in 15 local tries). The
likely cause is a KeyboardInterrupt raised in the middle of a step, inside MLflow's asynchronous
metric logging (`log_metrics(synchronous=False)`, every step) while it holds a lock; ending the run
then flushes that queue and waits forever. So while the Trainer runs, a signal only asks to stop: a
callback ends training at the step's end, and KeyboardInterrupt is raised from there, so the run
still ends KILLED with molting.error=interrupted (tracking.stage_run). A second signal interrupts at
once, for the impatient.

Once training is complete, a signal still only asks until its adapter is on the run: a Ctrl-C after
150 trained steps, while the last epoch's ref_nll was computed or the metric queue flushed, used to
throw the training away (the run KILLED with no adapter). After that, evaluation is interrupted at
once, and `Interrupted` carries the user's one line: what was kept and the command that finishes
the job (the CLI prints it and exits 130, the shell's code for SIGINT).

A signal that follows the one being handled within ECHO_S is its echo, not a second request: after the
terminal's Ctrl-C (which reaches every process of the foreground group), `mlflow run` sends its entry
point SIGTERM within milliseconds (SubmittedRun.cancel, MLflow 3.17). Taken as a second signal, it
would stop training at once, mid-step (what stop_at_step_end is there to avoid), or cut short the
ending of the run and the line that says what was kept.
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

from molting_mlflow.ground.tags import adapter_uri

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ECHO_S = 1.0     # s: a signal this soon after the one being handled is its echo (mlflow run's SIGTERM), dropped
EXIT_CODE = 130  # a command a signal stopped: the shell's 128 + SIGINT, whichever of the two it was

_interrupted_at: float | None = None    # time.monotonic() when `interrupt` last raised


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM after something was kept: `line` says what, and the command that finishes
    the job; the CLI prints it as the interrupted command's one line."""

    def __init__(self, line: str):
        super().__init__(line)
        self.line = line


def interrupted_training(run_id: str, steps: int, max_steps: int, kept: bool) -> Interrupted:
    """The interrupt of a train run once training began, with its one line: what it kept and, once its adapter
    is whole (its evaluation, or a signal that waited for the adapter), the command that finishes the job."""
    if not kept:
        return Interrupted(f"molting: interrupted after {steps} of {max_steps} optimizer steps, before an adapter "
                           f"was kept: run {run_id[:8]} ended KILLED with none")
    return Interrupted(f"molting: interrupted after training: run {run_id[:8]} ended KILLED, unscored; its adapter "
                       f"({steps} optimizer steps) is kept at {adapter_uri(run_id)}; score it: "
                       f"molting evaluate --run-id {run_id[:8]}")


def interrupt(signum, frame=None):
    """The signal handler that stops at once; a signal within ECHO_S of the last one it raised for is
    that one's echo, and is dropped (the first is already unwinding)."""
    global _interrupted_at
    now = time.monotonic()
    if _interrupted_at is not None and now - _interrupted_at < ECHO_S:
        return
    _interrupted_at = now
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt through `interrupt`, which drops a signal's echo
    (main thread only: others cannot set handlers)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, interrupt)


class StopRequest:
    """Which signal asked training to stop, if any, and whether training was complete by then."""

    def __init__(self):
        self.signum: int | None = None
        self.at = 0.0                # time.monotonic() of that signal
        self.complete = False        # the last optimizer step is done: what is left is keeping the adapter
        self.cut_short = False       # training was stopped before its last step: there is no adapter to keep

    def handle(self, signum, frame):
        now = time.monotonic()
        if self.signum is not None:
            if now - self.at < ECHO_S:        # mlflow run's SIGTERM after the terminal's SIGINT: the same request
                return
            interrupt(signum)                 # asked twice: stop now
        self.signum, self.at = signum, now
        then = ("training is complete: keeping its adapter, then stopping" if self.complete
                else "stopping after this optimizer step")
        print(f"\nmolting: signal {signal.Signals(signum).name}: {then} (again to stop at once)", flush=True)

    def callback(self):
        """A TrainerCallback that ends training at the end of the step during which a signal came."""
        from transformers import TrainerCallback

        request = self

        class StopOnSignal(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                # the last step's end comes before the last epoch's end (its ref_nll: seconds on a real model)
                request.complete = state.global_step >= state.max_steps
                if request.signum is not None:
                    control.should_training_stop = True
                    request.cut_short = not request.complete

        return StopOnSignal()


@contextmanager
def stop_at_step_end():
    """Around trainer.train() and the keeping of what it made: yields the StopRequest whose callback
    the trainer must carry; on a clean exit after a signal, raises KeyboardInterrupt. Off the main
    thread (no signal handlers there) a no-op."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, request.handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if request.signum is not None:
        interrupt(request.signum)
