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


def _fast_path(fused: bool | None, foreach: bool | None) -> dict:
    # fused kernels exist for CPU and CUDA in torch >= 2.4; None lets torch pick foreach.
    return {"fused": fused, "foreach": foreach}


class AdamW(torch.optim.AdamW):
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
    ) -> AdamW:
        groups = role_groups(split_parameters(model))
        return cls(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                   **_fast_path(fused, foreach))


class Adam(torch.optim.Adam):
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
    ) -> Adam:
        groups = role_groups(split_parameters(model))
        return cls(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                   **_fast_path(fused, foreach))


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
                   weight_decay=weight_decay, **_fast_path(fused, foreach))
