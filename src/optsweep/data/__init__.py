"""Text to batches: C4 shards (hub or local) or the embedded sample corpus -> tokenizer -> rows -> batches.

``LMDataModule`` is imported on first use, so that building the sample (``python -m optsweep.data.sample``)
does not pay for importing Lightning and torch.
"""

from optsweep.data.c4 import DataUnavailableError

__all__ = ["DataUnavailableError", "LMDataModule"]


def __getattr__(name: str):
    if name == "LMDataModule":
        from optsweep.data.datamodule import LMDataModule

        return LMDataModule
    raise AttributeError(f"module 'optsweep.data' has no attribute {name!r}")
