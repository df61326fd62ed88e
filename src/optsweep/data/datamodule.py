"""The LightningDataModule: wires the data's path, from shard files to the batches training gets.

shards (``shardfile.py``, ``c4.py``) -> documents (``documents.py``) -> rows (``rows.py``, ``stream.py``;
``validation.py`` for the fixed validation set) -> batches and the train loader (``loader.py``) -> here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from optsweep.data import rows as R
from optsweep.data.c4 import SOURCES, HubShards, LocalShards, Shards, load_tokenizer
from optsweep.data.loader import TrainLoader, collate, distributed_rank_world
from optsweep.data.sample import ensure_sample
from optsweep.data.shardfile import check_on_bad_document
from optsweep.data.stream import TrainStream, stream_positions
from optsweep.data.validation import ValidationRows, validation_rows
from optsweep.errors import UserError

log = logging.getLogger(__name__)


class LMDataModule(L.LightningDataModule):
    """Text -> rows -> batches for causal LM pretraining, from ``sample``, ``c4`` (hub) or ``c4_local``.

    Args:
        source: ``sample`` (the embedded corpus, built on first use into ``path``), ``c4`` (allenai/c4 ``en``
            streamed from the hub) or ``c4_local`` (C4 shards in the folder ``path``).
        path: the sample's cache folder (default ``<repo>/outputs/data/sample``) or the C4 shard folder.
        tokenizer: a hub name or a local folder; ``None`` is the sample's own tokenizer for ``sample`` and
            ``t5-base`` (the paper's) otherwise.
        seq_len: tokens per row.
        row_format: ``paper`` (one padded document per row) or ``packed`` (see ``rows.py``).
        micro_batch_size: rows per train batch on each device.
        val_micro_batch_size: rows per validation batch (default: ``micro_batch_size``).
        num_workers: dataloader worker processes for the train stream (validation is in memory).
        shuffle_buffer: documents per shuffled block of the train stream; 0 keeps file order.
        seed: the train stream's shuffle seed.
        val_tokens: validation budget in non-pad tokens (the paper: ~10M).
        hub_dataset, hub_subset: the hub dataset for ``c4``.
        on_bad_document: ``error`` (stop at a line that is not a JSON document, naming file and line) or
            ``skip`` (pass over such lines and count them: ``bad_lines_skipped``). A shard that cannot be
            decompressed always stops the run.
    """

    def __init__(
        self,
        source: str = "sample",
        path: str | None = None,
        tokenizer: str | None = None,
        seq_len: int = 256,
        row_format: str = "paper",
        micro_batch_size: int = 8,
        val_micro_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle_buffer: int = 10_000,
        seed: int = 42,
        val_tokens: int = 10_000_000,
        hub_dataset: str = "allenai/c4",
        hub_subset: str = "en",
        pin_memory: bool | None = None,
        on_bad_document: str = "error",
    ):
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"data.source={source!r} is not a data source: choose data=sample, data=c4 or data=c4_local")
        if source == "c4_local" and not path:
            raise UserError(
                "data=c4_local needs the folder of the C4 shards: add data.path=/folder/with/c4-train.00000-of-01024.json.gz"
            )
        R.check_row_format(row_format)
        self.on_bad_document = check_on_bad_document(on_bad_document)
        for name, value, least in (("seq_len", seq_len, 2), ("micro_batch_size", micro_batch_size, 1),
                                   ("num_workers", num_workers, 0), ("val_tokens", val_tokens, 1)):
            if not isinstance(value, int) or value < least:
                raise UserError(f"data.{name}={value!r} must be an integer >= {least}")
        self.source = source
        self.path = str(Path(path).expanduser()) if path else None
        self.tokenizer_name = tokenizer or ("sample" if source == "sample" else "t5-base")
        self.seq_len = seq_len
        self.row_format = row_format
        self.micro_batch_size = micro_batch_size
        self.val_micro_batch_size = val_micro_batch_size or micro_batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.val_tokens = val_tokens
        self.hub_dataset = hub_dataset
        self.hub_subset = hub_subset
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._tokenizer = None
        self._train_loader: TrainLoader | None = None
        self._sample_dir: Path | None = None
        self._val: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, dict]] = {}
        self.val_summary: dict | None = None

    # --- what the model needs to know ---------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.source == "sample" and self.tokenizer_name == "sample":
                self._tokenizer = load_tokenizer(str(self._sample()))
            else:
                self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def max_token_id_in_text(self) -> int:
        return R.max_token_id_in_text(self.tokenizer)

    # --- sources ------------------------------------------------------------------------------------

    def _sample(self) -> Path:
        if self._sample_dir is None:
            self._sample_dir = ensure_sample(self.path)
        return self._sample_dir

    def shards(self, split: str) -> Shards:
        if self.source == "sample":
            found = LocalShards(self._sample(), split)
        elif self.source == "c4_local":
            found = LocalShards(self.path, split)
        else:
            found = HubShards(split, self.hub_dataset, self.hub_subset)
        found.on_bad_document = self.on_bad_document
        return found

    def dataset_description(self, split: str) -> dict[str, str]:
        """What MLflow records as the run's input: name, source (a folder or the hub's id), split, digest.
        The digest covers the shard names and sizes (local) or the dataset id and shard names (hub)."""
        shards = self.shards(split)
        if isinstance(shards, HubShards):
            source, identity = f"{self.hub_dataset}/{self.hub_subset}", list(shards.names)
        else:
            source = str(shards.folder)
            identity = [(name, (shards.folder / name).stat().st_size) for name in shards.names]
        digest = hashlib.sha256(repr((source, split, identity)).encode()).hexdigest()[:16]
        return {"name": f"{self.source}-{split}", "kind": "hub" if isinstance(shards, HubShards) else "local",
                "source": source, "split": split, "digest": digest, "shards": str(len(shards))}

    def bad_lines_skipped(self, include_validation: bool = True) -> int:
        """Bad lines this rank's train stream has skipped so far (all its dataloader workers, up to the end
        of the shuffle block in use), plus those the validation set skipped; 0 unless skipping."""
        total = (self.val_summary or {}).get("skipped_bad_lines", 0) if include_validation else 0
        if self._train_loader is not None:
            total += sum(s["skipped_through_block"] for s in stream_positions(self._train_loader.local_state()))
        return total

    def prepare_data(self) -> None:
        """Build the sample (once per machine) or check that the data is there, failing early and clearly."""
        self.shards("train")
        self.shards("validation")
        _ = self.tokenizer

    def _rank_world(self, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
        if rank is not None and world_size is not None:
            return rank, world_size
        found = distributed_rank_world()
        if found is not None:
            return found
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return 0, 1

    # --- datasets and loaders -----------------------------------------------------------------------

    def train_stream(self, rank: int | None = None, world_size: int | None = None) -> TrainStream:
        rank, world_size = self._rank_world(rank, world_size)
        return TrainStream(
            self.shards("train"), self.tokenizer, self.seq_len, self.row_format,
            self.shuffle_buffer, self.seed, rank, world_size,
        )

    def validation_dataset(self, rank: int | None = None, world_size: int | None = None) -> ValidationRows:
        rank, world_size = self._rank_world(rank, world_size)
        if world_size not in self._val:
            self._val[world_size] = validation_rows(
                self.shards("validation"), self.tokenizer, self.seq_len, self.row_format,
                self.val_tokens, world_size,
            )
            self.val_summary = self._val[world_size][2]
            log.info("validation set: %s", self.val_summary)
        ids, lengths, _ = self._val[world_size]
        return ValidationRows(ids[rank::world_size], lengths[rank::world_size])

    def train_dataloader(self) -> TrainLoader:
        if self.num_workers > 0:
            # workers are forked after the main process may have tokenized (validation); quiet the warning
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata calls a deprecated torch API
            self._train_loader = TrainLoader(
                self.train_stream(),
                batch_size=self.micro_batch_size,
                collate_fn=collate,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
            )
        return self._train_loader

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and self._train_loader is not None:
            self._train_loader.mark_consumed()
        return batch

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.validation_dataset(),
            batch_size=self.val_micro_batch_size,
            collate_fn=collate,
            num_workers=0,
            pin_memory=self.pin_memory,
        )
