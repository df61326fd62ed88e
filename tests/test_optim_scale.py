"""SCALE: parity with a plain re-implementation, hand-checked numbers, the ablations, state and precision.

The reference below is written from the paper's description (one parameter at a time, textbook formulas)
and shares no code with optsweep.optim.scale.
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import pytest
import torch
import yaml

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim import build_optimizer
from optsweep.optim.groups import state_bytes
from optsweep.optim.registry import optimizer_options
from optsweep.optim.scale import SCALE, scale_matrix_step

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelSpec(name="t", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=97)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors gain nothing from threads, and OpenMP spinning on a shared machine costs 10-30x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    return build_llama(TINY).to(dtype)


def warmup_cosine(warmup: int = 4, total: int = 20, floor: float = 0.1):
    """The paper's schedule: linear warmup from 0, cosine down to floor x lr."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def loss_grads(model, step: int) -> None:
    """Real gradients of the tiny model on a batch that depends only on the step."""
    generator = torch.Generator().manual_seed(1000 + step)
    batch = torch.randint(0, TINY.vocab_size, (4, 12), generator=generator)
    model.zero_grad(set_to_none=True)
    model(input_ids=batch, labels=batch).loss.backward()


def random_grads(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)


class PlainSCALE:
    """SCALE one parameter at a time, from the paper's algorithm (no foreach, no fusing, no sharding)."""

    def __init__(self, named, lr, adam_lr, momentum=0.9, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = {name: p.detach().clone() for name, p in named}
        self.lr, self.adam_lr, self.momentum = lr, adam_lr, momentum
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.v = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.t = 0

    @staticmethod
    def rms(x, dim):
        return x.pow(2).mean(dim=dim, keepdim=True).sqrt().clamp_min(1e-8)

    def step(self, grads: dict, factor: float) -> None:
        self.t += 1
        for name, p in self.params.items():
            g = grads[name]
            if p.ndim == 1:
                lr = self.adam_lr * factor
                b1, b2 = self.betas
                self.m[name] = b1 * self.m[name] + (1 - b1) * g
                self.v[name] = b2 * self.v[name] + (1 - b2) * g * g
                # the authors' AdamW: eps on the raw sqrt(v), bias corrections in the step size
                correction = math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
                update = correction * self.m[name] / (self.v[name].sqrt() + self.eps)
            else:
                lr = self.lr * factor
                if name == "lm_head.weight":
                    self.m[name] = self.momentum * self.m[name] + (1 - self.momentum) * g
                    update = self.m[name] / self.rms(self.m[name], dim=1)
                elif "embed_tokens" in name:
                    update = g / self.rms(g, dim=0)
                else:
                    update = g / self.rms(g, dim=1)
            p.mul_(1 - lr * self.weight_decay)
            p.sub_(lr * update)


def max_difference(model, params: dict) -> float:
    return max((p.detach() - params[name]).abs().max().item() for name, p in model.named_parameters())


def test_matches_plain_per_parameter_implementation_over_20_scheduled_steps():
    model = tiny()
    reference = PlainSCALE(model.named_parameters(), lr=1e-2, adam_lr=2e-2, weight_decay=0.1)
    optimizer = SCALE.for_model(model, lr=1e-2, adam_lr=2e-2, weight_decay=0.1)
    schedule = warmup_cosine()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(20):
        loss_grads(model, step)
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        reference.step(grads, schedule(step))
        optimizer.step()
        scheduler.step()
    assert max_difference(model, start) > 5e-2  # the weights really moved
    assert max_difference(model, reference.params) <= 1e-6


def test_embedding_is_normalised_over_the_vocabulary_by_hand():
    weight = torch.zeros(3, 2)
    weight.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    SCALE([{"params": [weight], "role": "embedding"}], lr=0.1).step()
    # column 0: RMS over the 3 tokens = sqrt(25/3); column 1: sqrt(16/3)
    s = math.sqrt(3)
    expected = -0.1 * torch.tensor([[3 * s / 5, 0.0], [0.0, s], [4 * s / 5, 0.0]])
    torch.testing.assert_close(weight, expected, atol=1e-7, rtol=0)

    # the same gradient on a hidden Linear weight is normalised per output row instead
    hidden = torch.zeros(3, 2)
    hidden.grad = weight.grad
    SCALE([{"params": [hidden], "role": "hidden"}], lr=0.1).step()
    r = math.sqrt(2)
    torch.testing.assert_close(hidden, -0.1 * torch.tensor([[r, 0.0], [0.0, r], [r, 0.0]]), atol=1e-7, rtol=0)


def test_lm_head_momentum_after_two_steps_by_hand():
    weight = torch.zeros(2, 2)
    optimizer = SCALE([{"params": [weight], "role": "output"}], lr=0.1, momentum=0.9)
    weight.grad = torch.tensor([[1.0, 2.0], [0.0, -2.0]])
    optimizer.step()
    # m1 = 0.1 g1; row RMS: sqrt(0.025) and sqrt(0.02)
    m1 = [[0.1, 0.2], [0.0, -0.2]]
    torch.testing.assert_close(optimizer.state[weight]["momentum_buffer"], torch.tensor(m1))
    weight.grad = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    optimizer.step()
    m2 = [[0.39, 0.18], [0.1, -0.08]]  # 0.9 m1 + 0.1 g2
    torch.testing.assert_close(optimizer.state[weight]["momentum_buffer"], torch.tensor(m2))
    u1 = [[0.1 / math.sqrt(0.025), 0.2 / math.sqrt(0.025)], [0.0, -0.2 / math.sqrt(0.02)]]
    rms0, rms1 = math.sqrt((0.39**2 + 0.18**2) / 2), math.sqrt((0.1**2 + 0.08**2) / 2)
    u2 = [[0.39 / rms0, 0.18 / rms0], [0.1 / rms1, -0.08 / rms1]]
    expected = -0.1 * (torch.tensor(u1) + torch.tensor(u2))
    torch.testing.assert_close(weight, expected, atol=1e-6, rtol=0)


def test_vector_weights_follow_the_authors_adamw_at_adam_lr_and_the_schedule():
    """1-D weights: AdamW at adam_lr x schedule, eps added to sqrt(v) before the bias correction (as in
    scale_optimizer.py); with eps = 0 both AdamW forms agree, so it is torch's AdamW there."""
    model = tiny()
    vectors = [p for p in model.parameters() if p.ndim == 1]
    start = [p.detach().clone() for p in vectors]
    hand = [p.detach().clone() for p in vectors]
    m, v = [torch.zeros_like(p) for p in hand], [torch.zeros_like(p) for p in hand]
    eps, wd, (b1, b2) = 1e-6, 0.1, (0.8, 0.99)
    schedule = warmup_cosine(2, 8)
    optimizer = SCALE.for_model(model, lr=1e-3, adam_lr=2e-2, weight_decay=wd, adam_betas=(b1, b2), adam_eps=eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for step in range(8):
        loss_grads(model, step)
        lr = 2e-2 * schedule(step)
        for i, p in enumerate(vectors):
            g = p.grad
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            t = step + 1
            hand[i] = hand[i] * (1 - lr * wd) - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m[i] / (v[i].sqrt() + eps)
        optimizer.step()
        scheduler.step()
    for p, h, p0 in zip(vectors, hand, start):
        assert (p - p0).abs().max() > 1e-3  # moved
        torch.testing.assert_close(p, h, atol=3e-7, rtol=0)  # weights ~1: fp32 spacing 1.2e-7, another order
        assert optimizer.state[p]["step"] == 8

    # eps = 0: exactly torch.optim.AdamW at adam_lr, scheduled
    model = tiny()
    vectors = [p for p in model.parameters() if p.ndim == 1]
    copies = [p.detach().clone().requires_grad_() for p in vectors]
    optimizer = SCALE.for_model(model, lr=1e-3, adam_lr=2e-2, weight_decay=wd, adam_betas=(b1, b2), adam_eps=0.0)
    adamw = torch.optim.AdamW(copies, lr=2e-2, betas=(b1, b2), eps=0.0, weight_decay=wd, foreach=True)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine(2, 8)) for o in (optimizer, adamw)]
    for step in range(8):
        loss_grads(model, step)
        for p, c in zip(vectors, copies):
            c.grad = p.grad.clone()
        optimizer.step()
        adamw.step()
        for s in schedulers:
            s.step()
    for p, c in zip(vectors, copies):
        torch.testing.assert_close(p, c, atol=3e-7, rtol=0)  # same math, bias corrections applied elsewhere


def step_delta(model, lr: float = 1.0, **options) -> dict[str, torch.Tensor]:
    """(p_after - p_before) / -lr for one step from random gradients, by parameter name."""
    random_grads(model, seed=7)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    SCALE.for_model(model, lr=lr, adam_lr=lr, **options).step()
    return {n: (before[n] - p.detach()) / lr for n, p in model.named_parameters()}


def rms(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.pow(2).mean(dim=dim).sqrt()


def test_column_normalised_updates_have_unit_rms_per_output_unit():
    delta = step_delta(tiny())
    checked = 0
    for name, d in delta.items():
        if d.ndim < 2:
            continue
        per_unit = rms(d, dim=1 if "embed_tokens" not in name else 0)
        torch.testing.assert_close(per_unit, torch.ones_like(per_unit), atol=1e-5, rtol=0)
        checked += 1
    assert checked == 2 + 7 * TINY.num_hidden_layers  # embedding, lm_head, 7 Linear weights per layer


def test_row_normalisation_is_over_the_other_dim():
    delta = step_delta(tiny(), normalization="row", momentum_on="none")
    # hidden and lm_head: one scale per input unit (column of the weight, over dim 0); embedding: per token
    for name in ("model.layers.0.mlp.down_proj.weight", "lm_head.weight"):
        torch.testing.assert_close(rms(delta[name], 0), torch.ones(delta[name].shape[1]), atol=1e-5, rtol=0)
        assert not torch.allclose(rms(delta[name], 1), torch.ones(delta[name].shape[0]), atol=1e-2)
    emb = delta["model.embed_tokens.weight"]
    torch.testing.assert_close(rms(emb, 1), torch.ones(emb.shape[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("normalization", ["column", "row"])
def test_blocked_cpu_paths_match_the_formula_on_uneven_blocks(monkeypatch, normalization, dtype):
    import optsweep.optim.scale as scale_module

    monkeypatch.setattr(scale_module, "_CPU_BLOCK", 7 * 30)  # 7 rows per block: 100 rows end unevenly
    torch.manual_seed(3)
    weights = {role: torch.randn(100, 30).to(dtype) for role in ("hidden", "embedding", "output")}
    grads = [{role: torch.randn(100, 30).to(dtype) for role in weights} for _ in range(2)]
    start = {role: w.float().clone() for role, w in weights.items()}
    optimizer = SCALE([{"params": [w], "role": role} for role, w in weights.items()], lr=0.1,
                      normalization=normalization, momentum_on="all", momentum=0.5)
    momentum = {role: torch.zeros(100, 30) for role in weights}
    expected = dict(start)
    for step_grads in grads:
        for role, w in weights.items():
            w.grad = step_grads[role]
            momentum[role] = 0.5 * momentum[role] + 0.5 * step_grads[role].float()
            dim = 0 if (role == "embedding") == (normalization == "column") else 1
            expected[role] = expected[role] - 0.1 * momentum[role] / rms(momentum[role], dim).unsqueeze(dim)
        optimizer.step()
    # bf16: weights and momentum are rounded to 8 bits each step
    tolerance = {"atol": 1e-6, "rtol": 0} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    for role, w in weights.items():
        torch.testing.assert_close(w.float(), expected[role], **tolerance)


def test_sign_updates_move_every_entry_by_lr_or_not_at_all():
    model = tiny()
    random_grads(model)
    hidden = model.model.layers[0].self_attn.q_proj.weight
    hidden.grad[0, :5] = 0.0
    before = hidden.detach().clone()
    SCALE.for_model(model, lr=0.01, normalization="sign", momentum_on="none").step()
    step = hidden.detach() - before
    values = set(torch.round(step / 0.01).unique().tolist())
    assert values == {-1.0, 0.0, 1.0}
    torch.testing.assert_close(step, -0.01 * torch.sign(hidden.grad), atol=1e-8, rtol=0)


def test_newton_schulz_updates_are_near_orthogonal_and_rms_one():
    delta = step_delta(tiny(), normalization="newton_schulz", momentum_on="none")
    for name in ("model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight", "lm_head.weight"):
        d = delta[name]
        scale = math.sqrt(max(d.shape))
        singular = torch.linalg.svdvals(d / scale)
        assert singular.min() > 0.5 and singular.max() < 1.3, (name, singular)
        assert 0.6 < d.pow(2).mean().sqrt() < 1.2
    # the direction is the polar factor of the gradient (what exact orthogonalisation would give)
    model = tiny()
    random_grads(model, seed=7)
    g = model.model.layers[0].mlp.up_proj.weight.grad
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    d = delta["model.layers.0.mlp.up_proj.weight"]
    cosine = (d * polar).sum() / (d.norm() * polar.norm())
    assert cosine > 0.95


def test_none_is_plain_sgd_and_momentum_on_last_keeps_the_lm_head_ema():
    model = tiny()
    sgd_model = copy.deepcopy(model)
    random_grads(model)
    random_grads(sgd_model)
    SCALE.for_model(model, lr=0.1, adam_lr=0.0, normalization="none", momentum_on="none").step()
    matrices = [p for p in sgd_model.parameters() if p.ndim == 2]
    torch.optim.SGD(matrices, lr=0.1).step()
    for p, q in zip(model.parameters(), sgd_model.parameters()):
        if p.ndim == 2:
            torch.testing.assert_close(p, q, atol=0, rtol=0)

    model = tiny()
    random_grads(model)
    before = model.lm_head.weight.detach().clone()
    SCALE.for_model(model, lr=0.1, normalization="none", momentum_on="last", momentum=0.9).step()
    torch.testing.assert_close(model.lm_head.weight, before - 0.1 * 0.1 * model.lm_head.weight.grad)


@pytest.mark.parametrize("momentum_on, with_buffer", [
    ("last", {"lm_head.weight"}),
    ("none", set()),
    ("all", "every matrix"),
])
def test_momentum_on_decides_which_matrices_keep_a_buffer(momentum_on, with_buffer):
    model = tiny()
    random_grads(model)
    optimizer = SCALE.for_model(model, momentum_on=momentum_on)
    optimizer.step()
    names = {p: n for n, p in model.named_parameters()}
    buffered = {names[p] for p, s in optimizer.state.items() if "momentum_buffer" in s}
    if with_buffer == "every matrix":
        with_buffer = {n for n, p in model.named_parameters() if p.ndim == 2}
    assert buffered == with_buffer
    # momentum_on="all": every matrix's buffer is exactly (1 - beta) g after one step
    for p, s in optimizer.state.items():
        if "momentum_buffer" in s:
            torch.testing.assert_close(s["momentum_buffer"], 0.1 * p.grad)


def test_unknown_options_are_rejected_with_the_valid_ones():
    model = tiny()
    with pytest.raises(ValueError, match="column, row, sign, newton_schulz, none"):
        SCALE.for_model(model, normalization="columns")
    with pytest.raises(ValueError, match="last, none, all"):
        SCALE.for_model(model, momentum_on="first")
    with pytest.raises(ValueError, match="hidden, embedding, output, vector"):
        SCALE([{"params": [torch.zeros(2, 2)], "role": "attention"}])
    with pytest.raises(ValueError, match="role 'vector'"):
        SCALE([{"params": [torch.zeros(3)], "role": "hidden"}])
    with pytest.raises(Exception, match="no option betas"):  # the registry checks the signature
        build_optimizer(model, "scale", betas=(0.9, 0.99))


def test_state_is_the_lm_head_momentum_and_adamw_moments_only():
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        model = tiny(dtype=dtype)
        random_grads(model)
        optimizer = SCALE.for_model(model)
        optimizer.step()
        by_name = {n: optimizer.state[p] for n, p in model.named_parameters() if p in optimizer.state}
        vectors = [n for n, p in model.named_parameters() if p.ndim == 1]
        assert set(by_name) == {"lm_head.weight", *vectors}
        assert set(by_name["lm_head.weight"]) == {"momentum_buffer"}
        for name in vectors:
            assert set(by_name[name]) == {"step", "exp_avg", "exp_avg_sq"}
        vector_numel = sum(p.numel() for p in model.parameters() if p.ndim == 1)
        expected = (model.lm_head.weight.numel() + 2 * vector_numel) * size
        assert state_bytes(optimizer) == expected
        assert len(optimizer.state_dict()["state"]) == 1 + len(vectors)


def test_state_dict_loads_with_weights_only_and_resumes_exactly():
    def run(model, optimizer, scheduler, steps):
        for step in steps:
            loss_grads(model, step)
            optimizer.step()
            scheduler.step()

    def fresh(model):
        optimizer = SCALE.for_model(model, lr=1e-2, adam_lr=2e-2, weight_decay=0.1)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(3, 10))

    straight = tiny()
    run(straight, *fresh(straight), range(10))

    first = tiny()
    optimizer, scheduler = fresh(first)
    run(first, optimizer, scheduler, range(5))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = tiny(seed=123)
    resumed.load_state_dict(checkpoint["model"])
    optimizer, scheduler = fresh(resumed)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    run(resumed, optimizer, scheduler, range(5, 10))
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bf16_params_keep_bf16_state_and_lose_no_accuracy_in_the_update():
    model = tiny(dtype=torch.bfloat16)
    random_grads(model)
    weights = {1: model.model.layers[1].mlp.down_proj.weight, 0: model.model.embed_tokens.weight}
    before = {dim: w.detach().float() for dim, w in weights.items()}
    optimizer = SCALE.for_model(model, lr=1e-2)
    optimizer.step()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for state in optimizer.state.values():
        assert all(v.dtype == torch.bfloat16 for v in state.values() if isinstance(v, torch.Tensor))
    # the exact fp32 update rounded once into bf16: what a bf16-only computation would not reproduce
    for dim, weight in weights.items():  # per output row (hidden), per hidden unit over the vocabulary
        g = weight.grad.float()
        exact = before[dim] - 1e-2 * g / g.pow(2).mean(dim=dim, keepdim=True).sqrt()
        rounded = exact.bfloat16()
        assert (weight != rounded).float().mean().item() < 0.01
        ulp = (rounded.float().abs() * 2.0**-7).clamp_min(1e-30)
        assert ((weight.float() - rounded.float()).abs() <= ulp).all()


@pytest.mark.parametrize("normalization", ["column", "row", "sign", "newton_schulz", "none"])
def test_a_step_runs_on_the_meta_device(normalization):
    model = build_llama(TINY, device="meta")
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    optimizer = SCALE.for_model(model, normalization=normalization)
    optimizer.step()
    assert all(p.is_meta for p in model.parameters())
    vector_numel = sum(p.numel() for p in model.parameters() if p.ndim == 1)
    assert state_bytes(optimizer) == (model.lm_head.weight.numel() + 2 * vector_numel) * 4


def test_closure_and_plain_param_groups_without_roles():
    model = tiny()
    matrices = [p for p in model.parameters() if p.ndim == 2]
    vectors = [p for p in model.parameters() if p.ndim == 1]
    before = [p.detach().clone() for p in matrices]
    optimizer = SCALE([{"params": matrices + vectors}], lr=1e-2)  # roles inferred: hidden / vector

    def closure():
        random_grads(model)
        return torch.tensor(1.5)

    assert optimizer.step(closure).item() == 1.5
    assert all(set(optimizer.state[p]) == {"step", "exp_avg", "exp_avg_sq"} for p in vectors)
    assert not any(p in optimizer.state for p in matrices)  # role "hidden": stateless, the lm_head too
    for p, p0 in zip(matrices, before):  # every matrix, the embedding included, normalised per row
        per_row = rms((p0 - p.detach()) / 1e-2, dim=1)
        torch.testing.assert_close(per_row, torch.ones_like(per_row), atol=1e-4, rtol=0)


def test_for_model_gives_the_vector_group_adam_lr_and_yaml_lists_every_option():
    optimizer = build_optimizer(tiny(), "scale", lr=1e-3, adam_lr=2e-2)
    lrs = {g["role"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"hidden": 1e-3, "embedding": 1e-3, "output": 1e-3, "vector": 2e-2}
    assert {g["role"]: g["lr"] for g in SCALE.for_model(tiny(), lr=3e-3).param_groups}["vector"] == 3e-3

    config = yaml.safe_load((ROOT / "conf/optimizer/scale.yaml").read_text())
    options = optimizer_options("scale")
    assert set(config) - {"_target_", "_partial_", "name"} == options
    defaults = (config["lr"], config["adam_lr"], config["momentum"], config["weight_decay"])
    assert defaults == (1e-3, 2e-2, 0.9, 0.0)
    paper = {"60m": (1e-3, 2e-2), "130m": (1e-3, 2e-2), "350m": (1e-3, 2e-2), "1b": (2e-4, 1e-3),
             "7b": (1e-4, 1e-3)}
    for size, (lr, adam_lr) in paper.items():
        text = (ROOT / f"conf/paper/hparams/scale_llama_{size}.yaml").read_text()
        assert text.startswith("# @package _global_")
        values = yaml.safe_load(text)["optimizer"]
        assert (values["lr"], values["adam_lr"], values["momentum"]) == (lr, adam_lr, 0.9)


def _run_eager_and_compiled(steps: int = 3):
    start = torch.randn(16, 8)
    weights = [start.clone(), start.clone()]
    grads = [torch.randn(16, 8) for _ in range(steps)]
    eager = SCALE([{"params": [weights[0]], "role": "hidden"}], lr=0.1, compile=False)
    compiled = SCALE([{"params": [weights[1]], "role": "hidden"}], lr=0.1, compile=True)
    for i, g in enumerate(grads):
        for optimizer, w in ((eager, weights[0]), (compiled, weights[1])):
            w.grad = g.clone()
            optimizer.param_groups[0]["lr"] = 0.1 / (i + 1)  # a changing lr must not recompile or stick
            optimizer.step()
    return weights, compiled


@pytest.mark.slow
def test_compiled_update_matches_eager():
    """compile=True really compiles (dynamo traces one graph, no fallback warning) and equals eager."""
    pytest.importorskip("torch._inductor")
    import warnings

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="SCALE: torch.compile")  # the fallback must not run
        weights, compiled = _run_eager_and_compiled()
    assert compiled._compile is True and compiled._compiled_update is not None
    assert counters["stats"]["unique_graphs"] == 1  # one graph, reused at every step and lr
    torch.testing.assert_close(weights[0], weights[1], atol=1e-6, rtol=0)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    """Users keep training when the compiler is missing or broken: one warning, then the eager path."""
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="SCALE: torch.compile of the update failed .*no C\\+\\+ compiler"):
        weights, compiled = _run_eager_and_compiled()
    assert compiled._compile is False
    torch.testing.assert_close(weights[0], weights[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(48, 40), (1024, 640)])  # the second spans several CPU row blocks
def test_every_update_path_is_the_papers_algorithm(shape):
    """SCALE's in-place paths (CPU row blocks for hidden and lm_head, whole tensors for the embedding's
    column statistic) equal ``scale_matrix_step``, the paper's Algorithm 1 written out, step after step
    (the optimizer itself is checked against the independent ``PlainSCALE`` above)."""
    torch.manual_seed(0)
    roles = ("hidden", "embedding", "output")
    params = {role: torch.nn.Parameter(torch.randn(shape)) for role in roles}
    optimizer = SCALE([{"params": [params[r]], "role": r} for r in roles], lr=1e-2, weight_decay=0.1)
    expected = {role: params[role].detach().clone() for role in roles}
    buffers = {role: torch.zeros(shape) for role in roles}
    for _ in range(3):
        for role in roles:
            params[role].grad = torch.randn(shape)
            expected[role], buffers[role] = scale_matrix_step(expected[role], params[role].grad, buffers[role],
                                                              role=role, lr=1e-2, weight_decay=0.1)
        optimizer.step()
    for role in roles:
        assert (params[role].detach() - expected[role]).abs().max().item() <= 1e-6, role
