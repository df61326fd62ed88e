"""Fira: a hand-checked step, parity with a plain re-implementation of the official step, the norm-growth
limiter, SVD failure, resume, bf16, meta."""

import io
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.fira import Fira
from optsweep.optim.groups import state_bytes
from optsweep.optim.registry import optimizer_factory, optimizer_options

SPEC = ModelSpec(name="t", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=97)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matrices: intra-op threads only add contention on a shared CPU (80x slower under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_llama(SPEC).to(dtype)


def batch(step):
    return torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2000 + step))


def closure_for(model, optimizer, step):
    def closure():
        optimizer.zero_grad()
        ids = batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss
    return closure


def reference_fira(model, steps, lr, rank, gap, alpha, weight_decay, betas=(0.9, 0.999), eps=1e-6):
    """Fira's AdamW step as the official code writes it, plainly, in fp32; returns params after each step."""
    hidden = {id(m.weight) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and ("attn" in name or "mlp" in name)}
    beta1, beta2 = betas
    states, history = {}, []
    for t in range(steps):
        model.zero_grad()
        ids = batch(t)
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                s = states.setdefault(p, {"step": 0})
                g = p.grad
                if id(p) in hidden:
                    right = g.shape[0] >= g.shape[1]
                    if s["step"] % gap == 0:
                        u, _, vh = torch.linalg.svd(g, full_matrices=False)
                        s["P"] = vh[:rank].clone() if right else u[:, :rank].clone()
                    g = g @ s["P"].T if right else s["P"].T @ g
                if "m" not in s:
                    s["m"], s["v"] = torch.zeros_like(g), torch.zeros_like(g)
                s["step"] += 1
                s["m"].mul_(beta1).add_(g, alpha=1 - beta1)
                s["v"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                n = s["m"] / (s["v"].sqrt() + eps)
                step_size = lr * math.sqrt(1 - beta2 ** s["step"]) / (1 - beta1 ** s["step"])
                if id(p) in hidden:
                    proj = s["P"]
                    dim = 1 if right else 0
                    phi = n.norm(dim=dim, keepdim=True) / (g.norm(dim=dim, keepdim=True) + 1e-8)
                    residual = (p.grad - (g @ proj if right else proj @ g) * alpha) * phi
                    if "prev" in s:
                        norm = residual.norm()
                        limiter = max(norm / (s["prev"] + 1e-8), 1.01) / 1.01
                        residual = residual / limiter
                        s["prev"] = norm / limiter
                    else:
                        s["prev"] = residual.norm()
                    n = (n @ proj if right else proj @ n) * alpha + residual
                p.add_(n, alpha=-step_size)
                if weight_decay:
                    p.add_(p, alpha=-lr * weight_decay)
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def test_hand_checked_step():
    # G = [[2,0],[0,1],[1,0]], rank 1: B = e1, R = +-(2,0,1)^T, first-step N = +-sqrt(10) on R's nonzeros.
    # residual = G - alpha R B = [[2-2a,0],[0,1],[1-a,0]]; phi = |N|/|R| per row = (sqrt(10)/2, 0, sqrt(10));
    # update = alpha N B + residual*phi = sqrt(10) [[1,0],[0,0],[1,0]]; step size lr/sqrt(10).
    w = nn.Parameter(torch.zeros(3, 2))
    opt = Fira([{"params": [w], "role": "hidden"}], lr=0.1, rank=1, alpha=0.25, eps=1e-12)
    w.grad = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    opt.step()
    torch.testing.assert_close(w.detach(), -0.1 * torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]),
                               atol=1e-7, rtol=0)
    # the first residual is not limited; its norm is what the limiter remembers: 0.75 sqrt(10) sqrt(2)
    assert opt.state[w]["limiter_norm"].item() == pytest.approx(0.75 * math.sqrt(20), rel=1e-6)

    # a wide matrix (m < n) takes a left projector and one factor per column
    v = nn.Parameter(torch.zeros(2, 3))
    opt = Fira([{"params": [v], "role": "hidden"}], lr=0.1, rank=1, alpha=0.25, eps=1e-12)
    v.grad = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    opt.step()
    torch.testing.assert_close(v.detach(), -0.1 * torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
                               atol=1e-7, rtol=0)
    assert opt.state[v]["projector"].shape == (2, 1)


def test_parity_with_plain_official_step_across_refreshes():
    reference = reference_fira(tiny_model(), steps=7, lr=0.01, rank=4, gap=3, alpha=0.25, weight_decay=0.1)
    model = tiny_model()
    opt = Fira.for_model(model, lr=0.01, rank=4, update_proj_gap=3, alpha=0.25, weight_decay=0.1)
    for t in range(7):  # refreshes on steps 1, 4 and 7
        opt.step(closure_for(model, opt, t))
        worst = max((p - r).abs().max().item() for p, r in zip(model.parameters(), reference[t]))
        assert worst <= 1e-6, f"step {t + 1}: max |diff| {worst:.2e}"


def test_norm_growth_limiter_caps_growth_at_1_01():
    torch.manual_seed(0)
    # the second gradient leaves the first one's rank-2 subspace: its scaled residual would double
    g1 = torch.randn(8, 2) @ torch.randn(2, 6) + 0.01 * torch.randn(8, 6)
    g2 = torch.randn(8, 6)

    def two_steps(limit):
        w = nn.Parameter(torch.zeros(8, 6))
        opt = Fira([{"params": [w], "role": "hidden"}], lr=0.01, rank=2, norm_growth_limit=limit)
        norms = []
        for g in (g1, g2):
            w.grad = g.clone()
            opt.step()
            norms.append(opt.state[w]["limiter_norm"].item())
        return norms

    first, second = two_steps(1.01)
    assert second == pytest.approx(1.01 * first, rel=1e-6)
    free_first, free_second = two_steps(1e9)  # a limit never reached: what the residual would have been
    assert free_first == pytest.approx(first, rel=1e-6) and free_second > 1.5 * free_first


def test_svd_failure_keeps_previous_projector(monkeypatch):
    model = tiny_model()
    opt = Fira.for_model(model, lr=0.01, rank=4, update_proj_gap=2)
    w = model.model.layers[0].self_attn.o_proj.weight
    opt.step(closure_for(model, opt, 0))
    opt.step(closure_for(model, opt, 1))
    kept = opt.state[w]["projector"].clone()

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: the algorithm failed to converge")
    monkeypatch.setattr(torch.linalg, "svd", fail)
    with pytest.warns(RuntimeWarning, match="keeping the previous projector"):
        opt.step(closure_for(model, opt, 2))
    assert torch.equal(opt.state[w]["projector"], kept)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_weights_only_round_trip_and_exact_resume_across_refresh():
    def make(model):
        return Fira.for_model(model, lr=0.01, rank=4, update_proj_gap=3)
    model_a = tiny_model()
    opt_a = make(model_a)
    for t in range(7):
        opt_a.step(closure_for(model_a, opt_a, t))

    model_b = tiny_model()
    opt_b = make(model_b)
    for t in range(2):
        opt_b.step(closure_for(model_b, opt_b, t))
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "optimizer": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model_c = tiny_model(seed=123)
    model_c.load_state_dict(checkpoint["model"])
    opt_c = make(model_c)
    opt_c.load_state_dict(checkpoint["optimizer"])
    assert isinstance(opt_c.state[model_c.model.layers[0].mlp.up_proj.weight]["limiter_norm"], torch.Tensor)
    for t in range(2, 7):
        opt_c.step(closure_for(model_c, opt_c, t))
    assert all(torch.equal(a, c) for a, c in zip(model_a.parameters(), model_c.parameters()))


def test_bf16_state_and_closure():
    model = tiny_model(dtype=torch.bfloat16)
    opt = Fira.for_model(model, lr=0.01, rank=4, update_proj_gap=2)
    losses = [opt.step(closure_for(model, opt, t)).item() for t in range(5)]
    assert all(math.isfinite(x) for x in losses)
    dtypes = {v.dtype for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    assert dtypes == {torch.bfloat16}


def test_meta_device_step():
    model = build_llama(SPEC, device="meta")
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt = Fira.for_model(model, rank=4)
    opt.step()
    opt.step()  # the second step goes through the limiter
    hidden = next(g for g in opt.param_groups if g["role"] == "hidden")["params"]
    assert all(opt.state[p]["limiter_norm"].device.type == "meta" for p in hidden)
    elements = sum(4 * min(p.shape) + 2 * 4 * max(p.shape) + 1 for p in hidden)
    elements += sum(2 * p.numel() for g in opt.param_groups if g["role"] != "hidden" for p in g["params"])
    assert state_bytes(opt) == 4 * elements


def test_config_and_presets():
    opt = optimizer_factory(OmegaConf.load("conf/optimizer/fira.yaml"))(tiny_model())
    assert isinstance(opt, Fira)
    hidden = next(g for g in opt.param_groups if g["role"] == "hidden")
    assert (hidden["lr"], hidden["alpha"], hidden["norm_growth_limit"]) == (0.01, 0.25, 1.01)
    settings = {}
    for size in ("60m", "130m", "350m", "1b"):
        preset = OmegaConf.load(f"conf/paper/hparams/fira_llama_{size}.yaml")
        assert set(preset.optimizer) <= optimizer_options("fira")
        settings[size] = (preset.optimizer.rank, preset.optimizer.alpha, preset.optimizer.lr)
    assert settings == {"60m": (128, 0.25, 0.01), "130m": (256, 0.25, 0.01), "350m": (256, 0.25, 0.01),
                        "1b": (512, 0.0625, 0.01)}
