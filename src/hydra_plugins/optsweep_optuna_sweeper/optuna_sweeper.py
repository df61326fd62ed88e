"""The Sweeper Hydra instantiates from `hydra.sweeper`; it hands everything to optsweep.sweeper.core."""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, **sweeper_cfg: Any) -> None:
        from optsweep.sweeper.core import OptunaSweep

        self._impl = OptunaSweep(**sweeper_cfg)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any | None:
        return self._impl.sweep(arguments)
