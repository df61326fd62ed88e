"""Lightning callback that reports the validation loss to an Optuna trial and stops a hopeless run."""

from __future__ import annotations

import math

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer

from optsweep import metric_names
from optsweep.sweeper.attrs import PRUNED_ATTR


class OptunaPruning(Callback):
    """At each validation end: report `monitor` at step trainer.global_step, raise optuna.TrialPruned when
    the study's pruner says so.

    A report at the run's last step (``trainer.max_steps``) never prunes: the trial has spent its whole
    budget, and its final loss is its value (COMPLETE), not a reason to stop it.

    Only global rank 0 talks to the storage; its decision is broadcast so every rank stops at the same
    step. The step is also written to the trial (`pruned_at_step`) before raising, so the sweeper knows
    the trial was pruned even when the exception reaches it wrapped (e.g. from a ddp_spawn worker).
    """

    def __init__(self, trial: optuna.Trial, monitor: str = metric_names.VAL_LOSS) -> None:
        self.trial = trial
        self.monitor = monitor

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                raise KeyError(f"pruning monitors {self.monitor!r}, which was not logged; logged: "
                               f"{sorted(trainer.callback_metrics)}")
            value = float(value)
            # A non-finite loss is the NaN guard's business: it fails the trial with its reason.
            if math.isfinite(value):
                self.trial.report(value, step=step)
                last = 0 < trainer.max_steps <= step  # max_steps -1: no last step known
                prune = not last and self.trial.should_prune()
            if prune:
                self.trial.set_user_attr(PRUNED_ATTR, step)
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            raise optuna.TrialPruned(f"pruned at step {step}: {self.monitor} is worse than the pruner allows")
