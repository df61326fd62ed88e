"""Text to batches: C4 shards (hub or local) or the embedded sample corpus -> tokenizer -> rows -> batches."""

from optsweep.data.c4 import DataUnavailableError
from optsweep.data.datamodule import LMDataModule

__all__ = ["DataUnavailableError", "LMDataModule"]
