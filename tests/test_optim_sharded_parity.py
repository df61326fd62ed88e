"""Adafactor, Lion and AdEMAMix under FSDP2 (2 CPU processes, gloo): sharded steps equal unsharded ones.

The processes run in a subprocess (tests/_sharded_parity_worker.py), never inside pytest's own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "_sharded_parity_worker.py"


@pytest.mark.slow
def test_sharded_steps_equal_unsharded_ones():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True, timeout=240,
                               env=env, cwd=WORKER.parent.parent, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    print(results)
    assert set(results) == {"adafactor", "lion", "ademamix"}
    for name, diffs in results.items():
        assert diffs["moved"] > 1e-3, name  # the weights really moved
        assert diffs["sharded"] <= 1e-6, (name, diffs)
    # Adafactor's factors and RMS(X) are whole-matrix statistics: per-shard ones give another update
    assert results["adafactor"]["per_shard"] > 1e-4, results["adafactor"]
