"""Shards -> documents: which train documents each reader reads, in what order, from what position.

A reader is one (rank, dataloader worker).
1. Each pass ("epoch") over the split orders the shards by a seeded shuffle. With at least as many shards
   as readers, reader g of R reads shards g, g+R, ... of that order; with fewer (the small sample), every
   reader reads all shards and keeps documents g, g+R, ... So within a pass no two readers share a document
   and together they read every document once.
2. Shuffle: the reader's documents are taken ``shuffle_buffer`` at a time and each block is permuted with a
   seed from (seed, pass, reader, block). Unlike a reservoir buffer, a block can be rebuilt from its first
   document's file position, so the position is a handful of integers and a resume is exact.
When a pass ends the next one starts with new shard order and permutations, so training by steps never
runs dry.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator

from torch.utils.data import get_worker_info

from optsweep.data.c4 import DataUnavailableError, Shards


def fresh_position() -> dict:
    # epoch; the first document of the current block as (slot in this reader's shard list, line in that
    # shard, documents of the pass before it, bad lines this reader skipped before it); block number; next
    # document in the block; next token in it; bad lines skipped up to the end of the current block
    return {"epoch": 0, "slot": 0, "line": 0, "seen": 0, "skipped": 0, "block": 0, "doc": 0, "token": 0,
            "skipped_through_block": 0}


class ShuffledDocuments:
    """This reader's endless, shuffled, resumable stream of train documents (see module docstring)."""

    def __init__(self, shards: Shards, shuffle_buffer: int = 10_000, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.shards = shards
        self.shuffle = bool(shuffle_buffer)
        self.block_size = int(shuffle_buffer) if shuffle_buffer else 1024
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

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
        pos = dict(start or fresh_position())
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
