"""``python -m optsweep.data check PATH``: read every shard of a C4 folder before a long run relies on it.

Each shard is decompressed to its end (which also checks gzip's CRC and length) and every line parsed as a
JSON document with a ``text`` string, shards in parallel processes with a progress bar. A bad shard is
reported in the sentence a training run would stop with; the exit status is 2 when any shard is bad.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from optsweep.data.c4 import SPLITS, DataUnavailableError, LocalShards
from optsweep.data.shardfile import BadDocumentError, BadShardError, shard_documents
from optsweep.errors import USER_ERROR_STATUS


@dataclass
class ShardReport:
    path: str
    documents: int = 0  # lines that parsed
    bad_lines: int = 0
    problem: str | None = None  # the first problem, as one sentence

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_shard(path: str) -> ShardReport:
    """Read one shard to its end: documents counted, bad lines counted, the first problem kept."""
    report = ShardReport(path)
    try:
        with open(path, "rb") as raw:
            for _, text in shard_documents(raw, path, on_bad_document="skip"):
                if text is None:
                    report.bad_lines += 1
                    if report.problem is None:
                        report.problem = _first_bad_line(path)
                else:
                    report.documents += 1
    except (BadShardError, OSError) as error:  # a corrupt stream often inflates to garbage lines first
        report.problem = str(error)
    return report


def _first_bad_line(path: str) -> str:
    """The sentence a run with data.on_bad_document=error stops with at this shard's first bad line."""
    try:
        with open(path, "rb") as raw:
            for _ in shard_documents(raw, path):
                pass
    except BadDocumentError as error:
        return str(error)
    return f"C4 shard {path} has a bad line"  # pragma: no cover - only called after one was found


def shard_files(path: str | os.PathLike) -> list[str]:
    """The C4 shards a run would read from ``path`` (both splits), or ``path`` itself when it is a file."""
    path = Path(path).expanduser()
    if path.is_file():
        return [str(path)]
    files: list[str] = []
    errors = []
    for split in SPLITS:
        try:
            shards = LocalShards(path, split)
        except DataUnavailableError as error:
            errors.append(error)
            continue
        files += [shards.location(i) for i in range(len(shards))]
    if not files:
        raise errors[0]
    return files


def check_folder(path: str | os.PathLike, workers: int | None = None, progress: bool = True) -> list[ShardReport]:
    """Check every shard under ``path`` in ``workers`` processes (default: the CPUs, at most 16)."""
    from tqdm.auto import tqdm

    files = shard_files(path)
    workers = max(1, min(workers or os.cpu_count() or 1, 16, len(files)))
    with ProcessPoolExecutor(workers) as pool:
        reports = list(tqdm(pool.map(check_shard, files), total=len(files), unit="shard",
                            desc="checking shards", disable=not progress, file=sys.stderr))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optsweep.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="decompress and parse every shard of a C4 folder")
    check.add_argument("path", help="the folder of c4-train.NNNNN-of-01024.json.gz ... (as data.path), or one shard")
    check.add_argument("--workers", type=int, default=None, help="processes (default: the CPUs, at most 16)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        reports = check_folder(args.path, args.workers, progress=not args.no_progress)
    except DataUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_STATUS
    bad = [r for r in reports if not r.ok]
    documents = sum(r.documents for r in reports)
    for report in bad:
        more = f" ({report.bad_lines} bad lines in all)" if report.bad_lines > 1 else ""
        print(f"error: {report.problem}{more}", file=sys.stderr)
    print(f"{len(reports)} shards, {documents:,} documents, {len(bad)} bad shards")
    return USER_ERROR_STATUS if bad else 0
