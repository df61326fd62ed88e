"""Documents -> rows for validation: a fixed set, the same for every run of a world size.

The first documents of the validation split (shard order, file order) until their non-pad tokens reach
``val_tokens``; rounded up to a multiple of the world size so every rank runs the same number of batches
(an uneven count would hang a collective under DDP/FSDP); rank r gets rows r, r+W, ...
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator

import numpy as np
from torch.utils.data import IterableDataset

from optsweep.data import rows as R
from optsweep.data.c4 import DataUnavailableError, Shards


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
    while not enough and (chunk := list(itertools.islice(texts, R.ENCODE_CHUNK))):
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
