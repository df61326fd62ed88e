"""Optimizers: SCALE and every baseline of its paper, one file each, built through one registry."""

from optsweep.optim.groups import ParamSplit, split_parameters, state_bytes
from optsweep.optim.registry import OPTIMIZERS, build_optimizer, optimizer_class

__all__ = ["OPTIMIZERS", "ParamSplit", "build_optimizer", "optimizer_class", "split_parameters", "state_bytes"]


def __getattr__(name: str):
    # `from optsweep.optim import SCALE` without importing every optimizer up front.
    for key, target in OPTIMIZERS.items():
        if target.split(":")[1] == name:
            return optimizer_class(key)
    raise AttributeError(name)
