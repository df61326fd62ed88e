"""The trainer against the machine: accelerator, precision, devices (the one parser of ``trainer.devices``),
nodes, and the strategies a multirun cannot use."""

from __future__ import annotations

import os
import typing
from functools import lru_cache

from omegaconf import DictConfig, ListConfig

from optsweep.errors import ConfigError
from optsweep.preflight.fields import is_int, is_number, require_integer, require_one_of

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_PRECISIONS_SHOWN = "32-true, bf16-true, bf16-mixed, 16-mixed, 16-true or 64-true"


def check_trainer(trainer: DictConfig) -> None:
    require_one_of("trainer.accelerator", trainer.get("accelerator", "auto"), ACCELERATORS, "an accelerator",
                   f"choose trainer=cpu, trainer=gpu or trainer.accelerator=<one of {', '.join(ACCELERATORS)}>")
    devices = trainer.get("devices", "auto")
    if device_count(devices) is None:
        raise ConfigError(f"trainer.devices={devices} must be a positive number of devices, a list of device "
                          "indices or auto: set e.g. trainer.devices=1")
    require_integer(trainer, "trainer.num_nodes", least=1, example=1)
    stop = trainer.get("max_steps")
    if stop is not None and stop != -1 and not (is_int(stop) and stop > 0):
        raise ConfigError(f"trainer.max_steps={stop} must be a positive number of steps to stop after: set e.g. "
                          "trainer.max_steps=100, or null to run the whole budget")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and not (is_number(clip) and clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip} must be a non-negative norm: set e.g. "
                          "trainer.gradient_clip_val=1.0, or null to clip nothing")
    require_integer(trainer, "trainer.log_every_n_steps", least=1, example=10)


def check_precision(trainer: DictConfig) -> None:
    """Apart from ``check_trainer``: Lightning's list of precisions costs an import of torch."""
    precision = trainer.get("precision")
    valid = _precisions() if precision is not None else ()
    if valid:
        require_one_of("trainer.precision", precision, valid, "a precision Lightning knows",
                       f"choose trainer.precision=<one of {_PRECISIONS_SHOWN}>")


@lru_cache(maxsize=1)
def _precisions() -> tuple:
    try:
        from lightning.fabric.connector import _PRECISION_INPUT
    except ImportError:  # pragma: no cover - another Lightning: let it judge
        return ()
    values = []
    for literal in typing.get_args(_PRECISION_INPUT):
        values.extend(typing.get_args(literal) or (literal,))
    return tuple(values)


def device_count(devices) -> int | None:
    """How many devices on this node a ``trainer.devices`` value asks for; -1 for "all"; None if invalid.
    The one parser of ``trainer.devices``: checks, the world size and the sweeper's guard all read it here."""
    if devices in ("auto", -1, "-1"):
        return -1
    if is_int(devices):
        return devices if devices > 0 else None
    if isinstance(devices, str):  # "2" (a count), "0,1" or "0," (indices)
        text = devices.strip()
        if text.isdigit():
            return int(text) or None
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if "," in text and parts and all(p.isdigit() for p in parts) and len(set(parts)) == len(parts):
            return len(parts)
        return None
    if isinstance(devices, (list, tuple, ListConfig)):
        items = list(devices)
        if items and all(is_int(d) and d >= 0 for d in items) and len(set(items)) == len(items):
            return len(items)
    return None


def world_size(trainer: DictConfig) -> int:
    """Processes that will train: devices per node (all GPUs for "auto" or -1 on a GPU, else one) x nodes."""
    count = device_count(trainer.get("devices", 1)) or 1
    if count == -1:
        import torch

        count = torch.cuda.device_count() if on_gpu(trainer) else 1
    return count * int(trainer.get("num_nodes", 1) or 1)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def on_gpu(trainer: DictConfig) -> bool:
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_devices(trainer: DictConfig) -> None:
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", 1)
    count = device_count(devices)
    if on_gpu(trainer):  # gpu/cuda, or auto on a machine with CUDA
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(
                f"trainer.accelerator={accelerator} but this machine has no CUDA GPU: use trainer=cpu"
            )
        if count is not None and count > available:
            raise ConfigError(
                f"trainer.devices={devices} but this machine has {available} GPU(s): "
                f"set trainer.devices={available} or fewer"
            )
        if isinstance(devices, (list, ListConfig)) and max(devices) >= available:
            raise ConfigError(f"trainer.devices={list(devices)} names GPU {max(devices)} but this machine has GPUs "
                              f"0 to {available - 1}: list only those")
    elif accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but this machine has no Apple GPU: use trainer=cpu")
    elif accelerator == "tpu":
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            raise ConfigError("trainer.accelerator=tpu but torch_xla is not installed here: use trainer=cpu or "
                              "trainer=gpu") from None
    else:  # CPU: one training process per device
        cores = usable_cpus()
        if count is not None and count > cores:
            raise ConfigError(
                f"trainer.devices={devices} on CPU starts {count} training processes but this machine has {cores} "
                f"CPU core(s): set trainer.devices={cores} or fewer"
            )
