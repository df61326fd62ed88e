"""Where documents come from: C4's shard files, on the hub (``c4``) or in a local folder (``c4_local``).

C4 ``en`` is 1024 train and 8 validation shards, gzip'd JSON lines with the keys ``text``, ``timestamp``
and ``url``, named ``c4-train.00000-of-01024.json.gz`` ... and ``c4-validation.00000-of-00008.json.gz`` ...
(the names the paper's scripts read from a local folder). Both sources are the same list of shard files;
only opening a file differs, so everything downstream (shuffle, rank/worker split, tokenisation) is one code
path - the embedded ``sample`` corpus is written in this format and read through :class:`LocalShards`.

Streaming does not go through ``datasets``: its shuffle buffer is lost on resume, and resuming must give
exactly the batches an uninterrupted run sees (see ``stream.TrainStream``).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from optsweep.data.shardfile import shard_documents
from optsweep.errors import UserError

SOURCES = ("sample", "c4", "c4_local")  # data.source: the embedded corpus, C4 from the hub, C4 shards on disk
SPLITS = {"train": 1024, "validation": 8}
HUB_DATASET = "allenai/c4"
HUB_SUBSET = "en"
_SHARD_RE = re.compile(r"^c4-(train|validation)\.(\d{5})-of-(\d{5})\.json\.gz$")


class DataUnavailableError(UserError):
    """The configured data cannot be read; the message says what to run instead."""


def shard_name(split: str, index: int) -> str:
    return f"c4-{split}.{index:05d}-of-{SPLITS[split]:05d}.json.gz"


def name_pattern(split: str) -> str:
    return f"c4-{split}.NNNNN-of-{SPLITS[split]:05d}.json.gz"


class Shards:
    """The shard files of one split, in index order; ``open(i)`` gives the raw gzip bytes of shard i."""

    split: str
    names: list[str]
    on_bad_document: str = "error"  # or "skip": a line that is not a JSON document is passed over

    def open(self, i: int) -> BinaryIO:
        raise NotImplementedError

    def location(self, i: int) -> str:
        """Where shard ``i`` is, as error messages name it."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)

    def lines(self, i: int, start: int = 0) -> Iterator[tuple[int, str | None]]:
        """(line index, text) of shard ``i`` from line ``start`` on; text is None for a skipped bad line.
        A shard that cannot be decompressed, or (unless skipping) a bad line, raises naming file and line."""
        with self.open(i) as raw:
            yield from shard_documents(raw, self.location(i), start, self.on_bad_document)

    def documents(self, i: int, start: int = 0) -> Iterator[str]:
        """The texts of shard ``i`` from line ``start`` on (gzip is not seekable: earlier lines are read)."""
        for _, text in self.lines(i, start):
            if text is not None:
                yield text


class LocalShards(Shards):
    """Shards in ``path`` (or in ``path/en``, the hub's layout); missing files are a one-sentence error."""

    def __init__(self, path: str | os.PathLike, split: str):
        self.split = split
        folder = Path(path).expanduser()
        expected = f"{name_pattern('train')} and {name_pattern('validation')}"
        if folder.exists() and not folder.is_dir():
            raise DataUnavailableError(
                f"data.path={folder} is a file, not a folder: set data.path to the folder holding {expected}"
            )
        if not folder.is_dir():
            raise DataUnavailableError(
                f"C4 shard folder '{folder}' does not exist: set data.path to a folder holding {expected} "
                f"(files of huggingface.co/datasets/{HUB_DATASET}, folder {HUB_SUBSET}/), or use data=sample"
            )
        if not _list_shards(folder, split) and (folder / HUB_SUBSET).is_dir():
            folder = folder / HUB_SUBSET
        found = _list_shards(folder, split)
        if not found:
            raise DataUnavailableError(
                f"C4 shard folder '{folder}' holds no {name_pattern(split)} files: put the {split} shards of "
                f"huggingface.co/datasets/{HUB_DATASET} (folder {HUB_SUBSET}/) there, set data.path to the "
                f"folder that holds them, or use data=sample"
            )
        self.folder = folder
        self.names = [p.name for p in found]

    def open(self, i: int) -> BinaryIO:
        return open(self.folder / self.names[i], "rb")

    def location(self, i: int) -> str:
        return str(self.folder / self.names[i])

    def __repr__(self) -> str:
        return f"LocalShards('{self.folder}', {self.split}, {len(self.names)} shards)"


def _list_shards(folder: Path, split: str) -> list[Path]:
    found = []
    for p in folder.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and m.group(1) == split and int(m.group(3)) == SPLITS[split]:
            found.append(p)
    return sorted(found, key=lambda p: p.name)


class HubShards(Shards):
    """All shards of C4 ``en`` on the Hugging Face hub, read over HTTP as they stream in."""

    def __init__(self, split: str, dataset: str = HUB_DATASET, subset: str = HUB_SUBSET):
        require_hub(f"{dataset} ({subset})")
        self.split = split
        self.dataset = dataset
        self.subset = subset
        self.names = [shard_name(split, i) for i in range(SPLITS[split])]
        self._fs = None

    def open(self, i: int) -> BinaryIO:
        if self._fs is None:  # made lazily: each dataloader worker opens its own connections
            from huggingface_hub import HfFileSystem

            self._fs = HfFileSystem()
        return self._fs.open(f"datasets/{self.dataset}/{self.subset}/{self.names[i]}", "rb")

    def location(self, i: int) -> str:
        return f"hf://datasets/{self.dataset}/{self.subset}/{self.names[i]}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fs"] = None
        return state

    def __repr__(self) -> str:
        return f"HubShards({self.dataset}/{self.subset}, {self.split}, {len(self.names)} shards)"


# --- is the hub there? -------------------------------------------------------------------------------

def hub_offline_by_env() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, read now (huggingface_hub reads them once at import)."""
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 5.0) -> bool:
    """One HEAD request (through any configured proxy) with a short timeout; any HTTP answer counts."""
    request = urllib.request.Request(f"{hub_endpoint()}/api/datasets/{HUB_DATASET}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


_hub_answered = False  # one successful probe per process is enough


def require_hub(what: str) -> None:
    """Fail at once, in one sentence, when the hub cannot serve ``what`` (no stack of retries)."""
    global _hub_answered
    if hub_offline_by_env():
        reason = "HF_HUB_OFFLINE is set"
    elif _hub_answered or hub_reachable():
        _hub_answered = True
        return
    else:
        reason = f"{hub_endpoint()} did not answer"
    raise DataUnavailableError(
        f"The Hugging Face hub cannot be reached ({reason}), so {what} cannot be streamed: train on the "
        f"embedded corpus with data=sample, or on C4 shards on disk with data=c4_local "
        f"data.path=/folder/with/c4-train.00000-of-01024.json.gz"
    )


def load_tokenizer(name_or_path: str, **kwargs):
    """A tokenizer from a local folder, else from the hub (or its local cache when the hub is away)."""
    from transformers import AutoTokenizer

    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(folder), **kwargs)
        except Exception as error:  # noqa: BLE001 - transformers and tokenizers raise many kinds
            raise DataUnavailableError(_unreadable_tokenizer(folder, error, f"data.tokenizer={name_or_path}")) from None
    offline = hub_offline_by_env() or not (_hub_answered or hub_reachable())
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as error:
        cached = _cached_tokenizer_folder(name_or_path)
        if cached is not None and not isinstance(error, OSError):
            raise DataUnavailableError(_unreadable_tokenizer(cached, error, f"the cached {name_or_path}")) from None
        where = "the hub cannot be reached and it is not in the local cache" if offline else str(error)
        raise DataUnavailableError(
            f"Tokenizer '{name_or_path}' cannot be loaded ({where}): set data.tokenizer to a local folder "
            f"holding its tokenizer files, or use data=sample"
        ) from None


TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "vocab.json", "config.json")


def _unreadable_tokenizer(folder: Path, error: BaseException, what: str) -> str:
    """One sentence naming the tokenizer file that cannot be parsed (or the folder, when none is to blame)."""
    for name in TOKENIZER_JSON_FILES:
        file = folder / name
        if file.is_file():
            try:
                json.loads(file.read_bytes())
            except (ValueError, UnicodeDecodeError) as bad:
                return (f"Tokenizer file {file} ({what}) cannot be parsed (not JSON: {str(bad).splitlines()[0]}): "
                        "restore it (copy or download the tokenizer again) or set data.tokenizer to another one")
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
    return (f"Tokenizer folder {folder} ({what}) cannot be loaded ({reason}): restore its files (copy or "
            "download the tokenizer again) or set data.tokenizer to another folder")


def _cached_tokenizer_folder(name: str) -> Path | None:
    """The hub cache's snapshot folder of ``name``, when it holds a tokenizer."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - installed with transformers
        return None
    for file in ("tokenizer.json", "tokenizer_config.json"):
        found = try_to_load_from_cache(name, file)
        if isinstance(found, str):
            return Path(found).parent
    return None


def write_shard(path: str | os.PathLike, records: list[dict]) -> None:
    """One shard in C4's format, byte-for-byte reproducible (no time stamp or name in the gzip header)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as gz:
        for r in records:
            line = json.dumps({"text": r["text"], "timestamp": r["timestamp"], "url": r["url"]}, ensure_ascii=False)
            gz.write(line.encode("utf-8") + b"\n")
    Path(path).write_bytes(buffer.getvalue())
