"""SCALE under FSDP2 (2 CPU processes, gloo): sharded steps equal unsharded ones; per-shard RMS does not.

The processes run in a subprocess (tests/_scale_sharded_worker.py), never inside pytest's own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "_scale_sharded_worker.py"


@pytest.mark.slow
def test_sharded_scale_equals_unsharded_and_local_rms_does_not():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True, timeout=240,
                               env=env, cwd=WORKER.parent.parent, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert set(results) == {"column/last", "row/all", "newton_schulz/last"}
    for setting, diffs in results.items():
        assert diffs["moved"] > 1e-2, setting  # the weights really moved
        # all-reduced sums of squares / gathered Newton-Schulz: the unsharded update, to rounding
        assert diffs["sharded"] <= 1e-6, (setting, diffs)
        # normalising each shard by its own RMS (or orthogonalising each shard) is a different update
        assert diffs["local_rms"] > 1e-4, (setting, diffs)
