"""Reports: the paper's memory column from the optimizers themselves, and comparisons of MLflow runs.

    python -m optsweep.report memory                 # model + optimizer memory per optimizer x model size
    python -m optsweep.report compare                # tables and plots from the runs in outputs/mlflow.db

One job per module: ``queries`` reads runs from MLflow, ``cells`` turns them into cells and per-method
numbers with the pure functions of ``stats``, ``tables`` renders markdown and CSV, ``plots`` draws, ``publish``
logs a report back to MLflow, and ``compare`` is the command that strings them together. ``memory`` is a
package of its own (the paper's numbers, its counting rules, the measurement, the rows, their rendering).
Kept light on imports: each subcommand imports what it needs.
"""

from __future__ import annotations

from optsweep.paths import project_root, repo_root

__all__ = ["project_root", "repo_root"]
