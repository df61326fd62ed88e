"""The LightningDataModule: an endless, resumable train stream and a fixed validation set.

Train stream (``TrainStream``), per reader = (rank, dataloader worker):
1. Each pass ("epoch") over the split orders the shards by a seeded shuffle. With at least as many shards
   as readers, reader g of R reads shards g, g+R, ... of that order; with fewer (the small sample), every
   reader reads all shards and keeps documents g, g+R, ... So within a pass no two readers share a document
   and together they read every document once.
2. Shuffle: the reader's documents are taken ``shuffle_buffer`` at a time and each block is permuted with a
   seed from (seed, pass, reader, block). Unlike a reservoir buffer, a block can be rebuilt from its first
   document's file position, so the position is a handful of integers and a resume is exact.
3. Rows (``rows.py``), then batches of ``micro_batch_size`` in the worker.
When a pass ends the next one starts with new shard order and permutations, so training by steps never
runs dry.

The position is saved per worker by torchdata's ``StatefulDataLoader``; Lightning stores the train loader's
state in its checkpoints. ``TrainLoader`` fixes two gaps: Lightning fetches a batch ahead (the state must
be that after the batches training used) and only rank 0 writes the checkpoint (the state must hold every
rank's position). Resuming then gives exactly the batches of the uninterrupted run.

Validation: the first documents of the validation split (shard order, file order) until their non-pad
tokens reach ``val_tokens``; rounded up to a multiple of the world size so every rank runs the same
number of batches (an uneven count would hang a collective under DDP/FSDP); rank r gets rows r, r+W, ...
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import os
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from optsweep import metric_names
from optsweep.data import rows as R
from optsweep.data.c4 import SOURCES, DataUnavailableError, HubShards, LocalShards, Shards, load_tokenizer
from optsweep.data.sample import ensure_sample
from optsweep.data.shardfile import check_on_bad_document
from optsweep.errors import UserError

log = logging.getLogger(__name__)

_ENCODE_CHUNK = 64  # documents per tokenizer call: one call per document costs more; larger gains nothing


def _fresh_position() -> dict:
    # epoch; the first document of the current block as (slot in this reader's shard list, line in that
    # shard, documents of the pass before it, bad lines this reader skipped before it); block number; next
    # document in the block; next token in it; bad lines skipped up to the end of the current block
    return {"epoch": 0, "slot": 0, "line": 0, "seen": 0, "skipped": 0, "block": 0, "doc": 0, "token": 0,
            "skipped_through_block": 0}


class TrainStream(IterableDataset):
    """Endless train rows for one rank, split over dataloader workers; stateful (see module docstring)."""

    def __init__(
        self,
        shards: Shards,
        tokenizer,
        seq_len: int,
        row_format: str = "paper",
        shuffle_buffer: int = 10_000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.shards = shards
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.row_format = R.check_row_format(row_format)
        self.shuffle = bool(shuffle_buffer)
        self.block_size = int(shuffle_buffer) if shuffle_buffer else 1024
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._start: dict | None = None  # where the next iterator starts (a loaded state, or the beginning)
        self._position: dict | None = None  # where the running iterator will produce its next row

    # --- who reads what ------------------------------------------------------------------------------

    def reader(self) -> tuple[int, int]:
        """(this reader's index, number of readers) = (rank x workers + worker, world size x workers)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

    def _rng(self, *key) -> random.Random:
        digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            self._rng("shards", epoch).shuffle(order)
        return order

    def reader_documents(
        self, epoch: int, reader: int, readers: int, slot: int = 0, line: int = 0, seen: int = 0,
        skipped: int = 0,
    ) -> Iterator[tuple[str, tuple[int, int, int, int]]]:
        """This reader's documents of one pass in file order, from a position; each with the position after
        it. A bad line skipped (``data.on_bad_document=skip``) counts for the reader whose turn it was, so
        the readers' counts add up to the bad lines read."""
        order = self.shard_order(epoch)
        by_shard = len(order) >= readers
        mine = order[reader::readers] if by_shard else order
        for s in range(slot, len(mine)):
            first = line if s == slot else 0
            for n, text in self.shards.lines(mine[s], first):
                if text is None:
                    skipped += by_shard or seen % readers == reader
                elif by_shard:
                    yield text, (s, n + 1, 0, skipped)
                else:
                    seen += 1
                    if (seen - 1) % readers == reader:
                        yield text, (s, n + 1, seen, skipped)

    def documents(self, start: dict | None = None) -> Iterator[tuple[dict, str]]:
        """The endless shuffled document stream of this reader: (position of the document, text)."""
        reader, readers = self.reader()
        pos = dict(start or _fresh_position())
        epoch, block, doc = pos["epoch"], pos["block"], pos["doc"]
        at = (pos["slot"], pos["line"], pos["seen"], pos["skipped"])
        while True:
            stream = self.reader_documents(epoch, reader, readers, *at)
            while items := list(itertools.islice(stream, self.block_size)):
                order = list(range(len(items)))
                if self.shuffle:
                    self._rng("block", epoch, reader, readers, block).shuffle(order)
                here = {"epoch": epoch, "slot": at[0], "line": at[1], "seen": at[2], "skipped": at[3],
                        "block": block, "skipped_through_block": items[-1][1][3]}
                for d in range(doc, len(items)):
                    yield {**here, "doc": d, "token": 0}, items[order[d]][0]
                at, block, doc = items[-1][1], block + 1, 0
            if block == 0:
                raise DataUnavailableError(
                    f"{self.shards!r} gives reader {reader} of {readers} (ranks x dataloader workers) no "
                    f"document: use fewer data.num_workers or more shards"
                )
            epoch, at, block, doc = epoch + 1, (0, 0, 0, at[3]), 0, 0

    # --- rows ----------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[R.Row]:
        start = dict(self._start or _fresh_position())
        self._position = dict(start)
        docs = self.documents(start)
        if self.row_format == "paper":
            yield from self._paper_rows(docs)
        else:
            yield from self._packed_rows(docs, start["token"])

    def _chunks(self, docs):
        size = min(_ENCODE_CHUNK, self.block_size)  # tokenizing past the current block gains nothing
        while chunk := list(itertools.islice(docs, size)):
            yield chunk

    def _paper_rows(self, docs) -> Iterator[R.Row]:
        for chunk in self._chunks(docs):
            encoded = R.encode_paper(self.tokenizer, [text for _, text in chunk], self.seq_len)
            for (pos, _), row in zip(chunk, encoded):
                self._position = {**pos, "doc": pos["doc"] + 1}
                yield row

    def _packed_rows(self, docs, first_token: int) -> Iterator[R.Row]:
        buffer: list[int] = []
        for chunk in self._chunks(docs):
            encoded = R.encode_documents(self.tokenizer, [text for _, text in chunk])
            for (pos, _), ids in zip(chunk, encoded):
                t, first_token = first_token, 0
                while t < len(ids):
                    take = min(self.seq_len - len(buffer), len(ids) - t)
                    buffer.extend(ids[t : t + take])
                    t += take
                    if len(buffer) == self.seq_len:
                        done = t == len(ids)
                        self._position = {**pos, "doc": pos["doc"] + done, "token": 0 if done else t}
                        yield np.asarray(buffer, dtype=np.int32), self.seq_len
                        buffer = []

    # --- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        reader, readers = self.reader()
        position = self._position or self._start or _fresh_position()
        return {"reader": reader, "readers": readers, **position}

    def load_state_dict(self, state: dict) -> None:
        reader, readers = self.reader()
        if (state["reader"], state["readers"]) != (reader, readers):
            raise ValueError(
                f"this data position was saved by reader {state['reader']} of {state['readers']} (ranks x "
                f"dataloader workers) but is loaded by reader {reader} of {readers}: resume with the same "
                f"number of devices and data.num_workers"
            )
        self._start = {k: int(state.get(k, v)) for k, v in _fresh_position().items()}
        self._position = None


class ValidationRows(IterableDataset):
    """This rank's share of the fixed validation rows (an IterableDataset, so Lightning adds no sampler)."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray):
        super().__init__()
        self.ids = ids
        self.lengths = lengths

    def __iter__(self) -> Iterator[R.Row]:
        for i in range(len(self.lengths)):
            yield self.ids[i], int(self.lengths[i])

    def __len__(self) -> int:
        return len(self.lengths)


def validation_rows(
    shards: Shards, tokenizer, seq_len: int, row_format: str, val_tokens: int, world_size: int = 1
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The first rows of the split (file order) holding >= ``val_tokens`` non-pad tokens, in a number
    divisible by ``world_size``; returns ids (rows x seq_len, int32), lengths and a summary."""
    rows: list[R.Row] = []
    tokens = documents = skipped = 0
    leftover: list[int] = []

    def read_texts() -> Iterator[str]:
        nonlocal skipped
        for i in range(len(shards)):
            for _, text in shards.lines(i):
                if text is None:
                    skipped += 1
                else:
                    yield text

    texts = read_texts()
    enough = False
    while not enough and (chunk := list(itertools.islice(texts, _ENCODE_CHUNK))):
        if row_format == "paper":
            new = R.encode_paper(tokenizer, chunk, seq_len)
        else:
            new, leftover = R.pack([leftover, *R.encode_documents(tokenizer, chunk)], seq_len)
        documents += len(chunk)
        for row in new:
            if tokens >= val_tokens and len(rows) % world_size == 0:
                enough = True
                break
            rows.append(row)
            tokens += row[1]
    if tokens < val_tokens:
        keep = len(rows) - len(rows) % world_size
        if keep == 0:
            raise DataUnavailableError(
                f"{shards!r} holds too little text for {world_size} validation shares of {seq_len} tokens"
            )
        warnings.warn(
            f"the validation split holds only {tokens} non-pad tokens, fewer than data.val_tokens={val_tokens}: "
            f"validating on all of it",
            stacklevel=2,
        )
        rows = rows[:keep]
        tokens = sum(r[1] for r in rows)
    ids = np.stack([r[0] for r in rows]).astype(np.int32)
    lengths = np.array([r[1] for r in rows], dtype=np.int64)
    # paper rows are one document each; for packed rows, the documents read
    summary = {"rows": len(rows), "tokens": int(lengths.sum()),
               "documents": len(rows) if row_format == "paper" else documents}
    if skipped:  # data.on_bad_document=skip passed over bad lines
        summary["skipped_bad_lines"] = skipped
    return ids, lengths, summary


class TrainLoader(StatefulDataLoader):
    """A StatefulDataLoader whose state is the position after the batches training *used*, on every rank.

    Two things a plain StatefulDataLoader gets wrong under Lightning:
    - Lightning fetches one batch ahead, so the loader has yielded one batch more than training used when a
      checkpoint is taken, and a resume would skip it. The datamodule reports each train batch as it goes
      to the device (``mark_consumed``); the state returned is the one recorded after that many batches.
      Nobody reporting (a plain loop) means every yielded batch counts as used.
    - Lightning writes the checkpoint from rank 0 and gives that one state to every rank on resume, but each
      rank reads a different part of the data: ``state_dict`` gathers all ranks' states (a collective:
      every rank calls it, as Lightning's checkpointing does) and ``load_state_dict`` picks this rank's.
    """

    _KEEP = 64  # states kept for batches yielded but not yet used (Lightning holds one)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._history: dict[int, dict] = {}
        self._yielded = 0
        self._consumed: int | None = None

    def __iter__(self):
        batches = super().__iter__()
        self._yielded, self._consumed = 0, None
        self._history = {0: copy.deepcopy(super().state_dict())}
        return self._track(batches)

    def _track(self, batches):
        for batch in batches:
            self._yielded += 1
            self._history[self._yielded] = copy.deepcopy(super().state_dict())
            self._history.pop(self._yielded - self._KEEP, None)
            yield batch

    def mark_consumed(self) -> None:
        self._consumed = (self._consumed or 0) + 1
        self._history.pop(self._consumed - 1, None)

    def _local_state(self) -> dict:
        if self._consumed is not None and self._consumed in self._history:
            return self._history[self._consumed]
        return super().state_dict()

    def state_dict(self) -> dict:
        local = self._local_state()
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        states = [local]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, local)
        return {"world_size": world, "ranks": states}

    def load_state_dict(self, state_dict: dict) -> None:
        if "ranks" not in state_dict:
            return super().load_state_dict(state_dict)
        rank, world = _dist_rank_world() or (0, 1)
        if state_dict["world_size"] != world:
            raise ValueError(
                f"the checkpoint's data position was saved by {state_dict['world_size']} ranks but this run has "
                f"{world}: resume with the same number of devices"
            )
        super().load_state_dict(state_dict["ranks"][rank])


def _stream_states(state) -> Iterator[dict]:
    """The TrainStream positions inside a StatefulDataLoader state (one per worker, or the main process's)."""
    if isinstance(state, dict):
        if "reader" in state and "skipped_through_block" in state:
            yield state
            return
        for value in state.values():
            yield from _stream_states(value)


class SkippedLinesMonitor(L.Callback):
    """Logs ``data/bad_documents_skipped`` (summed over ranks) when the data skips bad lines."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % max(1, trainer.log_every_n_steps) or getattr(self, "_logged_at", None) == step:
            return
        self._logged_at = step
        # every rank reads the whole validation split: count its bad lines once
        count = torch.tensor(float(trainer.datamodule.bad_lines_skipped(trainer.is_global_zero)))
        if trainer.world_size > 1:
            count = trainer.strategy.reduce(count.to(pl_module.device), reduce_op="sum")
        pl_module.log_metrics({metric_names.BAD_DOCUMENTS_SKIPPED: count})


def _dist_rank_world() -> tuple[int, int] | None:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


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
            total += sum(s["skipped_through_block"] for s in _stream_states(self._train_loader._local_state()))
        return total

    def prepare_data(self) -> None:
        """Build the sample (once per machine) or check that the data is there, failing early and clearly."""
        self.shards("train")
        self.shards("validation")
        _ = self.tokenizer

    def _rank_world(self, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
        if rank is not None and world_size is not None:
            return rank, world_size
        found = _dist_rank_world()
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
                collate_fn=R.collate,
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
            collate_fn=R.collate,
            num_workers=0,
            pin_memory=self.pin_memory,
        )
