"""Adafactor against the reference code (transformers' Adafactor, fairseq's port of the authors' tensor2tensor
code; numbers in tests/golden/adafactor_official.json), against the paper's Algorithms 4 and 5 written out
in float64 (relative step past its cap, weight decay), the reason torch.optim.Adafactor is not used, and the
optimizer contract (closure, pure bf16, weights_only resume)."""

from __future__ import annotations

import math

import torch
from _official_parity import parity, resume_is_exact, tiny_model, train

from optsweep.optim.adafactor import Adafactor
from optsweep.optim.registry import build_optimizer


def test_matches_the_reference_adafactor_over_12_steps():
    # transformers' relative_step=True, scale_parameter=True is rho_t = min(1e-2, 1/sqrt(t)): our lr 1e-2
    diffs = parity("adafactor", lr=1e-2, eps1=1e-30, eps2=1e-3, d=1.0, beta2_decay=-0.8)
    print("adafactor vs reference:", diffs)
    assert diffs["moved"] > 1e-3
    assert diffs["loss"] <= 1e-6
    assert diffs["sum"] <= 1e-6 and diffs["sum_sq"] <= 1e-6 and diffs["head"] <= 1e-6  # a few ulps of weights near 1 (the norms)


def paper_adafactor(x: torch.Tensor, grads: list[torch.Tensor], lr: float, wd: float) -> torch.Tensor:
    """Algorithms 4 (matrix) and 5 (vector) of Shazeer & Stern, eps1 = 1e-30, eps2 = 1e-3, d = 1, with
    rho_t = min(lr, 1/sqrt(t)) and decoupled decay x *= 1 - lr wd."""
    r = c = v = None
    for t, g in enumerate(grads, start=1):
        beta2 = 1 - t**-0.8
        alpha = max(1e-3, math.sqrt((x * x).mean().item())) * min(lr, 1 / math.sqrt(t))
        x = x * (1 - lr * wd)
        sq = g * g + 1e-30
        if x.ndim == 2:
            r = (1 - beta2) * sq.mean(1, keepdim=True) + (beta2 * r if r is not None else 0)
            c = (1 - beta2) * sq.mean(0, keepdim=True) + (beta2 * c if c is not None else 0)
            v_hat = r * c / r.mean()
        else:
            v = (1 - beta2) * sq + (beta2 * v if v is not None else 0)
            v_hat = v
        u = g / v_hat.sqrt()
        u = u / max(1.0, math.sqrt((u * u).mean().item()))
        x = x - alpha * u
    return x


def test_matches_the_paper_past_the_relative_step_cap_with_weight_decay():
    gen = torch.Generator().manual_seed(0)
    for shape in [(3, 5), (4,)]:
        start = torch.randn(shape, generator=gen, dtype=torch.float64)
        grads = [torch.randn(shape, generator=gen, dtype=torch.float64) * 0.1 for _ in range(6)]
        p = torch.nn.Parameter(start.clone())
        optimizer = Adafactor([p], lr=0.7, weight_decay=0.1)  # rho_t = 0.7, 0.7, then 1/sqrt(t)
        for g in grads:
            p.grad = g.clone()
            optimizer.step()
        expected = paper_adafactor(start, grads, lr=0.7, wd=0.1)
        assert (p.detach() - expected).abs().max().item() < 1e-12, shape
        assert (expected - start).abs().max().item() > 0.1


def test_rows_without_gradient_stay_finite_where_torch_adafactor_gives_nan():
    # the paper's eps1 = 1e-30 as torch.optim.Adafactor's clamp: eps1^2 underflows, 0 * inf = NaN
    def embedding_step(make):
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(10, 4)
        optimizer = make([embedding.weight])
        embedding(torch.tensor([0, 1])).sum().backward()  # rows 2..9 get a zero gradient
        optimizer.step()
        return embedding.weight.detach()

    ours = embedding_step(lambda params: Adafactor(params, eps1=1e-30, eps2=1e-3))
    theirs = embedding_step(lambda params: torch.optim.Adafactor(params, eps=(1e-30, 1e-3)))
    assert torch.isfinite(ours).all()
    assert torch.isnan(theirs).any()


def test_closure_bf16_and_exact_resume():
    model = tiny_model()
    optimizer = build_optimizer(model, "adafactor")
    assert all(torch.isfinite(torch.tensor(train(model, optimizer, range(2), closure=True))))

    model = tiny_model(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model, "adafactor", weight_decay=0.1)
    train(model, optimizer, range(3))
    assert {t.dtype for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)} == {torch.bfloat16}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), before)) > 0

    assert resume_is_exact("adafactor", weight_decay=0.1) == 0.0


def test_memory_report_counts_rows_plus_columns_per_matrix():
    from _official_parity import llama_60m_counts

    from optsweep.report.memory import memory_rows

    (row,) = memory_rows(["adafactor"], ["llama_60m"])
    counts = llama_60m_counts()
    assert row.state_elements == counts["factored"]  # measured on the meta device
    assert abs(row.rule_gb - (counts["weights"] + counts["factored"]) * 2 / 1e9) < 1e-12
