"""Our Stable-SPAM against trajectories made by the authors' released optimizer (TianjinYellow/StableSPAM at
6a66da1, run outside this repository by tests/golden/make_stable_spam_official.py; the JSON says how).

Each case feeds the released optimizer's gradients (with spikes AdaClip clips, moment resets at steps 5 and
10, cosine decay of gamma1 and beta1) to ``StableSPAM`` and compares the parameters after every step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from optsweep.optim.stable_spam import StableSPAM

GOLDEN = Path(__file__).resolve().parent / "golden" / "stable_spam_official.json"
CASES = json.loads(GOLDEN.read_text())["cases"]
# fp32 on both sides; the two codes write the same expressions, so they agree to a few ulps
TOLERANCE = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_golden_file_records_its_source():
    golden = json.loads(GOLDEN.read_text())
    assert golden["source"]["commit"] == "6a66da1ea7005f7fe7bc570b7968144b42163bed"
    assert sorted(CASES) == ["fast_stats", "script"]
    for case in CASES.values():
        assert len(case["grads"]) == len(case["params_after_step"]) == 12


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_released_optimizer_step_by_step(name):
    case = CASES[name]
    hp = dict(case["hyperparameters"])
    params = {key: torch.nn.Parameter(torch.tensor(value)) for key, value in case["initial"].items()}
    optimizer = StableSPAM(list(params.values()), **hp, reset_timing="after_update", stats_dtype="grad")
    worst = 0.0
    for step, (grads, expected) in enumerate(zip(case["grads"], case["params_after_step"]), start=1):
        for key, p in params.items():
            p.grad = torch.tensor(grads[key])
        optimizer.step()
        for key, p in params.items():
            diff = (p.detach() - torch.tensor(expected[key])).abs().max().item()
            assert diff <= TOLERANCE, f"{name}: {key} differs by {diff:.2e} after step {step}"
            worst = max(worst, diff)
    moved = max((params[k].detach() - torch.tensor(case["initial"][k])).abs().max().item() for k in params)
    assert moved > 0.05  # the steps were large enough to tell implementations apart
    print(f"{name}: max |ours - released| over 12 steps = {worst:.2e} (parameters moved up to {moved:.3f})")
