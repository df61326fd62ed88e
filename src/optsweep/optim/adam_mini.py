"""Adam-mini (Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain More", arXiv 2406.16793).

Adam with one second moment per block of parameters instead of one per parameter, the blocks following
the Hessian's block structure. Semantics of the official optimizer, github zyushun/Adam-mini
``adam_mini/adam_mini.py`` v1.1.1 (MIT), commit 402aadf; the code here is the project's own:

- query and key weights: one block per attention head (head_dim rows x hidden);
- value, attention output, MLP weights, the embedding and lm_head: one block per output row (a neuron, or a
  token for the embedding and lm_head);
- everything else (the 1-D RMSNorm weights): one block per tensor, with no weight decay (the official code
  exempts names containing "norm", "ln" or "bias").

Per step, with G viewed as (blocks, elements per block) and t counted from 1:

    m <- beta1 m + (1 - beta1) G                       (one entry per parameter)
    v <- beta2 v + (1 - beta2) mean_over_block(G * G)  (one entry per block)
    p <- p (1 - lr wd) - lr * (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps)

``value_block="tensor"`` gives the value matrix a single block, as the official README advises for runs
shorter than 10k-20k steps (and its LLaMA script does); the optimizer's own default is one block per neuron.

Under FSDP2 the gradient of each matrix is gathered once, v (a few numbers per matrix) is computed and kept
whole and identical on every rank, and each rank scales its own rows of m; m stays sharded like p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from optsweep.optim import sharding
from optsweep.optim.base import PerParameter, check_options
from optsweep.optim.groups import split_parameters

BLOCKS = ("head", "neuron", "tensor")
VALUE_BLOCKS = ("neuron", "tensor")
# Substrings of parameter names, as the official optimizer matches them (lower-cased).
QUERY_KEY_NAMES = ("k_proj", "q_proj", "wq", "wk", "query", "key")
VALUE_NAMES = ("v_proj", "wv", "value")


def adam_mini_update(
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    beta1: float,
    beta2: float,
    eps: float,
) -> Tensor:
    """Update m (shaped like grad) and v (one entry per row of ``grad``, a 2-D (blocks, block size) view)
    in place; return the direction m_hat / (sqrt(v_hat) + eps), shaped like ``grad``."""
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).add_(torch.mean(grad * grad, dim=1), alpha=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    return exp_avg * ((1 / (1 - beta1**step)) / denom).unsqueeze(1)


def block_count(p: Tensor, block: str, head_dim: int | None) -> int:
    """How many second-moment entries Adam-mini keeps for ``p`` (its full shape, whatever the sharding)."""
    if block == "tensor" or p.ndim < 2:
        return 1
    if block == "head":
        if not head_dim or p.shape[0] % head_dim:
            raise ValueError(f"a per-head block needs head_dim dividing {p.shape[0]} rows, got {head_dim}")
        return p.shape[0] // head_dim
    return p.shape[0]


class AdamMini(PerParameter, torch.optim.Optimizer):
    """Adam-mini: Adam with one second moment per head, neuron or tensor. See the module docstring.

    Groups carry ``block`` ("head" with ``head_dim``, "neuron" or "tensor"); a group without one gives 2-D
    (and higher) tensors a block per row and the rest one block each.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
    ) -> None:
        check_options(lr, betas, non_negative={"weight_decay": weight_decay})
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "block": None, "head_dim": None}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["block"] not in (None, *BLOCKS):
                raise ValueError(f"block must be one of {BLOCKS}, got {group['block']!r}")

    @classmethod
    def for_model(cls, model: nn.Module, value_block: str = "neuron", **options) -> AdamMini:
        """Adam-mini's blocks for ``model`` (value weights per ``value_block``); ``options``: the constructor's."""
        if value_block not in VALUE_BLOCKS:
            raise ValueError(f"value_block must be one of {VALUE_BLOCKS}, got {value_block!r}")
        config = getattr(model, "config", None)
        heads = getattr(config, "num_attention_heads", None)
        head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
        split = split_parameters(model)
        query_key, value, neuron = [], [], []
        for name, p in split.hidden:
            lowered = name.lower()
            if head_dim and any(k in lowered for k in QUERY_KEY_NAMES):
                query_key.append(p)
            elif any(k in lowered for k in VALUE_NAMES):
                value.append(p)
            else:
                neuron.append(p)
        candidates = [
            {"params": query_key, "role": "hidden", "block": "head", "head_dim": head_dim},
            {"params": value, "role": "hidden", "block": value_block},
            {"params": neuron, "role": "hidden", "block": "neuron"},
            {"params": split.of("embedding"), "role": "embedding", "block": "neuron"},
            {"params": split.of("output"), "role": "output", "block": "neuron"},
            {"params": split.of("vector"), "role": "vector", "block": "tensor", "weight_decay": 0.0},
        ]
        groups = [g for g in candidates if g["params"]]
        return cls(groups, **options)

    def update(self, p: Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        block = group["block"] or ("neuron" if p.ndim >= 2 else "tensor")
        blocks = block_count(p, block, group["head_dim"])
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros(blocks, dtype=p.dtype, device=sharding.local(p).device)
        state["step"] += 1
        full = sharding.full_tensor(p.grad)  # one all-gather under FSDP2; v needs whole blocks
        exp_avg = sharding.full_tensor(state["exp_avg"])
        direction = adam_mini_update(
            full.reshape(blocks, -1), exp_avg.reshape(blocks, -1), state["exp_avg_sq"], state["step"],
            beta1, beta2, group["eps"],
        )
        param = sharding.local(p)
        if group["weight_decay"]:
            param.mul_(1 - group["lr"] * group["weight_decay"])
        if sharding.is_dtensor(p):
            sharding.local(state["exp_avg"]).copy_(sharding.keep_local(exp_avg, p))
        param.add_(sharding.keep_local(direction.reshape(full.shape), p), alpha=-group["lr"])
