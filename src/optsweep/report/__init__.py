"""Reports: the paper's memory column from the optimizers themselves, and comparisons of MLflow runs.

    python -m optsweep.report memory                 # model + optimizer memory per optimizer x model size
    python -m optsweep.report compare                # tables and plots from the runs in outputs/mlflow.db

Kept light on imports: each subcommand imports what it needs.
"""

from __future__ import annotations

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
