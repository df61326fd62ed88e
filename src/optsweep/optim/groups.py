"""The one place that decides which parameter plays which role.

Every optimizer that treats parameters differently (SCALE, Muon, GaLore, Fira, APOLLO, SWAN, ...) asks this
module, so "hidden matrix" means the same thing for all of them:

- ``hidden``: 2-D weights of the attention and MLP ``nn.Linear`` layers (q/k/v/o, gate/up/down);
- ``embedding``: weights of ``nn.Embedding`` modules (vocab x hidden);
- ``output``: the output projection (``lm_head``, vocab x hidden), untied from the embedding in LLaMA;
- ``vector``: everything else, in practice the 1-D RMSNorm weights (LLaMA has no biases).

Roles travel with the param groups as a ``"role"`` key, which torch optimizers keep untouched, so an
optimizer can also be given plain param groups (``[{"params": [...], "role": "hidden"}, ...]``) for a
model this helper does not know.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

ROLES = ("hidden", "embedding", "output", "vector")


@dataclass
class ParamSplit:
    """Named parameters by role, each list in module registration order."""

    hidden: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    embedding: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    output: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    vector: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    def of(self, role: str) -> list[nn.Parameter]:
        return [p for _, p in getattr(self, role)]

    def names(self, role: str) -> list[str]:
        return [n for n, _ in getattr(self, role)]

    def numel(self, role: str) -> int:
        return sum(p.numel() for p in self.of(role))


def find_output_layer(model: nn.Module) -> nn.Module | None:
    """The output projection: HF's ``get_output_embeddings()`` when the model has it, else the last Linear."""
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        layer = getter()
        if layer is not None:
            return layer
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


def split_parameters(model: nn.Module, output_layer: nn.Module | None = None) -> ParamSplit:
    """Assign every trainable parameter of ``model`` to exactly one role.

    A weight tied between the embedding and the output projection is seen once and counts as ``output``
    (the paper's models are untied, so this only matters for other models).
    """
    output_layer = output_layer if output_layer is not None else find_output_layer(model)
    output_ids = {id(p) for p in output_layer.parameters()} if output_layer is not None else set()
    split = ParamSplit()
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            if param.ndim < 2:
                role = "vector"
            elif id(param) in output_ids:
                role = "output"
            elif isinstance(module, nn.Embedding):
                role = "embedding"
            else:
                role = "hidden"
            getattr(split, role).append((name, param))
    return split


def role_groups(split: ParamSplit, overrides: dict[str, dict] | None = None) -> list[dict]:
    """Param groups, one per non-empty role, with per-role hyperparameter overrides merged in."""
    overrides = overrides or {}
    groups = []
    for role in ROLES:
        params = split.of(role)
        if params:
            groups.append({"params": params, "role": role, **overrides.get(role, {})})
    return groups


def infer_role(param: torch.Tensor) -> str:
    """Role for a parameter given without one in a plain param group: 1-D -> vector, else hidden."""
    return "vector" if param.ndim < 2 else "hidden"


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's per-parameter state (every tensor, whatever its name), as one unsharded
    optimizer would hold it: a DTensor counts its global size, so every rank of a run gets the same total
    (DDP and FSDP2 alike) and it compares with the paper's memory column."""
    total = 0
    for state in optimizer.state.values():
        total += _tensor_bytes(state.values())
    return total


def _tensor_bytes(values: Iterable) -> int:
    total = 0
    for value in values:
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()  # a DTensor's numel is its global one
        elif isinstance(value, dict):
            total += _tensor_bytes(value.values())
        elif isinstance(value, (list, tuple)):
            total += _tensor_bytes(value)
    return total
