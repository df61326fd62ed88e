"""SWAN (unofficial): a hand-checked step, whitening against an eigendecomposition and against the k-step
iterate's spectral definition, boundedness on singular Gram matrices, parity with a plain (coupled-form)
implementation written here (plus torch's Adam), statelessness, checkpoint round trip, bf16, meta, FSDP2."""

from __future__ import annotations

import io
import math

import pytest
import torch

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.registry import build_optimizer
from optsweep.optim.swan import SWAN, grad_norm, grad_whitening, swan_update

SPEC = ModelSpec(name="t", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=97)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(dtype=torch.float32):
    torch.manual_seed(0)
    return build_llama(SPEC).to(dtype)


def backward(model, step: int) -> float:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, SPEC.vocab_size, (4, 16), generator=gen)
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return loss.item()


def hidden_names(model):
    return [n for n, p in model.named_parameters() if p.ndim == 2 and ("self_attn" in n or "mlp" in n)]


# ---------------------------------------------------------------------------------------------------------
def test_hand_checked_step():
    """G = [[1, -1, 0, 0], [0, 0, 2, -2]]. GradNorm: both rows have mean 0, std 1/sqrt(2) and sqrt(2), so
    G~ = sqrt(2) [[1, -1, 0, 0], [0, 0, 1, -1]]. Its rows are orthogonal with norm 2, so whitening divides
    them by 2, and rescaling to Frobenius norm sqrt(2 * 4) multiplies by 2 again: the update is G~."""
    w = torch.nn.Parameter(torch.zeros(2, 4))
    opt = SWAN([{"params": [w], "role": "hidden"}], lr=0.1)
    w.grad = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, -2.0]])
    opt.step()
    r = math.sqrt(2)
    expected = -0.1 * torch.tensor([[r, -r, 0.0, 0.0], [0.0, 0.0, r, -r]])
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-7)
    assert not opt.state[w]  # no state for hidden matrices
    # Without rescaling the whitened rows have unit norm.
    unscaled = swan_update(w.grad, rescale=False)
    torch.testing.assert_close(unscaled, torch.tensor([[1.0, -1.0, 0, 0], [0, 0, 1.0, -1.0]]) / r)


def test_grad_norm_standardises_rows_or_columns():
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 7.0]])
    out = grad_norm(g)
    s1, s2 = math.sqrt(2 / 3), math.sqrt(2)  # population std of rows [1, 2, 3] and [4, 4, 7]
    torch.testing.assert_close(out, torch.tensor([[-1 / s1, 0.0, 1 / s1], [-1 / s2, -1 / s2, 2 / s2]]))
    cols = grad_norm(g, axis="column")
    torch.testing.assert_close(cols, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    assert grad_norm(torch.zeros(2, 3)).abs().sum() == 0  # a zero row stays zero (std floored at eps)


def pinv_inverse_sqrt(a: torch.Tensor) -> torch.Tensor:
    """A^(-1/2) on A's range from torch.linalg.eigh (row-standardised tall or square G~ are rank deficient:
    every row is orthogonal to the all-ones vector)."""
    w, v = torch.linalg.eigh(a)
    keep = w > w.max() * 1e-10
    return v[:, keep] @ torch.diag(w[keep].rsqrt()) @ v[:, keep].T


@pytest.mark.parametrize("form", ["polar", "coupled"])
@pytest.mark.parametrize("shape", [(24, 40), (16, 64), (40, 24), (64, 16)])
def test_whitening_matches_eigendecomposition(shape, form):
    torch.manual_seed(0)
    g = grad_norm(torch.randn(*shape))
    exact_g = g.double()
    if shape[0] <= shape[1]:
        expected = pinv_inverse_sqrt(exact_g @ exact_g.T) @ exact_g
    else:
        expected = exact_g @ pinv_inverse_sqrt(exact_g.T @ exact_g)
    out = grad_whitening(g, steps=10, form=form, center_dim=1)  # the default iteration count, float32
    # measured 1.6e-7 to 9.2e-7; the result is the polar factor: singular values 1 (and 0 on the null space)
    assert (out.double() - expected).abs().max() < 1e-5
    sv = torch.linalg.svdvals(out.double())
    assert torch.allclose(sv[: min(shape) - (shape[0] >= shape[1])], torch.ones(1, dtype=sv.dtype), atol=1e-5)


def low_rank_plus_noise(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Gradient-like: four strong directions plus noise (singular values spread over ~100x)."""
    gen = torch.Generator().manual_seed(seed)
    strong = torch.randn(rows, 4, generator=gen) @ torch.randn(4, cols, generator=gen)
    return strong + 0.05 * torch.randn(rows, cols, generator=gen)


def k_step_iterate(g: torch.Tensor, steps: int, beta: float) -> torch.Tensor:
    """The k-step Newton-Schulz whitening from its spectral definition, in float64: with G = U S V^T and
    s = S / ||G G^T||_F^(1/2), each step maps s to beta (3 s - s^3) and keeps U and V."""
    g = g.double()
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    s = s / (g @ g.T).norm().sqrt()
    for _ in range(steps):
        s = beta * (3 * s - s**3)
    return u @ torch.diag(s) @ vh


@pytest.mark.parametrize("beta", [0.5, 0.8])
@pytest.mark.parametrize("shape", [(24, 40), (32, 32), (40, 24)])
def test_whitening_is_the_k_step_newton_schulz_iterate_on_ill_conditioned_gradients(shape, beta):
    """Pins what ns_steps Newton-Schulz steps compute where they have not converged: on a gradient-like
    matrix 10 steps at beta = 1/2 leave small singular values far below 1 (whitening is partial)."""
    g = grad_norm(low_rank_plus_noise(*shape))
    expected = k_step_iterate(g, 10, beta)
    out = grad_whitening(g, steps=10, beta=beta, form="polar", center_dim=1)
    assert (out.double() - expected).abs().max() < 5e-5  # measured 5e-7 to 8e-6
    if beta == 0.5:
        sv = torch.linalg.svdvals(expected)
        assert sv[sv > 1e-6].min() < 0.5 and sv[0] == pytest.approx(1.0, abs=1e-6)  # measured 0.007-0.18
    if shape[0] < shape[1]:  # non-singular Gram matrix: the literal coupled form agrees too (drifts more)
        coupled = grad_whitening(g, steps=10, beta=beta, form="coupled")
        assert (coupled.double() - expected).abs().max() < 1e-2  # measured 1e-5 (0.5), 1.4e-3 (0.8)


@pytest.mark.parametrize("shape", [(32, 32), (48, 16)])
def test_polar_form_stays_bounded_and_exact_on_singular_gram_matrices(shape):
    """Row-standardised square and tall gradients have singular Gram matrices. Many steps drive the literal
    coupled iteration to inf/NaN in float32 (measured from ~25-30 steps at beta 1/2); the polar form
    converges to the polar factor on the range and stays in its band at beta 0.8."""
    g = grad_norm(low_rank_plus_noise(*shape))
    exact = g.double()
    u, s, vh = torch.linalg.svd(exact, full_matrices=False)
    keep = s > s.max() * 1e-6
    polar = u[:, keep] @ vh[keep]
    out = grad_whitening(g, steps=60, beta=0.5, form="polar", center_dim=1)
    assert torch.isfinite(out).all()
    assert (out.double() - polar).abs().max() < 1e-4  # measured 9e-7, 3.9e-6 (coupled form: NaN)
    sv = torch.linalg.svdvals(grad_whitening(g, steps=60, beta=0.8, form="polar", center_dim=1).double())
    assert torch.isfinite(sv).all() and sv.max() < 1.61 and sv[-1] < 1e-3  # the null direction stays ~0


def test_overshooting_step_size_gives_a_band_not_the_root():
    """ns_beta = 0.8 (public reimplementations) does not converge: singular values land in ~[0.55, 1.6]."""
    torch.manual_seed(0)
    g = grad_norm(torch.randn(24, 40))
    for form in ("polar", "coupled"):
        sv = torch.linalg.svdvals(grad_whitening(g, steps=10, beta=0.8, form=form))
        assert 0.5 < sv.min() < 0.95 and 1.05 < sv.max() < 1.65, (form, sv)


# ---------------------------------------------------------------------------------------------------------
def plain_swan_direction(g: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """GradNorm + coupled Newton-Schulz on the smaller side + rescaling, written out."""
    g = g.float()
    mean = g.mean(dim=1, keepdim=True)
    std = ((g - mean) ** 2).mean(dim=1, keepdim=True).sqrt()
    x = (g - mean) / std
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    gram = x @ x.T
    frob = gram.norm()
    y, z = gram / frob, torch.eye(gram.shape[0])
    for _ in range(steps):
        t = 3 * torch.eye(gram.shape[0]) - z @ y
        y, z = 0.5 * y @ t, 0.5 * t @ z
    out = (z / frob.sqrt()) @ x
    if transposed:
        out = out.T
    return out * math.sqrt(out.numel()) / out.norm()


def test_parity_with_plain_implementation_fp32():
    ours_model, ref_model = tiny_model(), tiny_model()
    ours = build_optimizer(ours_model, "swan", lr=1e-3, adam_lr=3e-3)
    hidden = set(hidden_names(ref_model))
    ref_params = dict(ref_model.named_parameters())
    ref_adam = torch.optim.Adam([p for n, p in ref_params.items() if n not in hidden], lr=3e-3)
    start = {n: p.detach().clone() for n, p in ours_model.named_parameters()}
    for step in range(5):
        backward(ours_model, step)
        backward(ref_model, step)
        ours.step()
        with torch.no_grad():
            for n in hidden:
                ref_params[n].add_(plain_swan_direction(ref_params[n].grad), alpha=-1e-3)
        ref_adam.step()
        ours.zero_grad()
        ref_model.zero_grad()
    worst = 0.0
    for (n, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        assert not torch.equal(p, start[n]), n
        worst = max(worst, (p - q).abs().max().item())
    assert worst < 1e-6, worst


# ---------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_weights_only_and_exact_resume():
    model = tiny_model()
    opt = build_optimizer(model, "swan", lr=1e-3)
    for step in range(3):
        backward(model, step)
        opt.step()
        opt.zero_grad()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = tiny_model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = build_optimizer(resumed, "swan", lr=1e-3)
    resumed_opt.load_state_dict(saved["opt"])
    for step in range(3, 6):
        for m, o in ((model, opt), (resumed, resumed_opt)):
            backward(m, step)
            o.step()
            o.zero_grad()
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bf16_run():
    model = tiny_model(torch.bfloat16)
    opt = build_optimizer(model, "swan", lr=1e-3)
    losses = []
    for step in range(6):
        losses.append(backward(model, step % 2))
        opt.step()
        opt.zero_grad()
    for p in model.parameters():
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all()
        assert all(v.dtype == torch.bfloat16 for v in opt.state[p].values() if isinstance(v, torch.Tensor))
    assert losses[-2] < losses[0]


def test_meta_device_step_and_state_only_outside_hidden():
    model = build_llama(SPEC, device="meta")
    opt = build_optimizer(model, "swan")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    hidden = set(hidden_names(model))
    for name, p in model.named_parameters():
        expected = set() if name in hidden else {"step", "exp_avg", "exp_avg_sq"}
        assert set(opt.state[p]) == expected, name


def test_options_and_closure():
    model = tiny_model()
    opt = build_optimizer(model, "swan", lr=1e-3, adam_lr=5e-3, whiten_side="left", gradnorm_axis="column")
    assert {g["role"]: g["lr"] for g in opt.param_groups} == {
        "hidden": 1e-3, "embedding": 5e-3, "output": 5e-3, "vector": 5e-3}

    def closure():
        opt.zero_grad()
        return torch.tensor(backward(model, 0))

    assert opt.step(closure).item() > 0
    with pytest.raises(ValueError):
        SWAN(model.parameters(), whiten_side="middle")
    with pytest.raises(ValueError):
        SWAN(model.parameters(), whiten_form="exact")
    coupled = build_optimizer(model, "swan", whiten_form="coupled", ns_beta=0.8)
    assert all(g["whiten_form"] == "coupled" and g["ns_beta"] == 0.8 for g in coupled.param_groups)


@pytest.mark.slow
def test_fsdp2_sharded_step_matches_unsharded(tmp_path):
    from test_optim_muon import run_fsdp2

    worst = run_fsdp2(tmp_path, "swan", {"lr": 1e-3, "adam_lr": 3e-3})
    assert worst < 1e-6, worst
