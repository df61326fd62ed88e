"""Model shapes and parameter counts, the lr schedules, and the batch/step arithmetic."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from optsweep.models.llama import ModelSpec, build_llama, count_parameters, flops_per_token
from optsweep.optim.schedules import WarmupConstant, WarmupCosine, WarmupLinear
from optsweep.training.budget import BudgetError, resolve_budget

PAPER_PARAMS_M = {"llama_60m": 58.07, "llama_130m": 134.11, "llama_350m": 367.97, "llama_1b": 1339.08,
                  "llama_7b": 6738.42}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_paper_model_sizes(name):
    spec = instantiate(OmegaConf.load(f"conf/model/{name}.yaml"))
    model = build_llama(spec, device="meta")
    assert round(count_parameters(model) / 1e6, 2) == PAPER_PARAMS_M[name]
    config = model.config
    assert config.vocab_size == 32000 and config.rms_norm_eps == 1e-6 and not config.tie_word_embeddings
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_tiny_model_takes_tokenizer_vocab_and_init_std():
    spec = instantiate(OmegaConf.load("conf/model/llama_tiny.yaml"))
    with pytest.raises(ValueError, match="tokenizer"):
        build_llama(spec)
    torch.manual_seed(0)
    model = build_llama(spec, vocab_size=500)
    assert model.config.vocab_size == 500
    std = model.model.layers[0].mlp.up_proj.weight.std().item()
    assert abs(std - 0.02) < 0.002


def _matmul_flops_per_token_by_hand(d, i, layers, heads, kv_heads, vocab, seq_len):
    """Training FLOPs per token from the matmul shapes: 2 per multiply-add forward, x3 with the backward."""
    q = d // heads
    projections = 2 * d * (heads * q) + 2 * 2 * d * (kv_heads * q) + 2 * (heads * q) * d  # q, k, v, o
    mlp = 3 * 2 * d * i  # gate, up, down
    scores_and_values = 2 * (2 * seq_len * heads * q)  # one query row against T keys, then T values
    forward = layers * (projections + mlp + scores_and_values) + 2 * d * vocab  # + lm_head
    return 3 * forward


def test_flops_per_token_matches_matmul_shapes_counted_by_hand():
    # Grouped-query attention (2 kv heads) so k/v projections differ from q's.
    d, i, layers, heads, kv_heads, vocab, seq_len = 32, 64, 2, 4, 2, 100, 16
    spec = ModelSpec(name="t", hidden_size=d, intermediate_size=i, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab)
    expected = _matmul_flops_per_token_by_hand(d, i, layers, heads, kv_heads, vocab, seq_len)
    assert flops_per_token(build_llama(spec, device="meta"), seq_len) == expected


def test_flops_per_token_matches_torch_flop_counter():
    """A second, independent count: torch's FlopCounterMode over one forward + backward (eager attention,
    whose masked scores are full T x T matmuls, i.e. no causal discount - the convention we use)."""
    from torch.utils.flop_counter import FlopCounterMode

    seq_len, batch = 16, 3
    spec = ModelSpec(name="t", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=100, attn_implementation="eager")
    torch.manual_seed(0)
    model = build_llama(spec)
    ids = torch.randint(0, 100, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    # The backward of the first matmul also computes its input's gradient (the embedding needs it), so
    # every matmul counts 3x its forward.
    assert counter.get_total_flops() / (batch * seq_len) == flops_per_token(model, seq_len)


def test_cosine_schedule_paper_values():
    f = WarmupCosine(warmup_steps=100, total_steps=1000, min_lr_ratio=0.1)
    assert f(0) == 0.0
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(1.0)
    assert f(550) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(1000) == pytest.approx(0.1)
    assert f(2000) == pytest.approx(0.1)  # past the end it stays at the floor


def test_linear_and_constant_schedules():
    lin = WarmupLinear(warmup_steps=10, total_steps=110, min_lr_ratio=0.0)
    assert (lin(0), lin(10), lin(60), lin(110)) == (0.0, 1.0, 0.5, 0.0)
    const = WarmupConstant(warmup_steps=4, total_steps=100)
    assert (const(2), const(4), const(99)) == (0.5, 1.0, 1.0)


def test_gradient_accumulation_arithmetic():
    b = resolve_budget(total_batch_size=512, micro_batch_size=64, world_size=4, seq_len=256, max_steps=1000,
                       warmup_ratio=0.1)
    assert b.accumulate_grad_batches == 2 and b.warmup_steps == 100
    assert b.tokens_per_step == 512 * 256 and b.total_tokens == 1000 * 512 * 256
    b = resolve_budget(total_batch_size=512, micro_batch_size=512, world_size=1, seq_len=256,
                       max_tokens=512 * 256 * 10 + 1, warmup_steps=3)
    assert b.accumulate_grad_batches == 1 and b.max_steps == 11 and b.warmup_steps == 3


def test_indivisible_batch_is_a_clear_error():
    with pytest.raises(BudgetError, match=r"total_batch_size=500 is not divisible .* = 128"):
        resolve_budget(total_batch_size=500, micro_batch_size=64, world_size=2, seq_len=256, max_steps=10)


def test_budget_needs_exactly_one_of_steps_and_tokens():
    with pytest.raises(BudgetError, match="exactly one"):
        resolve_budget(total_batch_size=8, micro_batch_size=8, world_size=1, seq_len=8, max_steps=10,
                       max_tokens=100)
    assert math.isclose(resolve_budget(8, 8, 1, 8, max_steps=10, warmup_ratio=0.25).warmup_steps, 2)
