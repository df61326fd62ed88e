"""Reports: the paper's memory column from the optimizers themselves, and comparisons of MLflow runs.

    python -m optsweep.report memory                 # model + optimizer memory per optimizer x model size
    python -m optsweep.report compare                # tables and plots from the runs in outputs/mlflow.db

One job per module: ``queries`` reads runs from MLflow, ``cells`` turns them into cells and per-method
numbers with the pure functions of ``stats``, ``tables`` renders markdown and CSV, ``plots`` draws, ``publish``
logs a report back to MLflow, and ``compare`` is the command that strings them together. Kept light on
imports: each subcommand imports what it needs.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The directory holding pyproject.toml, looked for upward from the working directory, then from the
    installed package (an editable install lives in the checkout); the working directory if neither has one.
    """
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / "pyproject.toml").is_file():
                return folder
    return Path.cwd()


def project_root() -> Path:
    """Where training writes ``outputs/``: ``$PROJECT_ROOT`` when set (as run.py honours it), else the repo."""
    return Path(os.environ["PROJECT_ROOT"]) if os.environ.get("PROJECT_ROOT") else repo_root()
