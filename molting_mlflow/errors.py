"""The base of every error a user can cause or fix, and how the command line shows it.

A `MoltingError`'s message is one line: the problem, then the fix ("<what is wrong>; <what to do>").
`molting` prints it as that one line on stderr and exits 2, with no traceback; any MLflow run that
`mlflow run` opened for the command ends FAILED with it. Set MOLTING_DEBUG=1 to get the full
traceback instead (as simonw/llm's LLM_RAISE_ERRORS does).

A ground module: it imports nothing of the package, so every module may derive its errors here.
"""
from __future__ import annotations

import os

DEBUG_ENV = "MOLTING_DEBUG"


class MoltingError(Exception):
    """A mistake in the input or a fault of the world that the user fixes; the message says how."""

    exit_code = 2

    def one_line(self) -> str:
        text = str(self)
        return text.splitlines()[0] if text.strip() else type(self).__name__


def debugging() -> bool:
    """MOLTING_DEBUG set to anything but '', '0' or 'false': errors re-raise with their traceback."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


# MlflowException.error_code values that mean the store answered "no such run, artifact, registered
# model or version" (RESOURCE_DOES_NOT_EXIST) or "no such alias" (INVALID_PARAMETER_VALUE, MLflow 3's
# registry); any other MLflow failure (a 403, an outage, a locked store) is not "not found".
MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def missing_in_store(e: BaseException) -> bool:
    """Whether `e` is MLflow's answer that the thing asked for is not there."""
    from mlflow.exceptions import MlflowException

    return isinstance(e, MlflowException) and e.error_code in MISSING_CODES
