"""How a molting process meets Ctrl-C and SIGTERM.

Outside training, SIGTERM (kill, a scheduler, a closed terminal) unwinds like Ctrl-C, a
KeyboardInterrupt, so the MLflow run ends KILLED instead of staying RUNNING forever
(`sigterm_as_interrupt`, installed by the CLI). During training both stop it after the current
optimizer step, not wherever they land (`stop_at_step_end`).

Why: twice in CI a `molting train` never exited after Ctrl-C (not reproduced in 15 local tries). The
likely cause is a KeyboardInterrupt raised in the middle of a step, inside MLflow's asynchronous
metric logging (`log_metrics(synchronous=False)`, every step) while it holds a lock; ending the run
then flushes that queue and waits forever. So while the Trainer runs, a signal only asks to stop: a
callback ends training at the step's end, and KeyboardInterrupt is raised from there, so the run
still ends KILLED with molting.error=interrupted (tracking.stage_run). A second signal interrupts at
once, for the impatient.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt(signum, frame=None):
    """The signal handler that stops at once."""
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does (main thread only: others cannot set handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


class StopRequest:
    """Which signal asked training to stop, if any."""

    def __init__(self):
        self.signum: int | None = None

    def handle(self, signum, frame):
        if self.signum is not None:           # asked twice: stop now
            interrupt(signum)
        self.signum = signum
        print(f"\nmolting: signal {signal.Signals(signum).name}: stopping after this optimizer step "
              "(again to stop at once)", flush=True)

    def callback(self):
        """A TrainerCallback that ends training at the end of the step during which a signal came."""
        from transformers import TrainerCallback

        request = self

        class StopOnSignal(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if request.signum is not None:
                    control.should_training_stop = True

        return StopOnSignal()


@contextmanager
def stop_at_step_end():
    """Around trainer.train(): yields the StopRequest whose callback the trainer must carry; on a clean
    exit after a signal, raises KeyboardInterrupt. Off the main thread (no signal handlers there) a no-op."""
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
