"""Optimizer state measured after one step on a meta-device model (shapes only: nothing is allocated).

The model comes from ``build_llama(..., device="meta")`` in bf16; every parameter gets a meta gradient and
the optimizer takes ONE step, which creates its lazy state. Every state tensor with at least one dimension
is counted; scalar step counters (0-d tensors or Python numbers) are not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch

from optsweep.models.llama import ModelSpec, build_llama


def meta_model(spec: ModelSpec) -> torch.nn.Module:
    """The model in bf16 on the meta device, each parameter with a meta gradient, ready for one step."""
    model = build_llama(spec, device="meta").to(torch.bfloat16)
    for param in model.parameters():
        param.grad = torch.empty_like(param)
    return model


_LAYER = re.compile(r"\.layers\.\d+\.")


@dataclass
class MetaModels:
    """A model on the meta device, and the same shapes with one decoder layer.

    Stepping an optimizer on meta tensors still runs every operation through Python meta kernels (about
    10 ms per parameter for the projection methods), so a 7B model's 291 tensors would take seconds per
    optimizer. Every decoder layer has the same shapes and roles, so the state the optimizer keeps for
    ``layers.0.<x>`` of the one-layer model is what it keeps for ``layers.<i>.<x>`` of the full model;
    ``full_depth=True`` steps the whole model instead (tests check that both agree).
    """

    full: torch.nn.Module
    one_layer: torch.nn.Module | None

    @classmethod
    def build(cls, spec: ModelSpec, full_depth: bool = False) -> MetaModels:
        full = meta_model(spec)
        names = [n for n, _ in full.named_parameters()]
        shallow = not full_depth and spec.num_hidden_layers > 1 and any(_LAYER.search(n) for n in names)
        one_layer = meta_model(replace(spec, num_hidden_layers=1)) if shallow else None
        return cls(full=full, one_layer=one_layer)


def measure_state(factory: Callable[..., torch.optim.Optimizer], models: MetaModels) -> tuple[int, int]:
    """(elements, bytes at their real dtypes) of the optimizer state for the full model, after one step."""
    if models.one_layer is None:
        return _sum(_state_by_name(factory, models.full).values())
    per_name = _state_by_name(factory, models.one_layer)
    parts = [per_name.pop(None, (0, 0))]  # state not keyed by a parameter counts once
    for name, _ in models.full.named_parameters():
        parts.append(per_name.get(_LAYER.sub(".layers.0.", name), (0, 0)))
    return _sum(parts)


def _state_by_name(factory, model) -> dict[str | None, tuple[int, int]]:
    optimizer = factory(model=model)
    optimizer.step()
    names = {id(p): n for n, p in model.named_parameters()}
    per_name: dict[str | None, tuple[int, int]] = {}
    for key, state in optimizer.state.items():
        name = names.get(id(key))
        per_name[name] = _sum([per_name.get(name, (0, 0)), state_elements(state)])
    return per_name


def _sum(parts: Iterable[tuple[int, int]]) -> tuple[int, int]:
    elements = nbytes = 0
    for e, b in parts:
        elements += e
        nbytes += b
    return elements, nbytes


def state_elements(state) -> tuple[int, int]:
    """(elements, bytes at their real dtypes) of every tensor with at least one dimension in ``state``
    (a tensor, or dicts / lists / tuples of them; numbers and 0-d step counters are not counted)."""
    elements = nbytes = 0
    stack: list = [state]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            if value.ndim > 0:
                local = value.to_local() if hasattr(value, "to_local") else value  # a DTensor's own shard
                elements += local.numel()
                nbytes += local.numel() * local.element_size()
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return elements, nbytes
