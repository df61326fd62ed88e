"""Reading one C4 shard (gzip'd JSON lines) so that a broken one is reported where it breaks.

Python's gzip module says ``EOFError: Compressed file ended before the end-of-stream marker was reached``
and json says ``Expecting value: line 1 column 1`` - neither names the file, nor the line of the file, and
on 1024 shards that can come after days of training. Here the stream is decompressed with zlib directly, so
that the compressed byte where decompression fails is known exactly, and each line is parsed with its line
number at hand. Lines are numbered from 1 in messages (``line 7`` is the seventh line of the file) and from
0 in code (the index the data stream's resume position counts in).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from optsweep.errors import UserError

ON_BAD_DOCUMENT = ("error", "skip")
_CHUNK = 1 << 16  # compressed bytes per read
_GZIP = 31  # zlib wbits for a gzip header and trailer (the CRC and length are checked too)


class BadShardError(UserError):
    """A shard cannot be decompressed (truncated or corrupt download); the message names file and byte."""


class BadDocumentError(UserError):
    """A line of a shard is not a JSON document with a ``text`` string; the message names file and line."""


def check_on_bad_document(value: str) -> str:
    if value not in ON_BAD_DOCUMENT:
        raise UserError(f"data.on_bad_document={value!r} is not a choice: set it to error (stop at a bad line, "
                        "the default) or skip (skip bad lines and count them in data/bad_documents_skipped)")
    return value


def gzip_lines(raw: BinaryIO, name: str) -> Iterator[bytes]:
    """The lines of a gzip stream (without their newline), raising BadShardError at the failing byte."""
    decompressor = zlib.decompressobj(_GZIP)
    consumed = 0  # compressed bytes fully handed to zlib so far
    in_member = False  # a gzip member has begun and not yet ended
    lines_done = 0
    pending = b""
    while chunk := raw.read(_CHUNK):
        data = chunk
        while data:
            before = decompressor.copy()
            try:
                out = decompressor.decompress(data)
            except zlib.error as error:
                offset, inflated = _failing_byte(before, data)
                line = lines_done + inflated.count(b"\n") + 1
                raise BadShardError(
                    f"C4 shard {name} is corrupt at compressed byte {consumed + offset:,}, in line {line} "
                    f"({error}): download it again"
                ) from None
            in_member = True
            if out:
                pending += out
                *lines, pending = pending.split(b"\n")
                lines_done += len(lines)
                yield from lines
            if decompressor.eof:  # a member ended; another may follow (gzip allows several)
                rest = decompressor.unused_data
                consumed += len(data) - len(rest)
                data = rest
                decompressor = zlib.decompressobj(_GZIP)
                in_member = False
            else:
                consumed += len(data)
                data = b""
    if consumed == 0:
        raise BadShardError(f"C4 shard {name} is empty (0 bytes): download it again")
    if in_member:
        raise BadShardError(
            f"C4 shard {name} is truncated: its compressed data stops at byte {consumed:,}, in line "
            f"{lines_done + 1}, before the gzip stream ends: download it again"
        )
    if pending:
        yield pending


def _failing_byte(decompressor, data: bytes) -> tuple[int, bytes]:
    """Offset in ``data`` of the byte zlib rejects and what inflated before it: replayed one byte at a time
    from a copy of the decompressor (on errors only)."""
    inflated = []
    for i in range(len(data)):
        try:
            inflated.append(decompressor.decompress(data[i : i + 1]))
        except zlib.error:
            return i, b"".join(inflated)
    return len(data), b"".join(inflated)


def parse_document(line: bytes, name: str, index: int) -> str:
    """The ``text`` of one JSON line; BadDocumentError naming the file and line when it is not one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        reason = f"not UTF-8 at byte {error.start} of the line"
    except json.JSONDecodeError as error:
        reason = f"not JSON: {error.msg} at column {error.colno}"
    else:
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            return record["text"]
        reason = "a JSON value without a \"text\" string"
    shown = line[:60].decode("utf-8", "replace") + ("..." if len(line) > 60 else "")
    raise BadDocumentError(
        f"C4 shard {name}, line {index + 1}, is {reason} ({shown!r}): fix or re-download the shard, or add "
        "data.on_bad_document=skip to skip such lines"
    )


def shard_documents(raw: BinaryIO, name: str, start: int = 0, on_bad_document: str = "error"
                    ) -> Iterator[tuple[int, str | None]]:
    """(line index, text) for every line from ``start`` on; with ``skip`` a bad line gives (index, None)."""
    for index, line in enumerate(gzip_lines(raw, name)):
        if index < start:
            continue  # gzip cannot seek: earlier lines are decompressed and dropped
        try:
            yield index, parse_document(line, name, index)
        except BadDocumentError:
            if on_bad_document != "skip":
                raise
            yield index, None
