"""A stand-in for run.py in the sweeper tests: same sweep layout, a cheap objective with switches to raise,
diverge, sleep, stop as if on SIGTERM, or train a one-parameter Lightning model under the pruning callback."""

import math
import os
import signal
import time

import hydra
from omegaconf import DictConfig

from optsweep.sweeper import context


def _mlflow_child(cfg: DictConfig, ctx: context.TrialContext) -> None:
    # what the project's MLflow logger does for a trial: a run tagged as the sweep run's child
    from mlflow import MlflowClient

    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.logger.mlflow.experiment_name)
    run = client.create_run(experiment.experiment_id, tags=ctx.mlflow_tags(), run_name=ctx.run_name())
    client.log_param(run.info.run_id, "x", cfg.x)
    ctx.run_id = run.info.run_id


def _fit_with_pruning(cfg: DictConfig, ctx: context.TrialContext) -> float:
    import lightning.pytorch as pl
    import torch

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            return (self.w - 1.0) ** 2

        def validation_step(self, batch, batch_idx):
            # later trials are worse at every step: the median pruner must stop them
            self.log("val/loss", (self.w - 1.0) ** 2 + 10.0 * ctx.number)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.zeros(64, 1), batch_size=1)
    trainer = pl.Trainer(max_steps=8, val_check_interval=2, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[ctx.pruning_callback("val/loss")])
    trainer.fit(Model(), data, data)
    return float(trainer.callback_metrics["val/loss"])


def _slow_parent_creation(seconds: float) -> None:
    # TOY_SLOW_PARENT: creating the sweep's parent run takes that long, so workers started together are all
    # inside find-or-create at once (the race a tracking server, which has no lock, leaves open)
    from mlflow import MlflowClient

    create = MlflowClient.create_run

    def slow(self, experiment_id, *args, tags=None, **kwargs):
        if (tags or {}).get("optuna.role") == "sweep":
            time.sleep(seconds)
        return create(self, experiment_id, *args, tags=tags, **kwargs)

    MlflowClient.create_run = slow


if os.environ.get("TOY_SLOW_PARENT"):
    _slow_parent_creation(float(os.environ["TOY_SLOW_PARENT"]))


class Interrupted(Exception):
    """Like optsweep.training's: training stopped on a signal after saving its checkpoint."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    ctx = context.current()
    if ctx is not None:
        ctx.record_worker()  # as run.py's training does
    if ctx is not None and cfg.logger.mlflow.tracking_uri:
        _mlflow_child(cfg, ctx)
    number = ctx.number if ctx is not None else -1
    if number in cfg.raise_on:
        raise RuntimeError(f"boom in trial {number}")
    if number in cfg.diverge_on:
        ctx.failure_reason = "non-finite loss at step 3"
        return math.inf
    # test knobs outside the config, so that the command (and thus the study) stays the same
    if str(number) in os.environ.get("TOY_INTERRUPT_ON", "").split(","):
        raise Interrupted(signal.SIGTERM)
    time.sleep(float(os.environ.get("TOY_SLEEP", cfg.sleep)))
    if cfg.lightning:
        return _fit_with_pruning(cfg, ctx)
    return (cfg.x - 0.3) ** 2 + cfg.y + 0.01 * cfg.seed


if __name__ == "__main__":
    main()
