"""Assemble one run from the resolved config, fit it, return the objective (final validation loss).

The path of a run, top to bottom: check the config (optsweep.preflight) -> budget (accumulation, steps,
warmup) -> data -> model + optimizer + schedule (LightningModule) -> loggers and callbacks -> Trainer ->
evaluate at start -> fit -> final evaluation -> objective. A diverged run returns +inf so that sweeps can
rank it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from optsweep import metric_names, tracking
from optsweep.models.llama import build_llama, count_parameters
from optsweep.optim.registry import optimizer_factory
from optsweep.preflight import check_config, check_vocabulary, world_size
from optsweep.training.budget import Budget, BudgetError, resolve_budget
from optsweep.training.callbacks import DivergenceError, GracefulShutdown, Interrupted, SkippedLinesMonitor
from optsweep.training.checkpoint_io import (
    AtomicCheckpointIO,
    check_compatible,
    find_resume_checkpoint,
    read_checkpoint_meta,
)
from optsweep.training.module import LlamaLitModule

log = logging.getLogger(__name__)


def build_budget(cfg: DictConfig) -> Budget:
    t = cfg.train
    return resolve_budget(
        total_batch_size=t.total_batch_size,
        micro_batch_size=t.micro_batch_size,
        world_size=world_size(cfg.trainer),
        seq_len=cfg.data.seq_len,
        max_steps=t.max_steps,
        max_tokens=t.max_tokens,
        warmup_steps=t.warmup_steps,
        warmup_ratio=t.warmup_ratio,
    )


def stop_step(cfg: DictConfig, budget: Budget) -> int:
    """Where training stops: the budget's last step, or earlier with ``trainer.max_steps`` (Lightning's own
    meaning: stop after N optimizer steps; the schedule still runs over the whole budget, so the first N
    steps are exactly those of the full run, e.g. to smoke-test a paper configuration)."""
    stop = cfg.trainer.get("max_steps")
    if stop is None or stop == -1:
        return budget.max_steps
    if not 0 < stop <= budget.max_steps:
        raise BudgetError(f"trainer.max_steps={stop} must lie between 1 and the budget's {budget.max_steps} steps "
                          "(train.max_steps or train.max_tokens): lower it, or raise the budget instead")
    return stop


def build_strategy(strategy_cfg: DictConfig, world: int):
    """A strategy name Lightning knows (``auto``), or an instance from the group's ``_target_``.

    FSDP2 is ``FSDP2Strategy`` (Lightning's ModelParallelStrategy whose full checkpoints DDP can read and
    write) with all ranks data-parallel; the ``fsdp`` block of the strategy config goes to the
    LightningModule, which applies ``fully_shard`` in ``configure_model``.
    """
    options = OmegaConf.to_container(strategy_cfg, resolve=True)
    name = options.pop("name", "auto")
    options.pop("fsdp", None)
    if "_target_" not in options:
        return name
    if name == "fsdp":
        options.update(data_parallel_size=world, tensor_parallel_size=1)
    return instantiate(options)


def build_loggers(cfg: DictConfig, trial=None, resume_run_id: str | None = None) -> list:
    loggers = []
    for key, logger_cfg in (cfg.get("logger") or {}).items():
        if key == "mlflow":
            tags = tracking.run_tags(cfg)
            extra = {}
            if trial is not None:  # a sweep trial: a child of the sweep's parent run, named by its number
                tags.update(trial.mlflow_tags())
                extra["run_name"] = f"{tracking.run_name(cfg)}-{trial.run_name()}"
            if resume_run_id and not _mlflow_run_exists(logger_cfg.tracking_uri, resume_run_id):
                log.warning("the checkpoint's MLflow run %s is not in %s: logging to a new run",
                            resume_run_id, logger_cfg.tracking_uri)
                resume_run_id = None
            logger = instantiate(logger_cfg, tags=tags, run_id=resume_run_id, **extra)
            if resume_run_id:  # continue the interrupted run, shown as running again
                logger.experiment.update_run(resume_run_id, status="RUNNING")
            loggers.append(logger)
        else:
            loggers.append(instantiate(logger_cfg))
    return loggers


def _mlflow_run_exists(tracking_uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        return False
    return True


def _trial_context():
    try:
        from optsweep.sweeper import context
    except ImportError:
        return None
    return context.current()


def archive_old_checkpoints(ckpt_dir: str | Path) -> None:
    """A fresh run must not mix its checkpoints with an earlier run's: move those aside, never delete."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(ckpt_dir.stat().st_mtime))
        target = ckpt_dir.with_name(f"{ckpt_dir.name}.{stamp}")
        ckpt_dir.rename(target)
        log.info("earlier checkpoints of this run's identity moved to %s", target)


def train(cfg: DictConfig) -> float:
    """Train as configured and return the final validation loss (+inf if the run diverged)."""
    check_config(cfg)
    budget = build_budget(cfg)
    stop_at = stop_step(cfg, budget)
    if cfg.train.max_steps is None:
        # A token budget: record the step count it means, so configs that follow the run's length (e.g.
        # Stable-SPAM's total_T: ${train.max_steps}) resolve to it instead of to null.
        with open_dict(cfg):
            cfg.train.max_steps = budget.max_steps
    # init_seed: the weights' seed (follows `seed` unless set); the data order has its own, data.seed
    init_seed = cfg.get("init_seed")
    L.seed_everything(cfg.seed if init_seed is None else init_seed, workers=True)

    ckpt_path = find_resume_checkpoint(cfg.train.get("ckpt_path"), cfg.paths.ckpt_dir)
    meta = read_checkpoint_meta(ckpt_path) if ckpt_path else {}
    if ckpt_path:
        check_compatible(meta, ckpt_path, optimizer=cfg.optimizer.name, model=cfg.model.name,
                         world_size=budget.world_size)
        log.info("resuming from %s", ckpt_path)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    spec = instantiate(cfg.model)
    check_vocabulary(spec.vocab_size, datamodule.max_token_id_in_text(), datamodule.tokenizer_name)
    module = LlamaLitModule(
        model_spec=spec,
        optimizer=optimizer_factory(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        max_steps=budget.max_steps,
        warmup_steps=budget.warmup_steps,
        vocab_size=datamodule.vocab_size,
        pad_token_id=datamodule.pad_token_id,
        compile=cfg.train.compile,
        activation_checkpointing=cfg.train.activation_checkpointing,
        fsdp=OmegaConf.to_container(cfg.strategy.fsdp, resolve=True) if "fsdp" in cfg.strategy else None,
        run_meta={"optimizer": cfg.optimizer.name, "model": cfg.model.name, "seed": cfg.seed,
                  "world_size": budget.world_size},
    )

    trial = _trial_context()
    loggers = build_loggers(cfg, trial=trial, resume_run_id=meta.get("mlflow_run_id"))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(GracefulShutdown())
    if datamodule.on_bad_document == "skip":
        callbacks.append(SkippedLinesMonitor())
    if trial is not None:
        callbacks.append(trial.pruning_callback(monitor=metric_names.VAL_LOSS))

    trainer: L.Trainer = instantiate(
        cfg.trainer,
        strategy=build_strategy(cfg.strategy, budget.world_size),
        logger=loggers or False,
        callbacks=callbacks,
        max_steps=stop_at,
        max_epochs=-1,
        accumulate_grad_batches=budget.accumulate_grad_batches,
        # val_check_interval counts micro batches of the (endless) train stream
        val_check_interval=cfg.train.eval_every_n_steps * budget.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        enable_progress_bar=True,
        plugins=[AtomicCheckpointIO()],  # crash-safe saves, whatever the strategy
    )
    if trial is not None and trainer.is_global_zero:
        trial.record_worker()  # this process trains the trial (not the sweeper's, under submitit)
    # Counted on the meta device (no memory): known and logged before the first, possibly long, step.
    num_params = count_parameters(build_llama(spec, vocab_size=datamodule.vocab_size, device="meta"))
    if trainer.is_global_zero:
        for logger in loggers:
            logger.log_metrics({metric_names.PARAMS: num_params}, step=0)
    mlflow_logger = next((lg for lg in loggers if lg.__class__.__name__ == "MLFlowLogger"), None)
    if mlflow_logger is not None:
        module.run_meta["mlflow_run_id"] = mlflow_logger.run_id
        if trainer.is_global_zero:
            # the same MLflow run as the checkpoint's: a resume, recorded beside the run's first params
            resumed = ckpt_path is not None and mlflow_logger.run_id == meta.get("mlflow_run_id")
            tracking.log_run_context(mlflow_logger, cfg, [datamodule.dataset_description(split)
                                                          for split in ("train", "validation")],
                                     resumed_from=ckpt_path if resumed else None)
        if trial is not None:
            trial.run_id = mlflow_logger.run_id
    log.info("model %s: %.2fM parameters", spec.name, num_params / 1e6)
    log.info("budget: %s steps x %s sequences (%s micro x %s devices x %s accumulation), %s warmup, %.3g tokens",
             budget.max_steps, budget.total_batch_size, budget.micro_batch_size, budget.world_size,
             budget.accumulate_grad_batches, budget.warmup_steps, budget.total_tokens)
    if stop_at < budget.max_steps:
        log.info("stopping after %s of the schedule's %s steps (trainer.max_steps)", stop_at, budget.max_steps)

    if ckpt_path is None and trainer.is_global_zero:
        archive_old_checkpoints(cfg.paths.ckpt_dir)
    try:
        if cfg.train.eval_at_start and ckpt_path is None:
            trainer.validate(module, datamodule=datamodule, verbose=False)
            if mlflow_logger is not None and trainer.is_global_zero:
                # Lightning's MLFlowLogger closes the run (FINISHED) at the end of every validate(); training
                # goes on in it, so reopen it: a run killed later must not read as finished
                mlflow_logger.experiment.update_run(mlflow_logger.run_id, status="RUNNING")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.global_step % cfg.train.eval_every_n_steps:
            trainer.validate(module, datamodule=datamodule, verbose=False)
    except DivergenceError as error:
        log.error("%s; objective +inf", error)
        if mlflow_logger is not None and trainer.is_global_zero:
            print(tracking.run_link(mlflow_logger._tracking_uri, mlflow_logger.experiment_id, mlflow_logger.run_id))
        if trial is not None:
            trial.failure_reason = str(error)
        return math.inf
    except Interrupted as interrupted:
        log.warning("%s", interrupted)
        if mlflow_logger is not None and trainer.is_global_zero:
            mlflow_logger.experiment.set_terminated(mlflow_logger.run_id, "KILLED")
        raise

    if mlflow_logger is not None and trainer.is_global_zero:
        print(tracking.run_link(mlflow_logger._tracking_uri, mlflow_logger.experiment_id, mlflow_logger.run_id))
    val_loss = trainer.callback_metrics.get(metric_names.VAL_LOSS)
    objective = float(val_loss) if val_loss is not None else math.nan
    if not math.isfinite(objective):
        if trial is not None:
            trial.failure_reason = f"final validation loss is {objective}"
        return math.inf
    log.info("final val/loss %.4f (ppl %.2f)", objective, math.exp(objective))
    return objective
