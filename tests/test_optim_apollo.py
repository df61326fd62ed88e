"""APOLLO and APOLLO-Mini: hand-checked steps, parity with a plain re-implementation of the official step
(seeds included), a full-rank update, one factor per tensor for Mini, the seeded projection, the limiter,
resume, bf16, meta."""

import io
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.apollo import APOLLO, APOLLOMini
from optsweep.optim.groups import state_bytes
from optsweep.optim.registry import build_optimizer, optimizer_factory, optimizer_options

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
    return torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(3000 + step))


def closure_for(model, optimizer, step):
    def closure():
        optimizer.zero_grad()
        ids = batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss
    return closure


def official_hidden(model):
    return [m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and ("attn" in name or "mlp" in name)]


def gaussian(rows, cols, seed, rank):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) / math.sqrt(rank)


def chained(seed):
    """The seed after one refresh: the 15th int64 of a CPU generator seeded with the current one."""
    return torch.randint(0, 2**63 - 1, (15,), generator=torch.Generator().manual_seed(seed))[-1].item()


def reference_apollo(model, steps, lr, rank, gap, scale_type, scale, scale_front, weight_decay,
                     betas=(0.9, 0.999), eps=1e-6):
    """APOLLO's step as the paper and the official scripts define it, plainly, in fp32.

    Seeds: the official scripts' param groups are [other params, hidden matrices] and parameter i (1-based,
    in that order) starts from seed i."""
    hidden = official_hidden(model)
    hidden_ids = {id(p) for p in hidden}
    order = [p for p in model.parameters() if id(p) not in hidden_ids] + hidden
    beta1, beta2 = betas
    states = {id(p): {"step": 0, "seed": i + 1} for i, p in enumerate(order)}
    history = []
    for t in range(steps):
        model.zero_grad()
        ids = batch(t)
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                s = states[id(p)]
                g = p.grad
                if id(p) in hidden_ids:
                    m, n = g.shape
                    right = m >= n
                    if s["step"] % gap == 0:
                        s["P"] = gaussian(rank, n, s["seed"], rank) if right else gaussian(m, rank, s["seed"], rank)
                        s["seed"] = chained(s["seed"])
                    g = g @ s["P"].T if right else s["P"].T @ g
                if "m" not in s:
                    s["m"], s["v"] = torch.zeros_like(g), torch.zeros_like(g)
                s["step"] += 1
                s["m"].mul_(beta1).add_(g, alpha=1 - beta1)
                s["v"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                n_dir = s["m"] / (s["v"].sqrt() + eps)
                step_size = lr * math.sqrt(1 - beta2 ** s["step"]) / (1 - beta1 ** s["step"])
                if id(p) in hidden_ids:
                    if scale_type == "channel":
                        dim = 1 if right else 0
                        factor = n_dir.norm(dim=dim, keepdim=True) / (g.norm(dim=dim, keepdim=True) + 1e-8)
                    else:
                        factor = n_dir.norm() / (g.norm() + 1e-8)
                    update = p.grad * factor
                    if scale_front:
                        update = update * math.sqrt(scale)
                    if "prev" in s:
                        norm = update.norm()
                        limiter = max(norm / (s["prev"] + 1e-8), 1.01) / 1.01
                        update = update / limiter
                        s["prev"] = norm / limiter
                    else:
                        s["prev"] = update.norm()
                    if not scale_front:
                        update = update * math.sqrt(scale)
                    n_dir = update
                p.add_(n_dir, alpha=-step_size)
                if weight_decay:
                    p.add_(p, alpha=-lr * weight_decay)
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def test_hand_checked_steps():
    # First step, eps ~ 0: N = sqrt(10) sign(R) elementwise and the step size is lr/sqrt(10), so
    # channel: row i moves by -lr * sqrt(r) / ||R_i|| * G_i (m >= n: one factor per row);
    # tensor:  the matrix moves by -lr * sqrt(scale) * sqrt(#R) / ||R|| * G.
    torch.manual_seed(1)
    g = torch.randn(6, 4)
    w = nn.Parameter(torch.zeros(6, 4))
    opt = APOLLO([{"params": [w], "role": "hidden"}], lr=0.1, rank=2, eps=1e-12)
    w.grad = g.clone()
    opt.step()
    r = g @ opt.state[w]["projector"].T
    torch.testing.assert_close(w.detach(), -0.1 * math.sqrt(2) / r.norm(dim=1, keepdim=True) * g,
                               atol=1e-6, rtol=1e-5)

    v = nn.Parameter(torch.zeros(4, 6))  # m < n: left projector, the same factor for the whole matrix
    mini = APOLLOMini([{"params": [v], "role": "hidden"}], lr=0.1, eps=1e-12)
    v.grad = g.T.clone()
    mini.step()
    assert mini.state[v]["projector"].shape == (4, 1) and mini.state[v]["exp_avg"].shape == (1, 6)
    r = mini.state[v]["projector"].T @ g.T
    torch.testing.assert_close(v.detach(), -0.1 * math.sqrt(128) * math.sqrt(6) / r.norm() * g.T,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls,kwargs", [
    (APOLLO, {"rank": 4, "scale_type": "channel", "scale": 1.0, "scale_front": False}),
    (APOLLO, {"rank": 4, "scale_type": "channel", "scale": 2.0, "scale_front": False}),
    (APOLLOMini, {"rank": 1, "scale_type": "tensor", "scale": 128.0, "scale_front": True}),
    (APOLLOMini, {"rank": 1, "scale_type": "tensor", "scale": 128.0, "scale_front": False}),
])
def test_parity_with_plain_official_step_across_refreshes(cls, kwargs):
    reference = reference_apollo(tiny_model(), steps=7, lr=0.01, gap=3, weight_decay=0.1, **kwargs)
    model = tiny_model()
    opt = cls.for_model(model, lr=0.01, update_proj_gap=3, weight_decay=0.1, **kwargs)
    for t in range(7):  # new random projections on steps 1, 4 and 7
        opt.step(closure_for(model, opt, t))
        worst = max((p - r).abs().max().item() for p, r in zip(model.parameters(), reference[t]))
        assert worst <= 1e-6, f"step {t + 1}: max |diff| {worst:.2e}"


def test_update_is_full_rank_and_mini_scales_per_tensor():
    torch.manual_seed(2)
    g = torch.randn(12, 8)
    w = nn.Parameter(torch.zeros(12, 8))
    opt = APOLLO([{"params": [w], "role": "hidden"}], lr=0.01, rank=2)
    w.grad = g.clone()
    opt.step()
    assert torch.linalg.matrix_rank(w.detach()).item() == 8  # not 2: the raw gradient, rescaled per row
    ratio = w.detach() / g
    assert ratio.std(dim=1).max() < 1e-6 * ratio.abs().max() and ratio.std() > 1e-3 * ratio.abs().max()

    v = nn.Parameter(torch.zeros(12, 8))
    mini = APOLLOMini([{"params": [v], "role": "hidden"}], lr=0.01)
    v.grad = g.clone()
    mini.step()
    ratio = v.detach() / g
    assert ratio.std() < 1e-6 * ratio.abs().max()  # one number for the whole tensor
    assert torch.linalg.matrix_rank(v.detach()).item() == 8

    # a wide matrix (m < n): left projector, one factor per column; a later step (nonzero moments, the limiter
    # active) is still the raw gradient rescaled, so still full rank
    u = nn.Parameter(torch.zeros(8, 12))
    wide = APOLLO([{"params": [u], "role": "hidden"}], lr=0.01, rank=2)
    for grad in (g.T, torch.randn(8, 12)):
        before = u.detach().clone()
        u.grad = grad.clone()
        wide.step()
        delta = u.detach() - before
        ratio = delta / grad
        assert ratio.std(dim=0).max() < 1e-5 * ratio.abs().max() and ratio.std() > 1e-3 * ratio.abs().max()
        assert torch.linalg.matrix_rank(delta).item() == 8


def test_projection_drawn_on_the_gradients_device(monkeypatch):
    # official ``stable_randn``: torch.Generator(device=<the gradient's device>).manual_seed(seed), so a CUDA run
    # draws its matrices from a CUDA generator; the seed chain (next_seed) always uses a CPU generator
    devices = []
    real = torch.Generator

    def spy(*args, **kwargs):
        devices.append(kwargs.get("device", args[0] if args else None))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "Generator", spy)
    w = nn.Parameter(torch.zeros(6, 4))
    opt = APOLLO([{"params": [w], "role": "hidden"}], rank=2)
    w.grad = torch.randn(6, 4, generator=real().manual_seed(0))
    opt.step()
    assert [torch.device(d) if d is not None else None for d in devices] == [w.grad.device, None]


def test_seeded_gaussian_projection():
    model = tiny_model()
    opt = APOLLO.for_model(model, lr=0.01, rank=4, update_proj_gap=3)
    hidden = official_hidden(model)
    assert [g["role"] for g in opt.param_groups][-1] == "hidden" and opt.param_groups[-1]["params"] == hidden
    first_index = sum(1 for _ in model.parameters()) - len(hidden) + 1
    up = model.model.layers[0].mlp.up_proj.weight  # the 6th hidden matrix (q k v o gate up), 64 x 32: right
    index = first_index + 5
    opt.step(closure_for(model, opt, 0))
    assert torch.equal(opt.state[up]["projector"], gaussian(4, 32, index, 4))
    assert opt.state[up]["seed"] == chained(index)
    for t in range(1, 4):
        opt.step(closure_for(model, opt, t))
    assert torch.equal(opt.state[up]["projector"], gaussian(4, 32, chained(index), 4))  # redrawn on step 4
    # another optimizer (another rank, a restart) draws the same matrices
    twin = tiny_model()
    twin_opt = APOLLO.for_model(twin, lr=0.01, rank=4, update_proj_gap=3)
    twin_opt.step(closure_for(twin, twin_opt, 0))
    assert torch.equal(twin_opt.state[twin.model.layers[0].mlp.up_proj.weight]["projector"],
                       gaussian(4, 32, index, 4))
    # N(0, 1/r) entries (32768 of them: the variance within 5% is a 6-sigma band)
    big = nn.Parameter(torch.zeros(512, 1024))
    wide = APOLLO([{"params": [big], "role": "hidden"}], rank=64)
    big.grad = torch.randn(512, 1024)
    wide.step()
    p = wide.state[big]["projector"]
    assert p.shape == (512, 64)
    assert abs(p.mean().item()) < 0.005 and p.var().item() == pytest.approx(1 / 64, rel=0.05)


def test_norm_growth_limiter_caps_growth_at_1_01():
    # A second gradient almost orthogonal to the projector's rows has a tiny projection R but a full-size G:
    # the scaling ||N|| / ||R|| explodes and the update would grow ~10x.
    torch.manual_seed(3)
    g1 = torch.randn(8, 6)

    def two_steps(cls, rank, limit):
        w = nn.Parameter(torch.zeros(8, 6))
        opt = cls([{"params": [w], "role": "hidden"}], lr=0.01, rank=rank, norm_growth_limit=limit)
        w.grad = g1.clone()
        opt.step()
        first = opt.state[w]["limiter_norm"].item()
        basis, _ = torch.linalg.qr(opt.state[w]["projector"].T)
        noise = torch.randn(8, 6, generator=torch.Generator().manual_seed(4))
        w.grad = noise - (noise @ basis) @ basis.T + 0.05 * noise
        opt.step()
        return first, opt.state[w]["limiter_norm"].item()

    for cls, rank in ((APOLLO, 2), (APOLLOMini, 1)):
        first, second = two_steps(cls, rank, 1.01)
        assert second == pytest.approx(1.01 * first, rel=1e-6)
        free_first, free_second = two_steps(cls, rank, 1e9)  # a limit never reached
        assert free_first == pytest.approx(first, rel=1e-6) and free_second > 5 * free_first


@pytest.mark.parametrize("cls", [APOLLO, APOLLOMini])
def test_weights_only_round_trip_and_exact_resume_across_refresh(cls):
    def make(model):
        return cls.for_model(model, lr=0.01, update_proj_gap=3)
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
    for t in range(2, 7):  # the restarted run redraws the same projections on steps 4 and 7
        opt_c.step(closure_for(model_c, opt_c, t))
    assert all(torch.equal(a, c) for a, c in zip(model_a.parameters(), model_c.parameters()))


@pytest.mark.parametrize("cls", [APOLLO, APOLLOMini])
def test_bf16_state_and_closure(cls):
    model = tiny_model(dtype=torch.bfloat16)
    opt = cls.for_model(model, lr=0.01, update_proj_gap=2)
    losses = [opt.step(closure_for(model, opt, t)).item() for t in range(5)]
    assert all(math.isfinite(x) for x in losses)
    dtypes = {v.dtype for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    assert dtypes == {torch.bfloat16}


@pytest.mark.parametrize("cls,rank", [(APOLLO, 4), (APOLLOMini, 1)])
def test_meta_device_step(cls, rank):
    model = build_llama(SPEC, device="meta")
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt = cls.for_model(model, rank=rank)
    opt.step()
    opt.step()
    hidden = opt.param_groups[-1]["params"]
    elements = sum(rank * min(p.shape) + 2 * rank * max(p.shape) + 1 for p in hidden)
    elements += sum(2 * p.numel() for g in opt.param_groups[:-1] for p in g["params"])
    assert state_bytes(opt) == 4 * elements
    assert all(v.device.type == "meta" for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def test_config_registry_and_presets():
    model = tiny_model()
    mini = build_optimizer(model, "apollo_mini")
    group = mini.param_groups[-1]
    assert isinstance(mini, APOLLOMini)
    assert (group["rank"], group["scale_type"], group["scale"], group["lr"]) == (1, "tensor", 128.0, 0.01)
    apollo = optimizer_factory(OmegaConf.load("conf/optimizer/apollo.yaml"))(model)
    assert type(apollo) is APOLLO and apollo.param_groups[-1]["scale_type"] == "channel"
    assert isinstance(optimizer_factory(OmegaConf.load("conf/optimizer/apollo_mini.yaml"))(model), APOLLOMini)
    with pytest.raises(ValueError, match="scale_type"):
        APOLLO(model.parameters(), scale_type="row")

    sizes = ("60m", "130m", "350m", "1b", "7b")
    got = {}
    for name in ("apollo", "apollo_mini"):
        for size in sizes:
            o = OmegaConf.load(f"conf/paper/hparams/{name}_llama_{size}.yaml").optimizer
            assert set(o) <= optimizer_options(name) and o.lr == 0.01 and o.update_proj_gap == 200
            got[name, size] = (o.rank, o.scale_type, o.scale, o.scale_front)
    assert [got["apollo", s] for s in sizes] == [(128, "channel", 1.0, False), (192, "channel", 1.0, False),
                                                 (256, "channel", 1.0, False), (256, "channel", 1.0, False),
                                                 (256, "channel", 1.0, False)]
    assert [got["apollo_mini", s] for s in sizes] == [(1, "tensor", 128.0, True), (1, "tensor", 192.0, True),
                                                      (1, "tensor", 128.0, False), (1, "tensor", 128.0, False),
                                                      (1, "tensor", 128.0, False)]
