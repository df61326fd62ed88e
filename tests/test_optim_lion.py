"""Lion against the authors' code (google/automl lion_pytorch.py, numbers in tests/golden/lion_official.json),
a step worked by hand, the optimizer contract (closure, pure bf16, weights_only resume) and its state size."""

from __future__ import annotations

import pytest
import torch
from _official_parity import parity, resume_is_exact, tiny_model, train

from optsweep.optim.lion import Lion
from optsweep.optim.registry import build_optimizer

OFFICIAL_RUN = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.5}  # as in the golden file


def test_matches_the_official_lion_over_12_steps():
    diffs = parity("lion", **OFFICIAL_RUN)
    print("lion vs official:", diffs)
    assert diffs["moved"] > 5e-3  # 12 steps of lr 1e-3 sign updates
    assert diffs["loss"] <= 1e-6
    assert diffs["sum"] <= 1e-6 and diffs["sum_sq"] <= 1e-6 and diffs["head"] <= 1e-7


def test_one_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))
    p.grad = torch.tensor([0.3, -0.2, 0.0])
    optimizer = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    optimizer.state[p]["exp_avg"] = torch.tensor([-1.0, 0.5, 0.1])
    optimizer.step()
    # c = 0.9 m + 0.1 g = (-0.87, 0.43, 0.09): sign (-1, 1, 1); p = 0.95 p - 0.1 sign(c)
    assert p.detach().tolist() == pytest.approx([1.05, -1.05, 0.375], abs=1e-7)
    # m = 0.99 m + 0.01 g
    assert optimizer.state[p]["exp_avg"].tolist() == pytest.approx([-0.987, 0.493, 0.099], abs=1e-7)


def test_closure_bf16_and_exact_resume():
    model = tiny_model()
    optimizer = build_optimizer(model, "lion", lr=1e-3)
    closure_losses = train(model, optimizer, range(2), closure=True)
    assert all(torch.isfinite(torch.tensor(closure_losses)))

    model = tiny_model(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model, "lion", lr=1e-3, weight_decay=0.1)
    train(model, optimizer, range(3))
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in optimizer.state.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), before)) > 0

    assert resume_is_exact("lion", lr=1e-3, weight_decay=0.1) == 0.0


def test_memory_report_counts_one_buffer_per_weight():
    from _official_parity import llama_60m_counts

    from optsweep.report.memory import memory_rows

    (row,) = memory_rows(["lion"], ["llama_60m"])
    counts = llama_60m_counts()
    assert row.state_elements == counts["weights"]  # measured on the meta device
    assert row.rule_gb == pytest.approx(2 * counts["weights"] * 2 / 1e9)  # weights + one buffer, 2 bytes each
