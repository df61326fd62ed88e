"""What every optimizer here shares, written once: how it is built for a model, and the start of ``step``."""

from __future__ import annotations

from collections.abc import Callable

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


def closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss of ``step(closure)``: the closure re-evaluated with gradients on, or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
