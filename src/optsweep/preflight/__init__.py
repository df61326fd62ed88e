"""Checks that run before any GPU-hour is spent. Each failure is one sentence: field, value, fix
(``optsweep.errors.ConfigError``, exit status 2).

Hydra refuses, while composing, what the config's own structure rules out: a config group option that does
not exist (``optimizer=adamx``), a misspelt key (``optimizer.lrr=1``), a value of the wrong type for a key
the schema types (``train.max_steps=ten``), an override that does not parse; run.py turns its report into
one sentence (``optsweep.errors.explain``). ``schema`` holds the dataclasses it composes conf/config.yaml
onto (``register_schema()`` before composing). What Hydra cannot know is checked here, from the config
alone, before data, loggers or checkpoints are touched:

- ``keys``: keys added with ``+`` that nothing reads;
- ``values``: the ranges of the run's numbers, and what one implies for another;
- ``devices``: the trainer against the machine (accelerator, precision, devices, nodes);
- ``multirun``: under ``-m``, no strategy that relaunches the script (the Optuna sweeper asks it too);
- ``optimizer``: its options, their types and ranges, and the optimizer built on the model's shapes;
- ``model``: the model buildable on the meta device, its sequence length and vocabulary;
- ``memory``: whether its weights and gradients can fit at all;

with ``fields`` (the one-field rules they share); ``optsweep.errors.render`` shows a value in a sentence.

Heavy imports (torch, Lightning, the optimizer registry) happen inside the checks that need them:
``check_values`` refuses a bad number before they cost their seconds.
"""

from __future__ import annotations

from omegaconf import DictConfig

from optsweep.preflight.devices import check_devices, check_precision, check_trainer, device_count, world_size
from optsweep.preflight.keys import check_keys, check_schema_keys
from optsweep.preflight.memory import check_memory
from optsweep.preflight.model import check_sequence_length, check_vocabulary, stand_in_model
from optsweep.preflight.multirun import check_multirun
from optsweep.preflight.optimizer import check_optimizer, check_optimizer_builds, check_optimizer_values
from optsweep.preflight.schema import register_schema
from optsweep.preflight.values import check_data, check_scheduler, check_train

__all__ = ["check_config", "check_multirun", "check_values", "check_vocabulary", "device_count",
           "register_schema", "world_size"]


def check_values(cfg: DictConfig) -> None:
    """The checks that need neither torch nor Lightning: run.py runs them before importing either."""
    check_schema_keys(cfg)
    _check_run_numbers(cfg)
    check_optimizer_values(cfg.optimizer)


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked from the config alone, before data is read, a model allocated or a
    logger opened (the model and optimizer are built on the meta device: shapes only)."""
    check_keys(cfg)
    _check_run_numbers(cfg)
    check_precision(cfg.trainer)
    check_devices(cfg.trainer)
    check_sequence_length(cfg)
    check_optimizer(cfg.optimizer)
    model = stand_in_model(cfg.model)
    check_optimizer_builds(cfg.optimizer, model)
    check_memory(cfg, model)


def _check_run_numbers(cfg: DictConfig) -> None:
    """The run's own numbers (train, data, scheduler, trainer), checked without torch by both entry points."""
    check_train(cfg)
    check_data(cfg)
    check_scheduler(cfg.get("scheduler"))
    check_trainer(cfg.trainer)
