"""interrupt.py without a model: a signal's echo (mlflow run's SIGTERM right after the terminal's Ctrl-C)
is dropped, a signal after ECHO_S is a second request. The signals of a whole train run: tests/test_faults.py."""
import signal

import pytest

from molting_mlflow.store import interrupt


@pytest.fixture
def clock(monkeypatch):
    """interrupt.py's time.monotonic, set by the test (s)."""
    now = [1000.0]
    monkeypatch.setattr(interrupt.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(interrupt, "_interrupted_at", None)
    return now


def test_a_signal_within_echo_s_of_the_interrupting_one_is_dropped(clock):
    with pytest.raises(KeyboardInterrupt):
        interrupt.interrupt(signal.SIGINT)
    clock[0] += interrupt.ECHO_S / 2
    interrupt.interrupt(signal.SIGTERM)          # the echo: the first is still unwinding
    clock[0] += interrupt.ECHO_S
    with pytest.raises(KeyboardInterrupt):       # the user again, after the echo window
        interrupt.interrupt(signal.SIGINT)


def test_during_training_the_echo_is_the_same_request_and_a_later_signal_stops_at_once(clock, capsys):
    request = interrupt.StopRequest()
    request.handle(signal.SIGINT, None)
    assert request.signum == signal.SIGINT and "stopping after this optimizer step" in capsys.readouterr().out
    clock[0] += interrupt.ECHO_S / 2
    request.handle(signal.SIGTERM, None)         # mlflow run's SIGTERM: training still stops at the step's end
    assert request.signum == signal.SIGINT and capsys.readouterr().out == ""
    clock[0] += interrupt.ECHO_S
    with pytest.raises(KeyboardInterrupt):
        request.handle(signal.SIGINT, None)


def test_once_the_last_step_is_done_the_request_says_the_adapter_is_kept_first(clock, capsys):
    request = interrupt.StopRequest()
    request.complete = True
    request.handle(signal.SIGTERM, None)
    assert "SIGTERM: training is complete: keeping its adapter, then stopping" in capsys.readouterr().out
