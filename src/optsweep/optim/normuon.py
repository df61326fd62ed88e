"""NorMuon (Li, Liu, Liang, Chen, Zhao; "NorMuon: Making Muon more efficient and scalable", arXiv 2510.05491).

Muon followed by a per-neuron (per-row) second-moment normalisation of the orthogonalised update.
Semantics of the official optimizer, github zichongli5/NorMuon ``normuon.py`` (MIT), commit d45c9a4,
``SingleDeviceNorMuonWithAuxAdam``; the code here is the project's own. For a hidden matrix G (m x n):

    M <- lerp(M, G, 1 - beta1)                       momentum (beta1 = ``momentum``, 0.95)
    U = lerp(G, M, beta1)                            Nesterov (``nesterov=False``: U = M)
    O = NewtonSchulz5(U)                             Muon's quintic iteration (newton_schulz.orthogonalize)
    v <- lerp(v, mean_cols(O * O), 1 - beta2)        one entry per row (neuron), beta2 = 0.95
    O' = O / (sqrt(v) + 1e-10)
    O' <- O' * ||O||_F / (||O'||_F + 1e-10)          keep the update's norm that of O
    p <- p (1 - lr wd) - lr sqrt(max(1, m / n)) O'

(The paper writes the last two lines as an RMS-matching rescale 0.2 sqrt(m n) / ||O'||_F; the released code,
followed here, keeps Muon's norm and its sqrt(max(1, m/n)) factor, so Muon's learning rates carry over.)

Embedding, lm_head and 1-D weights get AdamW (betas (0.9, 0.95), eps 1e-10, lr ``adam_lr`` = 3e-4 by
default), the released auxiliary Adam; the scheduler scales both learning rates. Weight decay is decoupled
and applied to every group (0 by default, as released).

Precision: the released iteration runs in bfloat16 and leaves O in bfloat16, so the normalisation above is
also computed in bfloat16 there; here O is returned in the gradient's dtype and normalised in it (the same
for bf16 weights; float32 arithmetic for float32 weights). ``ns_dtype="float32"`` runs the iteration itself
in float32. ``p.grad`` is left as it was (the released Nesterov step overwrites it).

Under FSDP2 each matrix's direction is gathered once, orthogonalised and normalised identically on every
rank (v, m floats per matrix, is kept whole on every rank), and each rank keeps its rows; the momentum
buffer stays sharded like the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from optsweep.optim import sharding
from optsweep.optim.aux_adam import HiddenMatrixOptimizer, adam_lr_groups, apply_update_
from optsweep.optim.base import check_options
from optsweep.optim.muon import AUX_ADAM_ROLES, NS_DTYPES, momentum_direction
from optsweep.optim.newton_schulz import orthogonalize

NORM_EPS = 1e-10  # the released code's guard in both divisions


def neuron_normalize(o: Tensor, second_moment: Tensor, beta2: float) -> Tensor:
    """Update v (one entry per row) in place and return O divided by sqrt(v) per row, rescaled to O's norm."""
    norm = o.norm()
    second_moment.lerp_(o.square().mean(dim=1), 1 - beta2)
    normalized = o / (second_moment.sqrt() + NORM_EPS).unsqueeze(1)
    return normalized * (norm / (normalized.norm() + NORM_EPS))


def normuon_update(
    grad: Tensor,
    momentum_buffer: Tensor,
    second_moment: Tensor,
    beta1: float = 0.95,
    beta2: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """NorMuon's direction for one whole matrix (to be multiplied by -lr); updates both buffers in place."""
    direction = momentum_direction(grad, momentum_buffer, beta1, nesterov)
    matrix = direction.reshape(direction.size(0), -1)
    o = orthogonalize(matrix, steps=ns_steps, dtype=ns_dtype)
    update = neuron_normalize(o, second_moment, beta2)
    return update.reshape(grad.shape) * math.sqrt(max(1.0, matrix.size(0) / matrix.size(1)))


class NorMuon(HiddenMatrixOptimizer):
    """NorMuon on hidden matrices + AdamW on embeddings, lm_head and 1-D weights. See the module docstring."""

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        beta2: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "bfloat16",
        weight_decay: float = 0.0,
        adam_betas: Sequence[float] = (0.9, 0.95),
        adam_eps: float = 1e-10,
    ) -> None:
        check_options(lr, adam_betas, unit={"momentum": momentum, "beta2": beta2},
                      choices={"ns_dtype": (ns_dtype, NS_DTYPES)})
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        defaults = {"lr": lr, "momentum": momentum, "beta2": beta2, "nesterov": nesterov, "ns_steps": ns_steps,
                    "ns_dtype": ns_dtype, "weight_decay": weight_decay, "adam_betas": tuple(adam_betas),
                    "adam_eps": adam_eps}
        super().__init__(params, defaults)

    @classmethod
    def for_model(cls, model: nn.Module, lr: float = 0.02, adam_lr: float | None = 3e-4, **options) -> NorMuon:
        """NorMuon over ``model``: hidden matrices at ``lr``, the AdamW groups at ``adam_lr`` (None: ``lr``);
        ``options``: the constructor's."""
        return cls(adam_lr_groups(model, lr, adam_lr, AUX_ADAM_ROLES), lr=lr, **options)

    def matrix_update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
            state["second_moment"] = torch.zeros(p.shape[0], dtype=p.dtype, device=sharding.local(p).device)
        direction = momentum_direction(p.grad, state["momentum_buffer"], group["momentum"], group["nesterov"])
        full = sharding.full_tensor(direction)  # the one all-gather of this matrix
        matrix = full.reshape(full.size(0), -1)
        o = orthogonalize(matrix, steps=group["ns_steps"], dtype=getattr(torch, group["ns_dtype"]))
        update = neuron_normalize(o, state["second_moment"], group["beta2"])
        scale = math.sqrt(max(1.0, matrix.size(0) / matrix.size(1)))
        apply_update_(p, update.reshape(full.shape), group["lr"], group["weight_decay"], scale)
