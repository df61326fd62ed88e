"""torch's own AdamW, Adam and SGD, given the ``for_model`` constructor every optimizer here shares.

They are the paper's Adam baseline (GaLore's script uses plain Adam with weight decay 0) and the base of
its SGD ablations. Parameters are grouped by role only so that logs and reports look the same for every
optimizer; all groups share the same hyperparameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from optsweep.optim.groups import role_groups, split_parameters


def _fast_path(params: list[torch.Tensor], fused: bool | None, foreach: bool | None) -> dict:
    """torch's fused Adam(W) kernel wherever it exists (CPU and CUDA), unless the config picks a path.

    torch itself defaults to foreach, which benchmarks/optimizer_step.py measures 5-6x slower than fused on
    CPU at 60M-130M (one pass over each tensor instead of one per operation). Elsewhere (the meta device of
    the memory report, other accelerators) torch chooses.
    """
    if fused is None and foreach is None:
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    return {"fused": fused, "foreach": foreach}


class _AdamForModel:
    """``for_model`` for torch's Adam and AdamW, with the defaults of the paper's Adam (weight decay 0)."""

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fused: bool | None = None,
        foreach: bool | None = None,
    ):
        return cls(role_groups(split_parameters(model)), lr=lr, betas=tuple(betas), eps=eps,
                   weight_decay=weight_decay, **_fast_path(list(model.parameters()), fused, foreach))


class AdamW(_AdamForModel, torch.optim.AdamW):
    pass


class Adam(_AdamForModel, torch.optim.Adam):
    pass


class SGD(torch.optim.SGD):
    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> SGD:
        groups = role_groups(split_parameters(model))
        return cls(groups, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                   weight_decay=weight_decay, fused=fused, foreach=foreach)
