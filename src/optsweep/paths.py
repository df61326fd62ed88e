"""Where the checkout and its folders are: the one answer every module uses.

The code runs from a checkout (``pip install -e .``): run.py names it in ``$OPTSWEEP_REPO``, otherwise it is
the folder above ``src/``. ``$PROJECT_ROOT`` moves what runs write (``outputs/``) elsewhere, as run.py allows.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout the code runs from."""
    return Path(os.environ.get("OPTSWEEP_REPO") or Path(__file__).resolve().parents[2])


def project_root() -> Path:
    """Where runs write ``outputs/``: ``$PROJECT_ROOT`` when set, else the checkout."""
    return Path(os.environ["PROJECT_ROOT"]) if os.environ.get("PROJECT_ROOT") else repo_root()


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the configs shipped beside this code
