"""AdEMAMix against the authors' code (apple/ml-ademamix pytorch/ademamix.py, numbers in
tests/golden/ademamix_official.json), its alpha and beta3 warmups against the paper's formulas, the optimizer
contract (closure, pure bf16, weights_only resume)."""

from __future__ import annotations

import math

import pytest
import torch
from _official_parity import parity, resume_is_exact, tiny_model, train

from optsweep.optim.ademamix import alpha_schedule, beta3_schedule
from optsweep.optim.registry import build_optimizer

# as in the golden file: warmups of 8 steps, so 12 steps cover both the warmup and after it
OFFICIAL_RUN = {"lr": 1e-3, "betas": (0.9, 0.999), "beta3": 0.9999, "alpha": 8.0, "beta3_warmup": 8,
                "alpha_warmup": 8, "eps": 1e-8, "weight_decay": 0.1}


def test_matches_the_official_ademamix_over_12_steps():
    diffs = parity("ademamix", **OFFICIAL_RUN)
    print("ademamix vs official:", diffs)
    assert diffs["moved"] > 5e-3
    assert diffs["loss"] <= 1e-6
    assert diffs["sum"] <= 1e-6 and diffs["sum_sq"] <= 1e-6 and diffs["head"] <= 1e-6  # a few ulps of weights near 1 (the norms)


@pytest.mark.parametrize("t", [1, 250, 500, 999])
def test_warmups_follow_the_paper(t):
    T, b1, b3, alpha = 1000, 0.9, 0.9999, 8.0
    # the paper's section 3: alpha(t) = min(t alpha / T, alpha),
    # beta3(t) = min(exp(ln(b1) ln(b3) / ((1 - t/T) ln(b3) + (t/T) ln(b1))), b3)
    expected = min(math.exp(math.log(b1) * math.log(b3) / ((1 - t / T) * math.log(b3) + t / T * math.log(b1))), b3)
    assert beta3_schedule(t, b3, b1, T) == pytest.approx(expected, rel=1e-12)
    assert alpha_schedule(t, alpha, T) == pytest.approx(t * alpha / T)
    assert beta3_schedule(T + 5, b3, b1, T) == b3 and alpha_schedule(T + 5, alpha, T) == alpha
    assert beta3_schedule(t, b3, b1, None) == b3 and alpha_schedule(t, alpha, None) == alpha


def test_closure_bf16_exact_resume_and_no_fast_ema_at_beta1_zero():
    model = tiny_model()
    optimizer = build_optimizer(model, "ademamix", lr=1e-3, alpha_warmup=4, beta3_warmup=4)
    assert all(torch.isfinite(torch.tensor(train(model, optimizer, range(2), closure=True))))

    model = tiny_model(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model, "ademamix", lr=1e-3, alpha_warmup=4, beta3_warmup=4, weight_decay=0.1)
    train(model, optimizer, range(3))
    assert {t.dtype for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)} == {torch.bfloat16}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), before)) > 0

    assert resume_is_exact("ademamix", lr=1e-3, alpha_warmup=4, beta3_warmup=4, weight_decay=0.1) == 0.0

    model = tiny_model()
    optimizer = build_optimizer(model, "ademamix", betas=(0.0, 0.999))
    train(model, optimizer, range(1))
    assert all(set(s) == {"step", "exp_avg_slow", "exp_avg_sq"} for s in optimizer.state.values())


def test_memory_report_counts_three_buffers_per_weight():
    from _official_parity import llama_60m_counts

    from optsweep.report.memory import memory_rows

    (row,) = memory_rows(["ademamix"], ["llama_60m"])
    counts = llama_60m_counts()
    assert row.state_elements == 3 * counts["weights"]  # m1, m2, nu, measured on the meta device
    assert row.rule_gb == pytest.approx(4 * counts["weights"] * 2 / 1e9)
