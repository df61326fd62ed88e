"""A file lock next to an sqlite database: workers started together must not both create its tables."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def sqlite_creation_lock(url: str) -> Iterator[None]:
    """Hold `<database>.lock` while opening an `sqlite:///` URL; other URLs need no lock."""
    if not url.startswith("sqlite:///"):
        yield
        return
    database = Path(url.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
