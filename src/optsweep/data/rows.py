"""Documents -> tokens -> rows, in one of two formats.

- ``paper``: one document per row, as the paper's scripts do it - ``tokenizer(text, max_length=seq_len,
  truncation=True, padding="max_length")``, so the tokenizer appends eos (T5's does; so does the sample's),
  long documents are cut at ``seq_len`` (keeping eos last) and short ones padded with the pad id.
- ``packed``: documents tokenized whole, each followed by eos, concatenated and cut into ``seq_len`` rows:
  no padding, no token thrown away.

A row travels as ``(ids, length)``: ``length`` tokens are real, the rest are pad (batches: ``loader.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROW_FORMATS = ("paper", "packed")
ENCODE_CHUNK = 64  # documents per tokenizer call: one call per document costs more; larger gains nothing

Row = tuple[np.ndarray, int]


def check_row_format(row_format: str) -> str:
    if row_format not in ROW_FORMATS:
        from optsweep.errors import UserError

        raise UserError(f"data.row_format={row_format!r} is not a row format: choose one of {', '.join(ROW_FORMATS)}")
    return row_format


def encode_paper(tokenizer, texts: Sequence[str], seq_len: int) -> list[Row]:
    """One padded row per text: the paper's tokenizer call."""
    enc = tokenizer(list(texts), max_length=seq_len, truncation=True, padding="max_length")
    # lists, then one numpy conversion: transformers' return_tensors="np" costs ~20% more
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    lengths = np.asarray(enc["attention_mask"], dtype=np.int32).sum(axis=1)
    return [(ids[i], int(lengths[i])) for i in range(len(texts))]


def encode_documents(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Whole documents, each ending in eos (added here, not by the tokenizer, so no bos sneaks in)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [doc + [eos] for doc in ids]


def pack(documents: Sequence[Sequence[int]], seq_len: int) -> tuple[list[Row], list[int]]:
    """Full ``seq_len`` rows cut from the concatenated documents, and the tokens left over at the end."""
    flat = np.fromiter((t for doc in documents for t in doc), dtype=np.int32)
    n_rows = len(flat) // seq_len
    rows = [(flat[i * seq_len : (i + 1) * seq_len], seq_len) for i in range(n_rows)]
    return rows, flat[n_rows * seq_len :].tolist()


def max_token_id_in_text(tokenizer) -> int:
    """The largest id that tokenizing plain text (plus the pad/eos the rows add) can produce.

    Special added tokens other than pad/eos/unk - T5's 100 ``<extra_id_N>`` sentinels at 32000-32099 -
    only appear when written literally into the text, which C4 never does; so t5-base fits a 32000-row
    embedding although ``len(tokenizer)`` is 32100.
    """
    emitted = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id} - {None}
    reserved = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special and i not in emitted}
    return max(i for i in range(len(tokenizer)) if i not in reserved)
