"""GaLore (Zhao et al. 2024, arXiv 2403.03507): Adam on an SVD-projected gradient of each hidden matrix.

Semantics of the official code (jiaweizzhao/GaLore, Apache-2.0: ``galore_torch/adamw.py`` lines 89-146,
``galore_torch/galore_projector.py`` lines 12-21, 46-51 and 81-93, ``torchrun_main.py`` lines 263-281),
re-written here (see ``projection`` for the shared skeleton):

- only the weights of ``nn.Linear`` modules under "attn"/"mlp" are projected (role ``hidden``); every
  other parameter gets the same AdamW at the same lr;
- every ``update_proj_gap`` steps (on steps 1, gap + 1, ...) the projector is refreshed with the top-r
  singular vectors of the current gradient, computed in fp32 and stored in the parameter's dtype: Vh[:r]
  (r x n) when m >= n, U[:, :r] (m x r) otherwise;
- Adam's moments live on R (m x r or r x n); the update is ``scale`` times the back-projected direction.

C4 pretraining scripts (``scripts/benchmark_c4``): lr 0.01, scale 0.25, gap 200, ranks 128/256/256 at
60M/130M/350M (the 1B script says 1024, the paper's table 512), weight decay 0, betas and eps left at the
AdamW defaults (0.9, 0.999), 1e-6.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from optsweep.optim.base import ForModel
from optsweep.optim.projection import LowRankAdam, project_back, svd_projector


class GaLore(ForModel, LowRankAdam):
    def __init__(self, params: Iterable, lr: float = 0.01, rank: int | None = 128, update_proj_gap: int = 200,
                 scale: float = 0.25, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, rank=rank,
                         update_proj_gap=update_proj_gap, scale=scale)

    def new_projector(self, grad, side, group, state):
        return svd_projector(grad, group["rank"], side, state.get("projector"))

    def update(self, grad, low_rank, direction, projector, side, group, state):
        return project_back(direction, projector, side) * group["scale"]

