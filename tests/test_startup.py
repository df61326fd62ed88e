"""A bad train/data/scheduler/optimizer/trainer value is refused before torch, Lightning, transformers or MLflow is imported
(they cost seconds; benchmarks/startup.py measures the whole command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = f"""
import os, sys
os.environ["OPTSWEEP_REPO"] = {str(ROOT)!r}
from hydra import compose, initialize_config_dir
from optsweep.config import register_resolvers
from optsweep.errors import UserError
from optsweep.preflight import check_values, register_schema

register_resolvers()
register_schema()
with initialize_config_dir(config_dir={str(ROOT / "conf")!r}, version_base="1.3"):
    for override in sys.argv[1:]:
        cfg = compose("config", overrides=["experiment=quickstart", override])
        try:
            check_values(cfg)
        except UserError as error:
            print("refused:", error)
heavy = sorted(m for m in ("torch", "lightning", "transformers", "mlflow") if m in sys.modules)
print("heavy:", ",".join(heavy) or "none")
"""


def test_bad_values_are_refused_without_heavy_imports():
    bad = ["train.max_steps=0", "data.seq_len=1", "scheduler.min_lr_ratio=2", "data.row_format=pakced",
           "optimizer.lr=-1", "optimizer.betas=[0.9,1.0]", "optimizer.weight_decay=abc", "trainer.devices=abc",
           "trainer.log_every_n_steps=0"]
    result = subprocess.run([sys.executable, "-c", PROGRAM, *bad], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["train.max_steps=0", "data.seq_len=1",
                                                         "scheduler.min_lr_ratio=2", "data.row_format=pakced",
                                                         "optimizer.lr=-1", "optimizer.betas[1]=1.0",
                                                         "optimizer.weight_decay=abc", "trainer.devices=abc",
                                                         "trainer.log_every_n_steps=0"]
    assert lines[-1] == "heavy: none"
