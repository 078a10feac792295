"""The base of every error a user can cause or fix, and how the command line shows it.

A `MoltingError`'s message is one line: the problem, then the fix ("<what is wrong>; <what to do>").
`molting` prints it as that one line on stderr and exits 2, with no traceback; any MLflow run that
`mlflow run` opened for the command ends FAILED with it. Set MOLTING_DEBUG=1 to get the full
traceback instead (as simonw/llm's LLM_RAISE_ERRORS does).

A ground module: it imports nothing of the package, so every module may derive its errors here.
"""
from __future__ import annotations

import json
import os
import re
import sys

DEBUG_ENV = "MOLTING_DEBUG"
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_LINE = 1000      # characters of an error line; the problem and its fix come first and last


class MoltingError(Exception):
    """A mistake in the input or a fault of the world that the user fixes; the message says how."""

    exit_code = 2

    def one_line(self) -> str:
        """The message as one line: a line break inside it (a path or a value quoted from the input) is
        shown as \\n, and a value quoted whole (a YAML alias bomb expands to megabytes) is cut in the middle."""
        text = str(self).strip().replace("\r", "\\r").replace("\n", "\\n")
        if len(text) > MAX_LINE:
            text = f"{text[:MAX_LINE // 2]} …[{len(text) - MAX_LINE} characters]… {text[-MAX_LINE // 2:]}"
        return text or type(self).__name__


def unreadable(path, e: OSError) -> str:
    """'<path>: cannot read it (Permission denied); …': a file the user named that the OS will not open."""
    return f"{path}: cannot read it ({e.strerror or type(e).__name__}); make it readable (chmod u+r) or pass another file"


def first_line(e: BaseException, limit: int = MAX_LINE) -> str:
    """An exception's first line (its type's name where it has no message), cut to `limit` characters."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def too_deep(path, what: str, where: str = "") -> str:
    """'<path>: nested deeper than the parser's limit …': JSON or YAML whose parser (recursive, one call a
    level) hit Python's recursion limit; `what` says how deep the file should be."""
    return (f"{path}: nested deeper than the parser's limit of {sys.getrecursionlimit()} levels{where}; {what}: "
            "check how the file was written")


def json_line(path, lineno: int, line: str, error: type, form: str, flat: str):
    """One line of a JSON Lines file the user named, parsed; what does not parse is `error`('<path>: line N:
    invalid JSON at column C (…); <form>'), nesting past the parser's limit too (`flat` says how flat it
    should be)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise error(f"{path}: line {lineno}: invalid JSON at column {e.colno} ({e.msg}); {form}") from None
    except RecursionError:
        raise error(too_deep(path, flat, f" (line {lineno})")) from None


def unwritable(path, e: OSError) -> str:
    """'<path>: cannot write it (No such file or directory); …': an output file the user named."""
    why = e.strerror or first_line(e)    # pandas' OSError has no strerror
    return f"{path}: cannot write it ({why}); pass a file in a folder that exists and you can write"


def unpaired_surrogate(text: str) -> str | None:
    """'\\ud83e at character 12' for the first half of a UTF-16 surrogate pair standing alone in `text` (JSON's
    "\\ud83e" without its partner decodes to one), which no UTF-8 encoder or tokenizer takes; else None."""
    m = _SURROGATE.search(text)
    return f"\\u{ord(m.group()):04x} at character {m.start()}" if m else None


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
