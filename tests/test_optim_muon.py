"""Muon: a hand-checked step, bit parity with torch.optim.Muon, parity with Keller Jordan's definition written
plainly here, near-orthogonal updates, checkpoint round trip, bf16, meta device and FSDP2."""

from __future__ import annotations

import copy
import io
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.muon import Muon, muon_step
from optsweep.optim.newton_schulz import orthogonalize
from optsweep.optim.registry import UnknownOptionError, build_optimizer

SPEC = ModelSpec(name="t", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=97)
A, B, C = 3.4445, -4.7750, 2.0315


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The shared 2-core machine makes OpenMP threads spin against each other on tiny matmuls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(dtype=torch.float32):
    torch.manual_seed(0)
    return build_llama(SPEC).to(dtype)


def batch(step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, SPEC.vocab_size, (4, 16), generator=gen)


def backward(model, step: int) -> float:
    x = batch(step)
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return loss.item()


def hidden_names(model):
    return [n for n, p in model.named_parameters() if p.ndim == 2 and ("self_attn" in n or "mlp" in n)]


# ---------------------------------------------------------------------------------------------------------
def test_hand_checked_first_step():
    """G = 3 [e1 e2] (4 x 2): both singular values equal, so the Newton-Schulz output is s [e1 e2] where s is
    the scalar quintic iteration applied five times to 3 / ||G||_F = 1/sqrt(2)."""
    s = 1 / math.sqrt(2)
    for _ in range(5):
        s = A * s + B * s**3 + C * s**5
    w = torch.nn.Parameter(torch.zeros(4, 2))
    v = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Muon([{"params": [w], "role": "hidden"}, {"params": [v], "role": "vector", "lr": 0.5}],
               lr=0.1, ns_dtype="float32")
    w.grad = torch.zeros(4, 2)
    w.grad[0, 0] = w.grad[1, 1] = 3.0
    v.grad = torch.tensor([0.25, -4.0])
    opt.step()
    expected = torch.zeros(4, 2)
    expected[0, 0] = expected[1, 1] = -0.1 * math.sqrt(4 / 2) * s  # "original": sqrt(max(1, rows/cols))
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-7)
    # Momentum buffer after one step: (1 - 0.95) g.
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], 0.05 * w.grad)
    # AdamW's first step is lr * g / (|g| + eps): sign(g) to 1e-10.
    torch.testing.assert_close(v.detach(), torch.tensor([1.0 - 0.5, -2.0 + 0.5]), rtol=0, atol=1e-7)


def test_match_rms_adamw_scale():
    w = torch.nn.Parameter(torch.zeros(4, 2))
    opt = Muon([w], lr=0.1, adjust_lr="match_rms_adamw", ns_dtype="float32")
    w.grad = torch.zeros(4, 2)
    w.grad[0, 0] = w.grad[1, 1] = 3.0
    opt.step()
    s = 1 / math.sqrt(2)
    for _ in range(5):
        s = A * s + B * s**3 + C * s**5
    assert w[0, 0].item() == pytest.approx(-0.1 * 0.2 * math.sqrt(4) * s, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw"])
def test_bit_parity_with_torch_muon_on_hidden_matrices(adjust_lr):
    ours_model, ref_model = tiny_model(), tiny_model()
    names = hidden_names(ours_model)
    ours_params = [dict(ours_model.named_parameters())[n] for n in names]
    ref_params = [dict(ref_model.named_parameters())[n] for n in names]
    ours = Muon([{"params": ours_params, "role": "hidden"}], lr=0.02, weight_decay=0.1, adjust_lr=adjust_lr)
    ref = torch.optim.Muon(ref_params, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True,
                           adjust_lr_fn=adjust_lr)
    for step in range(4):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            backward(model, step)
            opt.step()
            opt.zero_grad()
    start = dict(tiny_model().named_parameters())
    for name, p, q in zip(names, ours_params, ref_params):
        assert torch.equal(p, q), name
        assert not torch.equal(p, start[name]), name


# ---------------------------------------------------------------------------------------------------------
def keller_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """github KellerJordan/Muon zeropower_via_newtonschulz5, in float32.

    One deliberate change: X / max(||X||, eps) (torch.optim.Muon's, and the project's) instead of Keller
    Jordan's X / (||X|| + eps). On this tiny model the q/k gradients have norms ~1e-3, so his +1e-7 shifts the
    input by 1e-4 relative, which the quintic (slope ~500 near 0) turns into ~2e-5 differences in weights.
    """
    x = g.float()
    if g.size(-2) > g.size(-1):
        x = x.mT
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        a = x @ x.mT
        b = B * a + C * a @ a
        x = A * x + b @ x
    if g.size(-2) > g.size(-1):
        x = x.mT
    return x


class PlainMuonWithAuxAdam:
    """Keller Jordan's SingleDeviceMuonWithAuxAdam semantics, written plainly: Muon on hidden, Adam(W) on the
    rest (Adam's moments by lerp, eps added to sqrt(v_hat), decoupled weight decay at each group's lr)."""

    def __init__(self, model, lr, adam_lr, wd):
        self.hidden = set(hidden_names(model))
        self.params = dict(model.named_parameters())
        self.lr, self.adam_lr, self.wd = lr, adam_lr, wd
        self.state = {}

    def step(self):
        for name, p in self.params.items():
            g = p.grad
            st = self.state.setdefault(name, {})
            if name in self.hidden:
                buf = st.setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(g, 1 - 0.95)
                update = g.lerp(buf, 0.95)
                update = keller_newton_schulz(update)
                update = update * max(1, g.size(-2) / g.size(-1)) ** 0.5
                p.data.mul_(1 - self.lr * self.wd).add_(update, alpha=-self.lr)
            else:
                if not st:
                    st.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p), step=0)
                st["step"] += 1
                st["exp_avg"].lerp_(g, 1 - 0.9)
                st["exp_avg_sq"].lerp_(g.square(), 1 - 0.95)
                m_hat = st["exp_avg"] / (1 - 0.9 ** st["step"])
                v_hat = st["exp_avg_sq"] / (1 - 0.95 ** st["step"])
                p.data.mul_(1 - self.adam_lr * self.wd)
                p.data.add_(m_hat / (v_hat.sqrt() + 1e-10), alpha=-self.adam_lr)


@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw"])
def test_the_optimizer_steps_each_hidden_matrix_as_muon_step(adjust_lr):
    """Three steps of Muon equal muon_step (the algorithm as written at the top of muon.py) on each hidden
    matrix, bit for bit: the class adds only the parameter split and sharding."""
    model = tiny_model()
    names = hidden_names(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    buffers = {n: torch.zeros_like(p) for n, p in params.items()}
    opt = Muon.for_model(model, lr=0.02, weight_decay=0.1, adjust_lr=adjust_lr)
    for step in range(3):
        opt.zero_grad()
        backward(model, step)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if n in names}
        opt.step()
        for n in names:
            muon_step(params[n], grads[n], buffers[n], lr=0.02, weight_decay=0.1, adjust_lr=adjust_lr)
    for n, p in model.named_parameters():
        if n in names:
            assert torch.equal(p, params[n]), n


def test_parity_with_keller_jordan_definition_fp32():
    ours_model, ref_model = tiny_model(), tiny_model()
    ours = build_optimizer(ours_model, "muon", lr=0.02, adam_lr=3e-3, weight_decay=0.01, ns_dtype="float32")
    ref = PlainMuonWithAuxAdam(ref_model, lr=0.02, adam_lr=3e-3, wd=0.01)
    start = {n: p.detach().clone() for n, p in ours_model.named_parameters()}
    for step in range(5):
        backward(ours_model, step)
        backward(ref_model, step)
        ours.step()
        ref.step()
        ours.zero_grad()
        ref_model.zero_grad()
    worst = 0.0
    for (n, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        assert not torch.equal(p, start[n]), n
        worst = max(worst, (p - q).abs().max().item())
    assert worst < 1e-6, worst  # measured 1.2e-7 (AdamW's lerp vs mul+addcmul rounding)


# ---------------------------------------------------------------------------------------------------------
def test_orthogonalize_singular_value_band():
    """Muon's quintic iteration does not converge to 1: measured band [0.678, 1.14] on Gaussian matrices."""
    torch.manual_seed(0)
    for shape in [(64, 32), (32, 64), (128, 48)]:
        g = torch.randn(*shape)
        sv = torch.linalg.svdvals(orthogonalize(g).float())
        assert sv.min() > 0.6 and sv.max() < 1.2, (shape, sv.min(), sv.max())
        assert orthogonalize(g).dtype == g.dtype
        sv_fp32 = torch.linalg.svdvals(orthogonalize(g, dtype=torch.float32))
        assert sv_fp32.min() > 0.6 and sv_fp32.max() < 1.2


def test_applied_update_is_near_orthogonal():
    model = tiny_model()
    opt = build_optimizer(model, "muon", lr=0.02)
    name = "model.layers.0.mlp.gate_proj.weight"  # 64 x 32
    p = dict(model.named_parameters())[name]
    before = p.detach().clone()
    backward(model, 0)
    opt.step()
    delta = (before - p.detach()) / (0.02 * math.sqrt(64 / 32))
    sv = torch.linalg.svdvals(delta)
    # The gradient's singular values spread over a factor ~24 (measured); the update's lie in [0.68, 1.14].
    grad_sv = torch.linalg.svdvals(p.grad)
    assert grad_sv.max() / grad_sv.min() > 10
    assert sv.min() > 0.6 and sv.max() < 1.2, sv


# ---------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_weights_only_and_exact_resume():
    model = tiny_model()
    opt = build_optimizer(model, "muon", lr=0.02, adam_lr=1e-3)
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
    resumed_opt = build_optimizer(resumed, "muon", lr=0.02, adam_lr=1e-3)
    resumed_opt.load_state_dict(saved["opt"])
    for step in range(3, 6):
        for m, o in ((model, opt), (resumed, resumed_opt)):
            backward(m, step)
            o.step()
            o.zero_grad()
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bf16_run_keeps_bf16_state():
    model = tiny_model(torch.bfloat16)
    opt = build_optimizer(model, "muon", lr=1e-3, adjust_lr="match_rms_adamw")
    losses = []
    for step in range(6):
        losses.append(backward(model, step % 2))
        opt.step()
        opt.zero_grad()
    for p in model.parameters():
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all()
        for value in opt.state[p].values():
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.bfloat16
    assert losses[-2] < losses[0]


def test_meta_device_step_measures_state():
    model = build_llama(SPEC, device="meta")
    opt = build_optimizer(model, "muon")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    hidden = set(hidden_names(model))
    for name, p in model.named_parameters():
        keys = set(opt.state[p])
        assert keys == ({"momentum_buffer"} if name in hidden else {"step", "exp_avg", "exp_avg_sq"}), name
        assert all(v.is_meta for v in opt.state[p].values() if isinstance(v, torch.Tensor))


def test_for_model_groups_and_lr_routing():
    model = tiny_model()
    opt = build_optimizer(model, "muon", lr=0.02, adam_lr=3e-4)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"hidden": 0.02, "embedding": 3e-4, "output": 3e-4, "vector": 3e-4}
    with pytest.raises(UnknownOptionError):
        build_optimizer(model, "muon", adam_lrr=1.0)
    # Plain param groups without a role: 2-D tensors go to Muon, 1-D to AdamW.
    plain = Muon(model.parameters(), lr=0.02)
    backward(model, 0)
    plain.step()
    assert "momentum_buffer" in plain.state[model.model.layers[0].mlp.up_proj.weight]
    assert "exp_avg" in plain.state[model.model.norm.weight]


def test_closure_is_evaluated_and_returned():
    model = tiny_model()
    opt = build_optimizer(model, "muon")

    def closure():
        opt.zero_grad()
        x = batch(0)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad


# ---------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank, world, port, name, options, out):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        reference = tiny_model()
        sharded = copy.deepcopy(reference)
        mesh = init_device_mesh("cpu", (world,))
        for layer in sharded.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        ref_opt = build_optimizer(reference, name, **options)
        opt = build_optimizer(sharded, name, **options)
        for step in range(3):  # every rank sees the same batch, so the averaged gradient is the full one
            for m, o in ((sharded, opt), (reference, ref_opt)):
                backward(m, step)
                o.step()
                o.zero_grad()
        worst = max((p.full_tensor() - q).abs().max().item()
                    for p, q in zip(sharded.parameters(), reference.parameters()))
        if rank == 0:
            torch.save(torch.tensor(worst), out)
        # Both ranks leave together: a rank tearing gloo down while its peer still holds the connection
        # can abort the peer ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_fsdp2(tmp_path, name, options) -> float:
    out = str(tmp_path / "worst.pt")
    # fork: the children inherit the imported modules instead of importing transformers again (~20 s here).
    mp.start_processes(_fsdp_worker, args=(2, _free_port(), name, options, out), nprocs=2, join=True,
                       start_method="fork")
    return torch.load(out).item()


@pytest.mark.slow
def test_fsdp2_sharded_step_matches_unsharded(tmp_path):
    # vocab 97 shards the embedding and lm_head unevenly (49 + 48 rows).
    worst = run_fsdp2(tmp_path, "muon", {"lr": 0.02, "adam_lr": 3e-3, "ns_dtype": "float32"})
    assert worst < 1e-6, worst
