"""APOLLO and APOLLO-Mini (Zhu et al. 2024, arXiv 2412.05270): AdamW-like scaling of the FULL raw gradient,
its per-channel (or per-tensor) factors estimated by Adam on a random low-rank projection.

Written from the paper and from facts read in the official code (zhuhanqing/APOLLO ``apollo_torch/apollo.py``
lines 78-83 and 127-206, ``apollo_torch/random_projector.py``; that package is CC-BY-NC, so nothing here
comes from it but the facts). ``pytorch-optimizer``'s APOLLO is not used: its update has rank r.

For each hidden matrix, with G (m x n) its gradient, on the shared skeleton of ``projection``:

- projector: i.i.d. N(0, 1/r), (r, n) when m >= n, (m, r) otherwise, from a generator seeded per parameter;
  the first seed is ``seed`` + the parameter's 1-based position in the param groups (the official scripts'
  order, [other params, hidden matrices], which ``for_model`` reproduces); each refresh draws with the
  current seed and advances it (``projection.next_seed``). Refreshed on steps 1, gap + 1, ... like GaLore;
- R = projected G; Adam moments on R; N = m / (sqrt(v) + eps);
- s = ||N||_c / (||R||_c + 1e-8), norms over the rank dim, one per channel of G (rows when m >= n, else
  columns) for ``scale_type="channel"``; s = ||N||_F / (||R||_F + 1e-8) for ``"tensor"`` (APOLLO-Mini);
- update = G * s * sqrt(scale), limited by Fira's norm-growth limiter (1.01); sqrt(scale) is applied after
  the limiter, or before it with ``scale_front`` (the official 60M/130M APOLLO-Mini scripts; the limiter's
  ratio is scale-free, so the two differ only through the 1e-8 in it);
- p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * update. Every other parameter: the same AdamW, same lr.

C4 scripts (``scripts/pretrain_c4``): lr 0.01, gap 200, weight decay 0, AdamW defaults betas (0.9, 0.999),
eps 1e-6. APOLLO: rank 128/192/256/256/256 (60M/130M/350M/1B/7B), channel, scale 1. APOLLO-Mini: rank 1,
tensor, scale 128 (192 at 130M), ``scale_front`` at 60M and 130M.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from optsweep.optim.groups import role_groups, split_parameters
from optsweep.optim.projection import (
    NORM_EPS,
    LowRankAdam,
    channel_dim,
    hidden_last,
    limit_norm_growth_,
    next_seed,
    random_projector,
)

SCALE_TYPES = ("channel", "tensor")


class APOLLO(LowRankAdam):
    def __init__(self, params: Iterable, lr: float = 0.01, rank: int | None = 128, update_proj_gap: int = 200,
                 scale_type: str = "channel", scale: float = 1.0, scale_front: bool = False, seed: int = 0,
                 norm_growth_limit: float | None = 1.01, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0):
        if scale_type not in SCALE_TYPES:
            raise ValueError(f"scale_type must be one of {SCALE_TYPES}, got {scale_type!r}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if norm_growth_limit is not None and norm_growth_limit < 1.0:
            raise ValueError(f"norm_growth_limit must be >= 1 (or None to switch it off), got {norm_growth_limit}")
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, rank=rank,
                         update_proj_gap=update_proj_gap, scale_type=scale_type, scale=scale,
                         scale_front=scale_front, seed=seed, norm_growth_limit=norm_growth_limit)

    @classmethod
    def for_model(cls, model: nn.Module, **options) -> APOLLO:
        """Hidden matrices last, so each starts from the official seed (see ``hidden_last``); ``options``: the
        constructor's."""
        return cls(hidden_last(role_groups(split_parameters(model))), **options)

    def init_projected_state(self, state, group, index):
        state["seed"] = group["seed"] + index

    def new_projector(self, grad, side, group, state):
        projector = random_projector(grad.shape, group["rank"], side, state["seed"], grad.device)
        state["seed"] = next_seed(state["seed"])
        return projector

    def update(self, grad, low_rank, direction, projector, side, group, state):
        if group["scale_type"] == "channel":
            dim = channel_dim(side)
            factor = (torch.linalg.vector_norm(direction, dim=dim, keepdim=True)
                      / (torch.linalg.vector_norm(low_rank, dim=dim, keepdim=True) + NORM_EPS))
        else:
            factor = torch.linalg.vector_norm(direction) / (torch.linalg.vector_norm(low_rank) + NORM_EPS)
        update = grad * factor
        root_scale = math.sqrt(group["scale"])
        if group["scale_front"]:
            update = update * root_scale
        if group["norm_growth_limit"] is not None:
            update = limit_norm_growth_(update, state, group["norm_growth_limit"], state["exp_avg"].dtype)
        if not group["scale_front"]:
            update = update * root_scale
        return update


class APOLLOMini(APOLLO):
    """APOLLO with a rank-1 projection and one scaling factor per tensor, scaled by sqrt(128)."""

    def __init__(self, params: Iterable, lr: float = 0.01, rank: int | None = 1, update_proj_gap: int = 200,
                 scale_type: str = "tensor", scale: float = 128.0, scale_front: bool = False, seed: int = 0,
                 norm_growth_limit: float | None = 1.01, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, rank=rank, update_proj_gap=update_proj_gap, scale_type=scale_type,
                         scale=scale, scale_front=scale_front, seed=seed, norm_growth_limit=norm_growth_limit,
                         betas=betas, eps=eps, weight_decay=weight_decay)
