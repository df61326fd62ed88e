"""LLaMA as the paper trains it: transformers' LlamaForCausalLM built from a shape, never from the hub.

Shapes follow GaLore's configs (which the paper's scripts reuse): SiLU MLP, RoPE, RMSNorm eps 1e-6,
init std 0.02, untied input and output embeddings, vocab 32000 (t5-base's text vocabulary).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass
class ModelSpec:
    """What ``conf/model/*.yaml`` holds. ``vocab_size: null`` means "the tokenizer's size"."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int | None = 32000
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    rope_theta: float = 10000.0
    attn_implementation: str = "sdpa"


def llama_config(spec: ModelSpec, vocab_size: int | None = None, pad_token_id: int | None = None) -> LlamaConfig:
    vocab = spec.vocab_size if spec.vocab_size is not None else vocab_size
    if vocab is None:
        raise ValueError(f"model '{spec.name}' takes the tokenizer's vocabulary size, but none was given")
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads or spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        initializer_range=spec.initializer_range,
        hidden_act="silu",
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        use_cache=False,
    )
    config.rope_theta = spec.rope_theta
    config._attn_implementation = spec.attn_implementation
    return config


def build_llama(
    spec: ModelSpec,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    device: torch.device | str | None = None,
) -> LlamaForCausalLM:
    """A freshly initialised model (``device="meta"`` builds the shapes without allocating memory)."""
    config = llama_config(spec, vocab_size=vocab_size, pad_token_id=pad_token_id)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = LlamaForCausalLM(config)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def embedding_parameters(model: torch.nn.Module) -> int:
    """Input-embedding parameters: what the usual FLOPs-per-token formula leaves out."""
    return model.get_input_embeddings().weight.numel()


def flops_per_token(model: LlamaForCausalLM, seq_len: int) -> float:
    """Training FLOPs per token, torchtitan's (and PaLM's) convention: 6 N + 12 L H Q T.

    ``N``: the weights of every matmul, the lm_head included; the input embedding (a lookup) and the 1-D
    norm gains (no matmul; torchtitan counts them, < 0.1% of N) are left out, so the formula is exactly
    the matmul count. ``12 L H Q T``: per layer, QK^T and (softmax)V each cost 2 T (H Q) FLOPs per token
    forward, times 3 for forward + backward. No causal discount: like torchtitan, the masked half of the
    scores counts, so MFU figures compare with theirs.
    """
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    matmul_weights = sum(p.numel() for p in model.parameters() if p.dim() == 2) - embedding_parameters(model)
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return float(6 * matmul_weights + attention)
