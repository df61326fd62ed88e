"""Every optimizer config trains a fixed tiny LLaMA for 10 steps to the losses pinned in tests/golden/losses.json
(made by tests/golden/make_golden_losses.py, which says how the run is set up and how to regenerate).

A change to any optimizer's arithmetic or to a default in conf/optimizer/ moves these losses. A new config is
enrolled once its losses are recorded (regenerate the file); until then its case is skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from optsweep.optim.registry import OPTIMIZERS

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "losses.json").read_text())
RELATIVE_TOLERANCE = 1e-5
# Muon and NorMuon orthogonalise in bf16, and CPUs round bf16 matmuls differently: on two x86 machines their
# losses part by up to 5e-5 while every fp32 optimizer agrees to 1e-6.
TOLERANCE = {"muon": 2e-4, "normuon": 2e-4}

_spec = importlib.util.spec_from_file_location("make_golden_losses", GOLDEN_DIR / "make_golden_losses.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)


@pytest.fixture(autouse=True, scope="module")
def _deterministic():
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    make_golden.deterministic()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(strict)


def test_golden_losses_belong_to_the_optimizer_configs():
    configs = make_golden.optimizer_names()
    assert configs == sorted(OPTIMIZERS), "conf/optimizer/ and the registry list different optimizers"
    stale = sorted(set(GOLDEN["losses"]) - set(configs))
    assert not stale, f"golden losses for {', '.join(stale)}, which no longer exist: regenerate the file"


def test_golden_steps_move_the_loss():
    """The pinned steps are large enough to matter: every optimizer lowers the loss of some later batch by
    0.1 nats or more below the first (the batches differ, so the curve is not monotone)."""
    for name, losses in GOLDEN["losses"].items():
        assert len(losses) == make_golden.STEPS + 1, name
        assert min(losses[1:]) < losses[0] - 0.1, (name, losses)


@pytest.mark.parametrize("name", make_golden.optimizer_names())
def test_losses_match_golden(name):
    expected = GOLDEN["losses"].get(name)
    if expected is None:
        pytest.skip(f"no golden losses recorded for {name} yet: record them with `{make_golden.COMMAND}`")
    losses = make_golden.golden_losses(name)
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses, expected))
    assert all(math.isfinite(x) for x in losses)
    assert worst <= TOLERANCE.get(name, RELATIVE_TOLERANCE), (
        f"{name}: per-step losses moved by up to {worst:.1e} relative\n  now    {losses}\n  golden {expected}\n"
        f"if the change is intended, regenerate with `{make_golden.COMMAND}` and say why in the commit")
