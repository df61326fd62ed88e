"""What every optimizer here shares, written once: how it is built for a model, its loop over parameters,
and the checks of its constructor."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from optsweep.optim.groups import role_groups, split_parameters


class ForModel:
    """Mixin giving an optimizer class ``for_model(model, **options)``, what its yaml targets: the optimizer
    over every parameter of ``model`` in groups labelled by role (logs and reports then show the same groups
    for every optimizer; the update treats all alike). The options and their defaults are the constructor's.
    """

    @classmethod
    def for_model(cls, model: nn.Module, **options):
        return cls(role_groups(split_parameters(model)), **options)


class PerParameter:
    """Mixin giving ``step``: ``update(p, group)`` for every parameter with a gradient, in group order."""

    def update(self, p: torch.Tensor, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, group)
        return loss


def closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss of ``step(closure)``: the closure re-evaluated with gradients on, or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def check_options(
    lr: float,
    betas: Sequence[float] = (),
    unit: Mapping[str, float] | None = None,
    non_negative: Mapping[str, float] | None = None,
    choices: Mapping[str, tuple[object, Sequence]] | None = None,
) -> None:
    """The constructor checks the optimizers share: ``lr`` >= 0; ``betas`` and each of ``unit`` in [0, 1);
    each of ``non_negative`` >= 0; each of ``choices`` (value, allowed values) one of those allowed."""
    if lr < 0.0:
        raise ValueError(f"invalid learning rate {lr}")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must lie in [0, 1), got {tuple(betas)}")
    for name, value in (unit or {}).items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {value}")
    for name, value in (non_negative or {}).items():
        if value < 0.0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for name, (value, allowed) in (choices or {}).items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
