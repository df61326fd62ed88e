"""Muon (Keller Jordan, 2024) for the hidden matrices, with AdamW for everything else, in one optimizer.

Hidden matrices (attention q/k/v/o and MLP gate/up/down weights): momentum buffer B <- lerp(B, g, 1 - mu)
(mu = 0.95), Nesterov direction lerp(g, B, mu), five quintic Newton-Schulz iterations in bfloat16
(``newton_schulz.orthogonalize``), then p <- p (1 - lr wd) - lr * a(shape) * O, where a is
``adjust_lr``:

- "original": sqrt(max(1, rows / cols)) (Keller Jordan's muon.py);
- "match_rms_adamw": 0.2 sqrt(max(rows, cols)) (Moonlight, "Muon is Scalable for LLM Training"): the update
  gets AdamW's typical RMS, so Muon can reuse AdamW's learning rate.

This is torch.optim.Muon's arithmetic (checked bit for bit in tests/test_optim_muon.py), written here
because torch's Muon takes only 2-D parameters (so a second optimizer would be needed for the rest) and,
under FSDP2, issues 11-16 hidden collectives per matrix. Here each matrix is gathered once
(``sharding.full_tensor``), orthogonalised identically on every rank, and each rank keeps its own rows
(``sharding.keep_local``); the momentum buffer stays sharded like the parameter.

Embedding, lm_head and 1-D weights get AdamW (betas (0.9, 0.95), eps 1e-10: Keller Jordan's auxiliary Adam)
at the group lr ``adam_lr`` (default: the same lr), so the scheduler scales both. Weight decay is decoupled
and applied to every group; it is 0 by default (torch.optim.Muon defaults to 0.1).

Plain param groups work too: a group without a "role" sends its 2-D (and higher) tensors to Muon and the
rest to AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from optsweep.optim import sharding
from optsweep.optim.aux_adam import HiddenMatrixOptimizer, adam_lr_groups, apply_update_
from optsweep.optim.base import check_options
from optsweep.optim.newton_schulz import orthogonalize

ADJUST_LR = ("original", "match_rms_adamw")
NS_DTYPES = ("bfloat16", "float32")
AUX_ADAM_ROLES = ("embedding", "output", "vector")


def lr_adjustment(rule: str, rows: int, cols: int) -> float:
    """Multiplier of the learning rate for an orthogonalised (rows x cols) update."""
    if rule == "original":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"adjust_lr must be one of {ADJUST_LR}, got {rule!r}")


def momentum_direction(grad: Tensor, momentum_buffer: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """Update the buffer B <- lerp(B, g, 1 - mu) in place; the direction: lerp(g, B, mu) (Nesterov) or B."""
    momentum_buffer.lerp_(grad, 1 - momentum)  # element-wise: fine on sharded DTensors
    return grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer


def muon_step(param: Tensor, grad: Tensor, momentum_buffer: Tensor, *, lr: float, momentum: float = 0.95,
              nesterov: bool = True, ns_steps: int = 5, ns_dtype: torch.dtype = torch.bfloat16,
              adjust_lr: str = "original", weight_decay: float = 0.0) -> None:
    """One Muon step of one whole matrix, in place, as Keller Jordan writes it. ``Muon`` below does exactly
    this per hidden matrix, gathering a sharded one first."""
    direction = momentum_direction(grad, momentum_buffer, momentum, nesterov)
    matrix = direction.reshape(direction.size(0), -1)  # conv-like weights flatten their trailing dims
    ortho = orthogonalize(matrix, steps=ns_steps, dtype=ns_dtype)
    param.mul_(1 - lr * weight_decay)
    param.add_(ortho.reshape(param.shape), alpha=-lr * lr_adjustment(adjust_lr, *matrix.shape))


class Muon(HiddenMatrixOptimizer):
    """Muon on hidden matrices + AdamW on embeddings, lm_head and 1-D weights. See the module docstring."""

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "bfloat16",
        adjust_lr: str = "original",
        weight_decay: float = 0.0,
        adam_betas: Sequence[float] = (0.9, 0.95),
        adam_eps: float = 1e-10,
    ) -> None:
        check_options(lr, adam_betas, unit={"momentum": momentum},
                      choices={"adjust_lr": (adjust_lr, ADJUST_LR), "ns_dtype": (ns_dtype, NS_DTYPES)})
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                    "ns_dtype": ns_dtype, "adjust_lr": adjust_lr, "weight_decay": weight_decay,
                    "adam_betas": tuple(adam_betas), "adam_eps": adam_eps}
        super().__init__(params, defaults)

    @classmethod
    def for_model(cls, model: nn.Module, lr: float = 0.02, adam_lr: float | None = None, **options) -> Muon:
        """Muon over ``model``: hidden matrices at ``lr``, the AdamW groups at ``adam_lr`` (None: ``lr``);
        ``options``: the constructor's."""
        return cls(adam_lr_groups(model, lr, adam_lr, AUX_ADAM_ROLES), lr=lr, **options)

    def matrix_update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        direction = momentum_direction(p.grad, state["momentum_buffer"], group["momentum"], group["nesterov"])
        full = sharding.full_tensor(direction)  # the one all-gather of this matrix
        matrix = full.reshape(full.size(0), -1)  # conv-like weights flatten their trailing dims
        ortho = orthogonalize(matrix, steps=group["ns_steps"], dtype=getattr(torch, group["ns_dtype"]))
        scale = lr_adjustment(group["adjust_lr"], matrix.size(0), matrix.size(1))
        apply_update_(p, ortho.reshape(full.shape), group["lr"], group["weight_decay"], scale)
