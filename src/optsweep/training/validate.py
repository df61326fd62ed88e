"""Checks that run before any GPU-hour is spent. Each failure is one sentence: field, value, fix.

Unknown config-group options (``optimizer=adamx``) are caught by Hydra itself, which lists the valid
ones; what Hydra cannot know - values, ranges, combinations, devices - is checked here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from optsweep.errors import UserError
from optsweep.optim.registry import OPTIMIZERS, optimizer_options

# Optimizer fields by the range they must lie in; a field absent from an optimizer is simply not checked.
_POSITIVE = ("lr", "adam_lr", "adamw_lr", "eps")
_UNIT_INTERVAL = ("momentum", "beta", "beta1", "beta2", "gamma1", "gamma2", "gamma3")
_NON_NEGATIVE = ("weight_decay",)


class ConfigError(UserError):
    pass


def check_optimizer(opt: DictConfig) -> None:
    name = opt.get("name")
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"unknown optimizer '{name}': choose optimizer=<one of {', '.join(sorted(OPTIMIZERS))}>"
        )
    allowed = optimizer_options(name)
    given = {k for k in opt if not str(k).startswith("_") and k != "name"}
    unknown = sorted(given - allowed)
    if unknown:
        raise ConfigError(
            f"optimizer '{name}' has no option '{unknown[0]}': remove optimizer.{unknown[0]} "
            f"(its options are {', '.join(sorted(allowed))})"
        )
    for key in _POSITIVE:
        value = opt.get(key)
        if value is not None and not (_is_number(value) and value > 0):
            raise ConfigError(f"optimizer.{key}={value} must be a positive number: set e.g. optimizer.{key}=1e-3")
    for key in _UNIT_INTERVAL:
        value = opt.get(key)
        if value is not None and not (_is_number(value) and 0 <= value < 1):
            raise ConfigError(f"optimizer.{key}={value} must lie in [0, 1): set e.g. optimizer.{key}=0.9")
    betas = opt.get("betas")
    if betas is not None:
        for i, beta in enumerate(_as_list(betas)):
            if not (_is_number(beta) and 0 <= beta < 1):
                raise ConfigError(
                    f"optimizer.betas[{i}]={beta} must lie in [0, 1): set e.g. optimizer.betas=[0.9,0.999]"
                )
    for key in _NON_NEGATIVE:
        value = opt.get(key)
        if value is not None and not (_is_number(value) and value >= 0):
            raise ConfigError(f"optimizer.{key}={value} must be >= 0: set optimizer.{key}=0.0 to disable it")


def check_devices(trainer: DictConfig) -> None:
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", 1)
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(
                f"trainer.accelerator={accelerator} but this machine has no CUDA GPU: use trainer=cpu"
            )
        if isinstance(devices, int) and devices > available:
            raise ConfigError(
                f"trainer.devices={devices} but this machine has {available} GPU(s): "
                f"set trainer.devices={available} or fewer"
            )


def check_sequence_length(cfg: DictConfig) -> None:
    seq_len = cfg.data.get("seq_len")
    positions = cfg.model.get("max_position_embeddings")
    if seq_len is not None and positions is not None and seq_len > positions:
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds model {cfg.model.get('name')}'s max_position_embeddings={positions}: "
            f"set data.seq_len<={positions} or raise model.max_position_embeddings"
        )


def check_vocabulary(model_vocab: int | None, max_token_id: int, tokenizer_name: str) -> None:
    """The tokenizer must never produce an id the model has no embedding row for."""
    if model_vocab is not None and max_token_id >= model_vocab:
        raise ConfigError(
            f"tokenizer {tokenizer_name} produces ids up to {max_token_id} but model.vocab_size={model_vocab}: "
            f"set model.vocab_size>={max_token_id + 1} (or null to take the tokenizer's size)"
        )


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked from the config alone, before data or models are touched."""
    check_optimizer(cfg.optimizer)
    check_sequence_length(cfg)
    check_devices(cfg.trainer)
    train = cfg.train
    every = train.get("eval_every_n_steps")
    if not (isinstance(every, int) and every > 0):
        raise ConfigError(f"train.eval_every_n_steps={every} must be a positive integer of optimizer steps")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_list(value) -> Iterable:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value)
    return value
