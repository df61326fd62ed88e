"""GaLore: a hand-checked step, parity with a plain re-implementation of the official step, its defining
properties (moment shapes, update in the projector's span, refresh steps), SVD failure, resume, bf16, meta."""

import io
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from optsweep.models.llama import ModelSpec, build_llama, count_parameters
from optsweep.optim.galore import GaLore
from optsweep.optim.groups import state_bytes
from optsweep.optim.registry import optimizer_factory, optimizer_options

SPEC = ModelSpec(name="t", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=97)
SIZES = ("60m", "130m", "350m", "1b")


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
    return torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(1000 + step))


def closure_for(model, optimizer, step):
    def closure():
        optimizer.zero_grad()
        ids = batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss
    return closure


def official_hidden(model):
    """The official scripts' rule: weights of nn.Linear modules whose name contains "attn" or "mlp"."""
    return {id(m.weight) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and ("attn" in name or "mlp" in name)}


def reference_galore(model, steps, lr, rank, gap, scale, weight_decay, betas=(0.9, 0.999), eps=1e-6):
    """GaLore's AdamW step as the official code writes it, plainly, in fp32; returns params after each step."""
    hidden = official_hidden(model)
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
                    n = (n @ s["P"] if right else s["P"] @ n) * scale
                p.add_(n, alpha=-step_size)
                if weight_decay:
                    p.add_(p, alpha=-lr * weight_decay)
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def test_hand_checked_step():
    # G = [[2,0],[0,1],[1,0]]: top right singular vector e1, R = +-(2, 0, 1)^T. First Adam step with eps ~ 0:
    # N = +-sqrt(10) where R != 0, 0 elsewhere; step size lr sqrt(1-0.999)/(1-0.9) = lr/sqrt(10), so the
    # update is -lr * scale * [[1,0],[0,0],[1,0]]; the residual direction (row 2) is lost, as GaLore does.
    w = nn.Parameter(torch.zeros(3, 2))
    b = nn.Parameter(torch.zeros(3))
    opt = GaLore([{"params": [w], "role": "hidden"}, {"params": [b], "role": "vector"}],
                 lr=0.1, rank=1, scale=0.25, eps=1e-12)
    w.grad = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    b.grad = torch.tensor([1.0, -2.0, 1e-6])
    opt.step()
    torch.testing.assert_close(w.detach(), -0.1 * 0.25 * torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]),
                               atol=1e-7, rtol=0)
    # the other parameters: the official AdamW, first step -lr*sign(g) ...
    torch.testing.assert_close(b.detach()[:2], torch.tensor([-0.1, 0.1]), atol=1e-7, rtol=0)
    # ... and eps on the *uncorrected* sqrt(v): with eps=1e-6 and g=1e-6 the step is lr*c/(1+c), c=sqrt(1e-3)
    # (torch.optim.AdamW would move lr/2)
    b2 = nn.Parameter(torch.zeros(1))
    opt2 = GaLore([{"params": [b2], "role": "vector"}], lr=0.1)
    b2.grad = torch.tensor([1e-6])
    opt2.step()
    c = math.sqrt(1e-3)
    assert b2.item() == pytest.approx(-0.1 * c / (1 + c), rel=1e-5)


def test_parity_with_plain_official_step_across_refreshes():
    kwargs = {"lr": 0.01, "rank": 4, "update_proj_gap": 3, "scale": 0.25, "weight_decay": 0.1}
    reference = reference_galore(tiny_model(), steps=7, lr=0.01, rank=4, gap=3, scale=0.25, weight_decay=0.1)
    model = tiny_model()
    opt = GaLore.for_model(model, **kwargs)
    for t in range(7):  # refreshes on steps 1, 4 and 7
        opt.step(closure_for(model, opt, t))
        worst = max((p - r).abs().max().item() for p, r in zip(model.parameters(), reference[t]))
        assert worst <= 1e-6, f"step {t + 1}: max |diff| {worst:.2e}"
    assert any((p - r0).abs().max() > 1e-3 for p, r0 in zip(model.parameters(), tiny_model().parameters()))


def test_moment_shapes_span_and_refresh_steps():
    model = tiny_model()
    opt = GaLore.for_model(model, lr=0.01, rank=4, update_proj_gap=3)
    layer = model.model.layers[0]
    gate, down, q = layer.mlp.gate_proj.weight, layer.mlp.down_proj.weight, layer.self_attn.q_proj.weight
    projectors = []
    for t in range(7):
        before = down.detach().clone(), gate.detach().clone()
        opt.step(closure_for(model, opt, t))
        projectors.append(opt.state[gate]["projector"].clone())
        # the update lies in the projector's span: left projector for down (32x64), right for gate (64x32)
        a, bmat = opt.state[down]["projector"], opt.state[gate]["projector"]
        delta_down, delta_gate = down.detach() - before[0], gate.detach() - before[1]
        assert (delta_down - a @ (a.T @ delta_down)).abs().max() < 1e-7
        assert (delta_gate - (delta_gate @ bmat.T) @ bmat).abs().max() < 1e-7
        assert delta_gate.abs().max() > 1e-4
    changed = [not torch.equal(projectors[t], projectors[t - 1]) for t in range(1, 7)]
    assert changed == [False, False, True, False, False, True]  # new SVD on steps 4 and 7 only
    # moments: r x max(m, n), oriented as the projected gradient; projector r x min(m, n)
    assert opt.state[gate]["exp_avg"].shape == (64, 4) and opt.state[gate]["projector"].shape == (4, 32)
    assert opt.state[down]["exp_avg_sq"].shape == (4, 64) and opt.state[down]["projector"].shape == (32, 4)
    assert opt.state[q]["exp_avg"].shape == (32, 4)
    # orthonormal projector, everything else plain Adam shaped like the parameter
    torch.testing.assert_close(bmat @ bmat.T, torch.eye(4), atol=1e-5, rtol=0)
    emb = model.model.embed_tokens.weight
    assert opt.state[emb]["exp_avg"].shape == emb.shape and "projector" not in opt.state[emb]


def test_svd_failure_keeps_previous_projector(monkeypatch):
    model = tiny_model()
    opt = GaLore.for_model(model, lr=0.01, rank=4, update_proj_gap=2)
    w = model.model.layers[1].mlp.up_proj.weight
    opt.step(closure_for(model, opt, 0))
    opt.step(closure_for(model, opt, 1))
    kept = opt.state[w]["projector"].clone()

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: the algorithm failed to converge")
    monkeypatch.setattr(torch.linalg, "svd", fail)
    with pytest.warns(RuntimeWarning, match="keeping the previous projector"):
        opt.step(closure_for(model, opt, 2))  # step 3: a refresh is due
    assert torch.equal(opt.state[w]["projector"], kept)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    monkeypatch.undo()
    opt.step(closure_for(model, opt, 3))
    opt.step(closure_for(model, opt, 4))  # step 5: refresh works again
    assert not torch.equal(opt.state[w]["projector"], kept)

    # failing on the very first refresh: coordinate axes until the next one
    p = nn.Parameter(torch.zeros(5, 3))
    fresh = GaLore([{"params": [p], "role": "hidden"}], rank=2)
    p.grad = torch.randn(5, 3)
    monkeypatch.setattr(torch.linalg, "svd", fail)
    with pytest.warns(RuntimeWarning, match="coordinate axes"):
        fresh.step()
    assert torch.equal(fresh.state[p]["projector"], torch.eye(2, 3))


def test_weights_only_round_trip_and_exact_resume_across_refresh():
    def make(model):
        return GaLore.for_model(model, lr=0.01, rank=4, update_proj_gap=3)
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
    for t in range(2, 7):  # crosses the refreshes of steps 4 and 7
        opt_c.step(closure_for(model_c, opt_c, t))
    assert all(torch.equal(a, c) for a, c in zip(model_a.parameters(), model_c.parameters()))


def test_bf16_state_and_closure():
    model = tiny_model(dtype=torch.bfloat16)
    start = [p.detach().clone() for p in model.parameters()]
    opt = GaLore.for_model(model, lr=0.01, rank=4, update_proj_gap=2)
    losses = [opt.step(closure_for(model, opt, t)).item() for t in range(5)]
    assert all(math.isfinite(x) for x in losses)
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.bfloat16
    assert all(not torch.equal(p, s) for p, s in zip(model.parameters(), start))


def expected_state_elements(model, rank):
    total = 0
    hidden = official_hidden(model)
    for p in model.parameters():
        if id(p) in hidden:
            m, n = p.shape
            k = min(rank, m, n)
            total += k * min(m, n) + 2 * k * max(m, n)
        else:
            total += 2 * p.numel()
    return total


def test_meta_device_step():
    model = build_llama(SPEC, device="meta")
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt = GaLore.for_model(model, rank=4)
    opt.step()
    assert all(v.device.type == "meta" for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    assert state_bytes(opt) == 4 * expected_state_elements(model, rank=4)


@pytest.mark.parametrize("size,rank,gigabytes", [("60m", 128, 0.28), ("130m", 256, 0.61), ("1b", 512, 4.76)])
def test_paper_memory_column(size, rank, gigabytes):
    spec = instantiate(OmegaConf.load(f"conf/model/llama_{size}.yaml"))
    model = build_llama(spec, device="meta").to(torch.bfloat16)
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt = GaLore.for_model(model, rank=rank)
    opt.step()
    assert round((2 * count_parameters(model) + state_bytes(opt)) / 1e9, 2) == gigabytes


def test_config_and_presets():
    model = tiny_model()
    opt = optimizer_factory(OmegaConf.load("conf/optimizer/galore.yaml"))(model)
    assert isinstance(opt, GaLore)
    hidden = next(g for g in opt.param_groups if g["role"] == "hidden")
    assert (hidden["lr"], hidden["rank"], hidden["update_proj_gap"], hidden["scale"]) == (0.01, 128, 200, 0.25)
    ranks = {}
    for size in SIZES:
        preset = OmegaConf.load(f"conf/paper/hparams/galore_llama_{size}.yaml")
        assert set(preset.optimizer) <= optimizer_options("galore")
        ranks[size] = preset.optimizer.rank
        assert preset.optimizer.lr == 0.01 and preset.optimizer.scale == 0.25
    assert ranks == {"60m": 128, "130m": 256, "350m": 256, "1b": 512}
