"""Adam-mini: parity with the official optimizer (zyushun/Adam-mini v1.1.1) over 12 fp32 steps, its block
partition, a hand-checked step, state size, checkpoint round trip, bf16, meta device and FSDP2."""

from __future__ import annotations

import math

import pytest
import torch
from _optim_checks import SPEC, backward, bf16_state_dtypes, golden_runs, replay, resumes_exactly, tiny_model

from optsweep.models.llama import build_llama
from optsweep.optim.adam_mini import AdamMini
from optsweep.optim.registry import build_optimizer
from optsweep.report import memory


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("key", ["default", "value_tensor"])
def test_parity_with_official_adam_mini(key):
    """default: the official partition; value_tensor: its README's short-run advice (wv_names = {})."""
    worst = replay("adam_mini", golden_runs("adam_mini")[key])
    print(f"adam_mini {key}: max |loss diff| {worst['loss']:.1e}, max |weight diff| {worst['entry']:.1e}, "
          f"weights moved up to {worst['moved']:.2f}")
    assert worst["moved"] > 0.1
    assert worst["loss"] <= 1e-6 and worst["entry"] <= 1e-6 and worst["sum"] <= 1e-7


def test_blocks_follow_the_official_partition():
    model = tiny_model()
    opt = build_optimizer(model, "adam_mini", weight_decay=0.1)
    backward(model, 0)
    opt.step()
    blocks = {n: opt.state[p]["exp_avg_sq"].shape[0] for n, p in model.named_parameters()}
    layer = "model.layers.0."
    assert blocks[layer + "self_attn.q_proj.weight"] == blocks[layer + "self_attn.k_proj.weight"] == 4  # heads
    assert blocks[layer + "self_attn.v_proj.weight"] == blocks[layer + "self_attn.o_proj.weight"] == 32  # rows
    assert blocks[layer + "mlp.gate_proj.weight"] == 64 and blocks[layer + "mlp.down_proj.weight"] == 32
    assert blocks["model.embed_tokens.weight"] == blocks["lm_head.weight"] == 97  # one per token
    assert blocks[layer + "input_layernorm.weight"] == blocks["model.norm.weight"] == 1
    decay = {g["block"] + "/" + g["role"]: g["weight_decay"] for g in opt.param_groups}
    assert decay["tensor/vector"] == 0.0 and decay["neuron/embedding"] == 0.1
    tensor_value = build_optimizer(tiny_model(), "adam_mini", value_block="tensor")
    assert any(g["block"] == "tensor" and g["role"] == "hidden" for g in tensor_value.param_groups)
    with pytest.raises(ValueError):
        build_optimizer(model, "adam_mini", value_block="head")


def test_hand_checked_steps_for_a_head_block():
    """Two heads of 2 rows x 3 columns: each head's v is the mean of its squared gradient."""
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = AdamMini([{"params": [p], "block": "head", "head_dim": 2}], lr=0.5, betas=(0.5, 0.75), eps=0.0,
                   weight_decay=0.0)
    g1 = torch.tensor([[1.0, 2, 3], [4, 5, 6], [0, 0, 1], [0, 1, 0]])
    g2 = torch.ones(4, 3)
    m = torch.zeros(4, 3)
    v = torch.zeros(2)
    expected = torch.zeros(4, 3)
    for t, g in enumerate((g1, g2), start=1):
        p.grad = g.clone()
        opt.step()
        m = 0.5 * m + 0.5 * g
        v = 0.75 * v + 0.25 * torch.stack([g[:2].square().mean(), g[2:].square().mean()])
        v_hat = v / (1 - 0.75**t)
        scale = torch.tensor([1 / math.sqrt(v_hat[0]), 1 / math.sqrt(v_hat[1])]).repeat_interleave(2)
        expected -= 0.5 * m / (1 - 0.5**t) * scale[:, None]
        torch.testing.assert_close(p.detach(), expected)


def test_memory_report_state_is_the_definition():
    """m for every weight; v: one per head for q and k, one per row for v, o, gate, up, down, the embedding
    and lm_head, one per norm weight."""
    h, f, heads, layers, vocab = 64, 172, 4, 3, 1000
    model = f"name=x,hidden_size={h},intermediate_size={f},num_hidden_layers={layers},num_attention_heads={heads},vocab_size={vocab}"
    row = memory.memory_rows(["adam_mini"], [model])[0]
    blocks = layers * (2 * heads + 2 * h + 2 * f + h + 2) + 2 * vocab + 1
    assert row.state_elements == row.params + blocks


def test_state_dict_round_trip_weights_only_and_exact_resume():
    assert resumes_exactly("adam_mini", {"lr": 1e-2})


def test_bf16_run_keeps_bf16_state():
    assert bf16_state_dtypes("adam_mini", {}) == {"exp_avg": {torch.bfloat16}, "exp_avg_sq": {torch.bfloat16}}


def test_meta_device_step():
    model = build_llama(SPEC, device="meta")
    opt = build_optimizer(model, "adam_mini")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(v.is_meta for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))


def test_closure_is_evaluated_and_returned():
    model = tiny_model()
    opt = build_optimizer(model, "adam_mini")

    def closure():
        opt.zero_grad()
        return torch.tensor(backward(model, 0), requires_grad=True)

    assert opt.step(closure).requires_grad
    assert all(s["step"] == 1 for s in opt.state.values())


@pytest.mark.slow
def test_fsdp2_sharded_step_matches_unsharded(tmp_path):
    # vocab 97 shards the embedding and lm_head unevenly; weight decay on, value as one block
    from test_optim_muon import run_fsdp2

    worst = run_fsdp2(tmp_path, "adam_mini", {"lr": 1e-2, "value_block": "tensor"})
    assert worst < 1e-6, worst
