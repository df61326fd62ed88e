"""Documents -> rows: the train stream, endless and resumable, for one rank.

``TrainStream`` tokenizes its reader's documents (``documents.py``) into rows (``rows.py``) and keeps its
position: the document block, the next document in it and, for packed rows, the next token of that
document. The loader (``loader.py``) saves that position per dataloader worker, so a resume gives exactly
the rows of the uninterrupted run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from torch.utils.data import IterableDataset

from optsweep.data import rows as R
from optsweep.data.c4 import Shards
from optsweep.data.documents import ShuffledDocuments, fresh_position


class TrainStream(ShuffledDocuments, IterableDataset):
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
        super().__init__(shards, shuffle_buffer, seed, rank, world_size)
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.row_format = R.check_row_format(row_format)
        self._start: dict | None = None  # where the next iterator starts (a loaded state, or the beginning)
        self._position: dict | None = None  # where the running iterator will produce its next row

    def __iter__(self) -> Iterator[R.Row]:
        start = dict(self._start or fresh_position())
        self._position = dict(start)
        docs = self.documents(start)
        if self.row_format == "paper":
            yield from self._paper_rows(docs)
        else:
            yield from self._packed_rows(docs, start["token"])

    def _chunks(self, docs):
        size = min(R.ENCODE_CHUNK, self.block_size)  # tokenizing past the current block gains nothing
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
        position = self._position or self._start or fresh_position()
        return {"reader": reader, "readers": readers, **position}

    def load_state_dict(self, state: dict) -> None:
        reader, readers = self.reader()
        if (state["reader"], state["readers"]) != (reader, readers):
            raise ValueError(
                f"this data position was saved by reader {state['reader']} of {state['readers']} (ranks x "
                f"dataloader workers) but is loaded by reader {reader} of {readers}: resume with the same "
                f"number of devices and data.num_workers"
            )
        self._start = {k: int(state.get(k, v)) for k, v in fresh_position().items()}
        self._position = None


def stream_positions(state) -> Iterator[dict]:
    """The TrainStream positions inside a loader's state (one per worker, or the main process's)."""
    if isinstance(state, dict):
        if "reader" in state and "skipped_through_block" in state:
            yield state
            return
        for value in state.values():
            yield from stream_positions(value)
