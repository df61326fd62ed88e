"""Optimizers: SCALE, every baseline of its paper and the 2026 field, one file each (plus its yaml in
conf/optimizer/), built through the registry."""

from optsweep.optim.groups import ParamSplit, split_parameters, state_bytes
from optsweep.optim.registry import OPTIMIZERS, build_optimizer, optimizer_class

__all__ = ["OPTIMIZERS", "ParamSplit", "build_optimizer", "optimizer_class", "split_parameters", "state_bytes"]


def __getattr__(name: str):
    # `from optsweep.optim import SCALE` without importing every optimizer up front.
    if not name[:1].isupper():  # a submodule being imported (``from optsweep.optim import sharding``)
        raise AttributeError(name)
    for key in OPTIMIZERS:
        cls = optimizer_class(key)
        if cls.__name__ == name:
            return cls
    raise AttributeError(name)
