"""Third-party warnings that tell a user nothing they can act on, silenced here and only here: each
by its category, the module (or logger) that raises it and the start of its message, with the
reason. Every other warning still shows.
"""
from __future__ import annotations

import logging
import warnings

# (category, module that warns, message it starts with, why it carries nothing for the user)
WARNINGS = (
    (FutureWarning, r"transformers\.training_args", r"`gradient_checkpointing` is deprecated",
     "TRL's SFTConfig sets the old name itself (transformers 5 renamed it); nothing the user passed"),
    (FutureWarning, r"transformers\.modeling_utils", r"`is_gradient_checkpointing` is deprecated",
     "peft and TRL read the old name; nothing the user passed"),
    (UserWarning, r"mlflow\.data\.dataset_source_registry", r"The specified dataset source can be interpreted in "
     r"multiple ways", "the training set is a local file; MLflow registers its local source class twice"),
    (UserWarning, r"optuna\.importance", r"(The number of trials is too small|Some regimes for parameter)",
     "a short sweep's param_importances plot; the plot itself says how many trials it had"),
    (UserWarning, r"mlflow\.pyfunc", r"(\x1b\[[0-9;]*m)?An input example was not provided",
     "registering an adapter: its signature is logged (registry.py), an example would add nothing"),
)
# (logger, message it starts with, why)
LOG_LINES = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community",
     "logged when peft imports bitsandbytes on a CPU with AVX-512 BF16: an optional kernel for 4-bit on a CPU, "
     "which no run here uses (NF4 trains on CUDA only)"),
    ("mlflow.pyfunc", "Passing a Python object as `python_model`",
     "registering an adapter: the pickled object is this package's own PersonaAdapterModel"),
)


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_known_warnings() -> None:
    """Install the filters above (idempotent: the same filter twice is one filter)."""
    for category, module, message, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in {name for name, _, _ in LOG_LINES}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(tuple(start for n, start, _ in LOG_LINES if n == name)))
