"""Fira (Chen et al. 2024, arXiv 2410.01623): GaLore plus a scaled full-rank residual, with a norm-growth limiter.

Semantics of the official code (xichen-fy/Fira, Apache-2.0: ``optimizer_torch/fira_adamw.py`` lines 90-153,
``optimizer_torch/gradient_projection.py``), re-written here on the shared skeleton of ``projection``.
Projector, refresh and Adam are GaLore's (SVD, fp32, on steps 1, gap + 1, ...); with R the projected
gradient, N = m / (sqrt(v) + eps) the projected Adam direction and P the back-projection:

    residual = G - alpha * P(R)                   the official ``project_back`` applies alpha here too, so
                                                  with alpha < 1 part of the projected gradient stays in it
    phi      = ||N||_c / (||R||_c + 1e-8)         one factor per channel: norms over the rank dim of N, R
                                                  (per row of G when m >= n, per column when m < n)
    S        = limiter(residual * phi)            each step's ||S|| at most 1.01 x the previous (limited)
                                                  ||S||; the first step is not limited
    update   = alpha * P(N) + S                   p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * update

C4 pretraining scripts (``pre_training_c4/scripts``): lr 0.01, alpha 0.25 (0.0625 at 1B), gap 200, ranks
128/256/256/512 at 60M/130M/350M/1B, weight decay 0, AdamW defaults betas (0.9, 0.999), eps 1e-6.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from optsweep.optim.base import ForModel
from optsweep.optim.projection import (
    NORM_EPS,
    LowRankAdam,
    channel_dim,
    limit_norm_growth_,
    project_back,
    svd_projector,
)


class Fira(ForModel, LowRankAdam):
    def __init__(self, params: Iterable, lr: float = 0.01, rank: int | None = 128, update_proj_gap: int = 200,
                 alpha: float = 0.25, norm_growth_limit: float | None = 1.01,
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        if norm_growth_limit is not None and norm_growth_limit < 1.0:
            raise ValueError(f"norm_growth_limit must be >= 1 (or None to switch it off), got {norm_growth_limit}")
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, rank=rank,
                         update_proj_gap=update_proj_gap, alpha=alpha, norm_growth_limit=norm_growth_limit)

    def new_projector(self, grad, side, group, state):
        return svd_projector(grad, group["rank"], side, state.get("projector"))

    def update(self, grad, low_rank, direction, projector, side, group, state):
        alpha = group["alpha"]
        dim = channel_dim(side)
        phi = (torch.linalg.vector_norm(direction, dim=dim, keepdim=True)
               / (torch.linalg.vector_norm(low_rank, dim=dim, keepdim=True) + NORM_EPS))
        residual = (grad - alpha * project_back(low_rank, projector, side)) * phi
        if group["norm_growth_limit"] is not None:
            residual = limit_norm_growth_(residual, state, group["norm_growth_limit"], state["exp_avg"].dtype)
        return alpha * project_back(direction, projector, side) + residual
