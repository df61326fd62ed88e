"""Whether the model can fit at all: its weights and gradients against the memory it would train in."""

from __future__ import annotations

import logging
import os
import typing

from omegaconf import DictConfig

from optsweep.errors import ConfigError
from optsweep.preflight.devices import device_count, on_gpu, world_size

if typing.TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_BYTES_PER_PARAMETER = {"64": 8, "32": 4, "16": 2}


def bytes_per_parameter(precision) -> int:
    """Bytes of one weight as stored: true half precisions store 2, mixed ones keep fp32 weights."""
    text = str(precision)
    if text.endswith("-true"):
        return 2 if text.startswith(("16", "bf16")) else _BYTES_PER_PARAMETER.get(text.split("-")[0], 4)
    if text == "64":
        return 8
    return 4


def check_memory(cfg: DictConfig, model: torch.nn.Module) -> None:
    """Refuse a model whose weights and gradients alone exceed the memory it would train in (a lower bound:
    optimizer states and activations come on top); warn when Adam-like states would not fit either."""
    import torch

    trainer = cfg.trainer
    parameters = sum(p.numel() for p in model.parameters())
    per_weight = bytes_per_parameter(trainer.get("precision"))
    sharded = cfg.strategy.get("name") == "fsdp"
    if on_gpu(trainer):
        if not torch.cuda.is_available():
            return
        memory = torch.cuda.get_device_properties(0).total_memory
        world = world_size(trainer)
        need = 2 * per_weight * parameters / (world if sharded else 1)
        where = "each GPU has"
        fix = ("shard it with strategy=fsdp over more GPUs, use trainer.precision=bf16-true, or choose a smaller "
               "model")
    elif str(trainer.get("accelerator", "auto")) in ("cpu", "auto"):
        memory = physical_memory()
        if memory is None:
            return
        per_node = device_count(trainer.get("devices", 1)) or 1
        processes = 1 if per_node == -1 else per_node  # on CPU "auto" is one process
        need = 2 * per_weight * parameters * (1 if sharded else processes)
        where = "this machine has"
        fix = "choose a smaller model (e.g. model=llama_60m), or train on GPUs with trainer=gpu"
    else:
        return
    gib = 2**30
    name = cfg.model.get("name")
    if need > memory:
        raise ConfigError(
            f"model={name} has {parameters / 1e9:.2f}B parameters whose {trainer.get('precision')} weights and "
            f"gradients alone need {need / gib:.1f} GiB, but {where} {memory / gib:.1f} GiB: {fix}"
        )
    if 2 * need > memory:
        log.warning("model=%s: weights, gradients and Adam-like optimizer states need about %.1f GiB, and %s "
                    "%.1f GiB; the run may run out of memory", name, 2 * need / gib, where, memory / gib)


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None
