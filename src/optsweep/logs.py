"""One line per event on the console: Hydra's log handler only, known harmless third-party noise silenced.

Importing ``lightning`` attaches a console handler ("INFO: ...") to the ``lightning`` logger, always, and
to ``lightning.pytorch``/``lightning.fabric`` when the root logger has none yet; their records also reach
Hydra's root handler, so every Lightning INFO line was printed twice. Called once Lightning is imported.
Only the standard library is imported here.
"""

from __future__ import annotations

import logging
import os
import warnings

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")

# (message pattern, why it is harmless here)
HARMLESS_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     "Lightning's pytree helper builds torch's deprecated LeafSpec; nothing to act on in this project"),
    (r"Your `IterableDataset` has `__len__` defined",
     "the validation rows are an in-memory IterableDataset read in the main process: no worker duplicates"),
)
HARMLESS_INFO_PREFIXES = ("💡 Tip:",)  # Lightning advertising its cloud logger at every Trainer start


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(HARMLESS_INFO_PREFIXES)


def one_line_per_event() -> None:
    """Lightning's records go to the root handlers only; MLflow's own run links (printed at every end of
    a Lightning stage) give way to the one link a run prints at its end; known harmless warnings are off."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's own; Hydra's sit on the root logger
                logger.removeHandler(handler)
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
    for pattern, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
