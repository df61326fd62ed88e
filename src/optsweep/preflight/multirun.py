"""Refuse, before the first trial, a multirun whose training strategy relaunches the script (checked by
``run.py`` under ``-m`` and by the Optuna sweeper).

Checked only when jobs run inside the sweeper's process (Hydra's basic launcher); a launcher that starts
each job as its own process (submitit) does not have the problem.

Lightning starts the extra processes of `ddp` (start_method popen), FSDP, ModelParallel (FSDP2) and
DeepSpeed by running `sys.argv` again; under `-m` the children re-run the whole sweep instead of joining
the trial. `ddp_spawn` / `ddp_fork` start their workers from inside the trial and are fine.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optsweep.errors import ConfigError
from optsweep.preflight.devices import device_count

# Lightning's registered strategy names that launch by re-running the script
_RELAUNCHING_NAMES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false", "fsdp",
                      "fsdp_cpu_offload", "deepspeed", "model_parallel")
_RELAUNCHING_CLASSES = ("FSDPStrategy", "ModelParallelStrategy", "FSDP2Strategy", "DeepSpeedStrategy")
_SPAWNING_METHODS = ("spawn", "fork", "forkserver")


def relaunches(strategy: Any) -> bool:
    """True for a strategy config (a name, or a node with `_target_`) whose launcher re-runs the script."""
    if strategy is None:
        return False
    if isinstance(strategy, str):
        return strategy in _RELAUNCHING_NAMES or strategy.startswith("deepspeed")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig | dict) else ""
    cls = target.rsplit(".", 1)[-1]
    if cls == "DDPStrategy":
        return strategy.get("start_method", "popen") not in _SPAWNING_METHODS
    return cls in _RELAUNCHING_CLASSES


def _auto(strategy: Any) -> bool:
    if strategy is None or isinstance(strategy, str):
        return strategy in (None, "auto")
    return "_target_" not in strategy and strategy.get("name", "auto") == "auto"


def _single_device(trainer: Any) -> bool:
    devices = trainer.get("devices", "auto") if trainer is not None else "auto"
    nodes = trainer.get("num_nodes", 1) if trainer is not None else 1
    if nodes not in (1, None):
        return False
    count = device_count(devices)
    # Lightning's "auto" devices on CPU is one process
    return count == 1 or (count == -1 and str(trainer.get("accelerator", "auto")) == "cpu")


def multirun_blocker(config: DictConfig, choice: str | None = None) -> str | None:
    """The one-sentence reason this job config cannot run inside a Hydra multirun, or None."""
    strategy = OmegaConf.select(config, "strategy", default=None)
    if strategy is None:
        strategy = OmegaConf.select(config, "trainer.strategy", default=None)
    trainer = OmegaConf.select(config, "trainer", default=None)
    # Refused even on one device, where it would happen to work: the rule stays simple and the advice
    # (ddp_spawn) costs nothing there. "auto" on several devices is Lightning's ddp.
    if not (relaunches(strategy) or (_auto(strategy) and not _single_device(trainer))):
        return None
    name = choice or (strategy if isinstance(strategy, str) else strategy.get("name", strategy.get("_target_")))
    if _auto(strategy):
        name = f"{name or 'auto'} on several devices (Lightning's ddp)"
    return (f"Hydra multirun cannot train with strategy={name}: Lightning starts its extra processes by "
            "re-running the command, which would re-run the whole sweep; use strategy=ddp_spawn for sweeps, "
            "or run each trial as its own process (hydra/launcher=submitit_slurm, see sweeps/README.md).")


def relaunched_child() -> bool:
    """True in a process Lightning (or torchrun) started as a non-zero rank: it must not sweep."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("RANK", "0") != "0"


def check_multirun(cfg: DictConfig, hydra_cfg) -> None:
    """Under ``-m`` with Hydra's in-process launcher, refuse strategies that relaunch the script (each
    rank would re-run the whole sweep); the Optuna sweeper checks the same before its first trial."""
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if launcher and not launcher.endswith("BasicLauncher"):
        return
    choice = OmegaConf.select(hydra_cfg, "runtime.choices.strategy", default=None)
    blocker = multirun_blocker(cfg, choice)
    if blocker:
        raise ConfigError(blocker.rstrip("."))
