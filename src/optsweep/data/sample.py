"""The embedded corpus: real English prose that ships with Python, written as C4 shards, with its own tokenizer.

Documents are the interactive help topics (``pydoc_data.topics``) and the docstrings of the standard
library's modules, classes and functions, read with ``ast`` from the source files (nothing is imported, so
no module's import side effects run). Tiny docstrings are dropped and exact duplicates kept once. The order
is by SHA-256 of the text (a shuffle that needs no seed), and the same hash puts one document in eight into
validation, so train and validation are disjoint. The files use C4's names and format, so the ``c4_local``
reader serves them; a byte-level BPE tokenizer (pad 0, eos 1, unk 2, as in T5; eos appended to every
document, as T5's tokenizer does) is trained on the train shards only and saved beside them.

The result depends only on the Python installation: the same Python version gives the same bytes; another
version (even a patch release, whose help topics are regenerated) gives a slightly different corpus. A build
takes a few seconds, lands in a temporary folder renamed into place at the end, and is reused afterwards
as long as its manifest matches the recipe and the files' hashes.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from optsweep.data.c4 import DataUnavailableError, shard_name, write_shard
from optsweep.paths import repo_root

log = logging.getLogger(__name__)

# Everything that changes the bytes of the corpus; a cache whose manifest records another recipe is rebuilt.
RECIPE = {
    "format": "optsweep-sample",
    "version": 1,
    "python": ".".join(map(str, sys.version_info[:3])),
    "min_chars": 200,  # shorter docstrings are one-liners ("Return the name.")
    "validation_one_in": 8,
    "train_shards": 4,
    "validation_shards": 2,
    "vocab_size": 4096,
    "min_frequency": 2,
}
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
TIMESTAMP = "2019-04-25T00:00:00Z"  # a placeholder in C4's format; the texts have no crawl time
MANIFEST = "manifest.json"
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def default_cache_dir() -> Path:
    return repo_root() / "outputs" / "data" / "sample"


# --- documents -----------------------------------------------------------------------------------------

def _source_url(relative: str, anchor: str) -> str:
    tag = "v" + RECIPE["python"]
    return f"https://github.com/python/cpython/blob/{tag}/Lib/{relative}#{anchor}"


def help_topics() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key], _source_url("pydoc_data/topics.py", key)


def stdlib_docstrings() -> Iterator[tuple[str, str]]:
    """(docstring, url) for every module, class and function of the stdlib's .py files, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in _SKIP_PARTS]  # site-packages is in there too
        files += [Path(folder, n).relative_to(root).as_posix() for n in names if n.endswith(".py")]
    for relative in sorted(files):
        try:
            tree = ast.parse((root / relative).read_bytes(), filename=relative)
        except (SyntaxError, ValueError):  # e.g. lib2to3's deliberately broken fixtures
            continue
        module = relative[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc, _source_url(relative, module)
        yield from _walk_docstrings(tree.body, module, relative)


def _walk_docstrings(body: list, qualname: str, relative: str) -> Iterator[tuple[str, str]]:
    """Docstrings of the classes and functions in a statement list, nested ones included; expressions,
    which hold no definitions, are not visited (most of a syntax tree)."""
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{qualname}.{node.name}"
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc, _source_url(relative, name)
            yield from _walk_docstrings(node.body, name, relative)
        else:  # if/for/while/with/try/match bodies, except handlers and match cases
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from _walk_docstrings(inner, qualname, relative)


def collect_documents(min_chars: int = RECIPE["min_chars"]) -> list[dict]:
    """C4-style records, deduplicated, ordered by the SHA-256 of their text."""
    seen: set[str] = set()
    records = []
    for text, url in _chain(help_topics(), stdlib_docstrings()):
        text = text.strip()
        if len(text) < min_chars or text in seen:
            continue
        seen.add(text)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        records.append({"text": text, "timestamp": TIMESTAMP, "url": url, "_sha": digest})
    records.sort(key=lambda r: r["_sha"])
    return records


def _chain(*iterators):
    for it in iterators:
        yield from it


def split_documents(records: list[dict], one_in: int = RECIPE["validation_one_in"]) -> dict[str, list[dict]]:
    val = [r for r in records if int(r["_sha"][:8], 16) % one_in == 0]
    train = [r for r in records if int(r["_sha"][:8], 16) % one_in != 0]
    return {"train": train, "validation": val}


# --- tokenizer -----------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int):
    """Byte-level BPE wrapped as a transformers fast tokenizer that appends eos like T5's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    eos = SPECIAL_TOKENS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS[0],
        eos_token=eos,
        unk_token=SPECIAL_TOKENS[2],
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,  # rows.py truncates to seq_len explicitly
    )


# --- build and cache -----------------------------------------------------------------------------------

def build(folder: str | os.PathLike, recipe: dict = RECIPE) -> dict:
    """Write the corpus and tokenizer into ``folder`` (which must not exist); returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    splits = split_documents(collect_documents(recipe["min_chars"]), recipe["validation_one_in"])
    counts = {}
    for split, records in splits.items():
        n_shards = recipe[f"{split}_shards"]
        if len(records) < n_shards:
            raise RuntimeError(f"sample corpus: only {len(records)} {split} documents for {n_shards} shards")
        for i in range(n_shards):
            write_shard(folder / shard_name(split, i), records[i::n_shards])
        counts[split] = len(records)
    tokenizer = train_tokenizer([r["text"] for r in splits["train"]], recipe["vocab_size"], recipe["min_frequency"])
    tokenizer.save_pretrained(str(folder))
    files = sorted(p.name for p in folder.iterdir())
    manifest = {
        "recipe": recipe,
        "documents": counts,
        "characters": {s: sum(len(r["text"]) for r in rs) for s, rs in splits.items()},
        "vocab_size": len(tokenizer),
        "files": {name: _sha256(folder / name) for name in files},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def is_valid(folder: str | os.PathLike, recipe: dict = RECIPE) -> bool:
    """The cache holds a complete build of ``recipe`` whose files still hash to the manifest."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return manifest["recipe"] == recipe and all(
            _sha256(folder / name) == digest for name, digest in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_sample(folder: str | os.PathLike | None = None, recipe: dict = RECIPE) -> Path:
    """The sample corpus in ``folder`` (default ``<repo>/outputs/data/sample``), built once if absent or stale.

    Builds are serialised by a lock file and atomic: a temporary sibling folder is renamed into place, so
    an interrupted build leaves the old cache (or nothing), never half a corpus.
    """
    folder = Path(folder).expanduser().resolve() if folder is not None else default_cache_dir()
    if is_valid(folder, recipe):
        return folder
    if folder.exists() and not (folder.is_dir() and ((folder / MANIFEST).exists() or not any(folder.iterdir()))):
        # A rebuild replaces the folder: only ever an earlier sample cache or an empty folder, never user data.
        raise DataUnavailableError(
            f"data.path={folder} already holds something other than the sample corpus, which is built there: "
            "point data.path at a new or empty folder (or use data=c4_local for a folder of C4 shards)"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _lock(folder.parent / f".{folder.name}.lock"):
        if is_valid(folder, recipe):  # another process built it while we waited
            return folder
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.build-", dir=folder.parent))
        try:
            manifest = build(tmp / "corpus", recipe)
            if folder.exists():
                stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
                folder.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            (tmp / "corpus").rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info(
            "built the sample corpus in %s (%.1f s): %s train / %s validation documents, vocab %s",
            folder, time.perf_counter() - started, manifest["documents"]["train"],
            manifest["documents"]["validation"], manifest["vocab_size"],
        )
    return folder


@contextlib.contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): atomic renames still keep the cache whole
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())



def main(argv: list[str] | None = None) -> None:
    """``python -m optsweep.data.sample [folder]``: build (or check) the sample and print its summary."""
    import argparse

    parser = argparse.ArgumentParser(description="Build the embedded sample corpus (C4 format + tokenizer).")
    parser.add_argument("folder", nargs="?", default=None, help=f"default: {default_cache_dir()}")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folder = ensure_sample(args.folder)
    manifest = describe(folder)
    print(f"{folder} ready in {time.perf_counter() - started:.1f} s: {manifest['documents']} documents, "
          f"{manifest['characters']} characters, vocab {manifest['vocab_size']}, python {RECIPE['python']}")


if __name__ == "__main__":
    main()
