"""Importing an official implementation's file from a path given on the command line (never committed here)."""

from __future__ import annotations

import hashlib
import importlib.util
from types import ModuleType


def load_released(path: str, module_name: str) -> tuple[ModuleType, str]:
    """The module in ``path`` and the file's SHA-256, which the golden file records."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, digest
