"""The LightningModule: LLaMA, its loss over non-pad tokens, the optimizer from the registry, the schedule.

Everything about *how fast* lives in callbacks (``training/callbacks.py``); this file is the math of one
training step and of evaluation, kept close to the paper's script (GaLore's ``torchrun_main.py``):
- the training loss is the mean over the non-pad tokens of each micro batch (labels are -100 at pad),
  averaged over gradient-accumulation steps by Lightning;
- evaluation reports both a token-weighted loss (``val/loss``, ``val/ppl``) and the paper's estimator
  (``val/loss_paper``: the sum of per-batch mean losses divided by the number of batches + 1, GaLore's
  quirk that reads ~3% lower), so numbers can be compared with the paper's tables and said which is which.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from optsweep import metric_names
from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.groups import state_bytes
from optsweep.training.callbacks import completes_optimizer_step, is_logging_step


class LlamaLitModule(L.LightningModule):
    def __init__(
        self,
        model_spec: ModelSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Callable[[int], float]],
        max_steps: int,
        warmup_steps: int,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
        fsdp: dict | None = None,
        run_meta: dict | None = None,
    ) -> None:
        super().__init__()
        # The factories are Hydra partials; hyperparameters are logged from the resolved config instead.
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "model_spec", "run_meta"], logger=False)
        # optimizer, model, seed, MLflow run id: checked and reused when a run resumes
        self.run_meta = dict(run_meta or {})
        self.model_spec = model_spec
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.model: nn.Module | None = None
        # Token counters are checkpointed (on_save_checkpoint) so a resumed run keeps counting.
        self.tokens_seen = 0  # nominal tokens incl. padding, summed over ranks (known without a sync)
        self.tokens_seen_nonpad = torch.zeros((), dtype=torch.long)  # this rank's non-pad tokens
        self._val_sums: torch.Tensor | None = None
        self._step_loss: torch.Tensor | None = None
        self._step_micro_batches = 0
        self.optimizer_state_bytes: int | None = None

    # ----------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Build the model here (not in __init__) so that sharded strategies can build it per rank."""
        if self.model is not None:
            return
        self.model = build_llama(
            self.model_spec, vocab_size=self.hparams.vocab_size, pad_token_id=self.hparams.pad_token_id
        )
        if self.hparams.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.hparams.fsdp is not None:
            self._fully_shard(self.hparams.fsdp)
        if self.hparams.compile:
            self.model = torch.compile(self.model)

    def _fully_shard(self, options: dict) -> None:
        """FSDP2: one ``fully_shard`` per decoder layer, then the root (embedding, final norm, lm_head).

        Parameters become DTensors sharded on dim 0; the optimizers handle that (optim/sharding.py).
        """
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = self.device_mesh["data_parallel"]
        kwargs = {"mesh": mesh, "reshard_after_forward": options.get("reshard_after_forward", True)}
        precision = options.get("mixed_precision")
        if precision:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=getattr(torch, precision["param_dtype"]),
                reduce_dtype=getattr(torch, precision.get("reduce_dtype", "float32")),
            )
        for layer in self.model.model.layers:
            fully_shard(layer, **kwargs)
        fully_shard(self.model, **kwargs)

    @property
    def llama(self) -> nn.Module:
        """The uncompiled model (for parameter grouping and counting)."""
        return getattr(self.model, "_orig_mod", self.model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # transformers shifts the labels and averages over the positions whose label is not -100 (pad).
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"])
        return out.loss

    # -------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.tokens_seen += batch["input_ids"].numel() * self.trainer.world_size
        self.tokens_seen_nonpad = self.tokens_seen_nonpad.to(loss.device) + batch["attention_mask"].sum()
        # Summed on the device; read at the logging interval only, so no per-step host sync.
        detached = loss.detach().float()
        self._step_loss = detached if self._step_loss is None else self._step_loss + detached
        self._step_micro_batches += 1
        self.log(metric_names.TRAIN_LOSS, loss, prog_bar=True, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not completes_optimizer_step(self.trainer):
            return
        step = self.trainer.global_step
        if step == 1:
            self._log_sizes()
        if is_logging_step(self.trainer):
            self._log_progress()
        self._step_loss, self._step_micro_batches = None, 0

    def log_metrics(self, metrics: dict[str, float | torch.Tensor]) -> None:
        """Send metrics to every logger at step = optimizer steps completed (0 = the initial model).

        Lightning's own ``self.log`` files training-time metrics one step early (before its step counter
        moves), which would put "after 1000 steps" at 999 beside an initial evaluation at 0.
        """
        values = {k: float(v) for k, v in metrics.items()}
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(values, step=self.trainer.global_step)

    def _log_progress(self) -> None:
        optimizer = self.trainer.optimizers[0]
        metrics = {metric_names.LR: optimizer.param_groups[0]["lr"], metric_names.TOKENS: self.tokens_seen}
        for group in optimizer.param_groups:
            if "role" in group:
                metrics[metric_names.LR_OF_ROLE + group["role"]] = group["lr"]
        loss = self._step_loss / max(1, self._step_micro_batches)
        nonpad = self.tokens_seen_nonpad.float()
        if self.trainer.world_size > 1:
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
            nonpad = self.trainer.strategy.reduce(nonpad, reduce_op="sum")
        metrics[metric_names.TRAIN_LOSS] = loss
        metrics[metric_names.TOKENS_NONPAD] = nonpad
        self.log_metrics(metrics)

    def _log_sizes(self) -> None:
        """Optimizer-state bytes (and weights + state), measured once the (lazy) state exists."""
        optimizer = self.trainer.optimizers[0]
        param_bytes = sum(p.numel() * p.element_size() for p in self.llama.parameters())
        # the whole optimizer's state, the same on every rank (replicated under DDP, global size of a
        # DTensor under FSDP2); what one device holds is in memory/peak_bytes
        self.optimizer_state_bytes = state_bytes(optimizer)
        self.log_metrics({  # model/params is logged by train() before the first step
            metric_names.STATE_BYTES: self.optimizer_state_bytes,
            metric_names.MODEL_OPTIMIZER_BYTES: param_bytes + self.optimizer_state_bytes,
        })

    # ------------------------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        # [sum of token losses, non-pad target tokens, sum of per-batch mean losses, batches]
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        targets = (batch["labels"][:, 1:] != -100).sum()
        self._val_sums += torch.stack([loss.double() * targets, targets.double(),
                                       loss.double(), torch.ones((), dtype=torch.float64, device=self.device)])

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss_sum, tokens, batch_means, batches = sums.tolist()
        loss = loss_sum / tokens if tokens else float("nan")
        loss_paper = batch_means / (batches + 1)  # GaLore's evaluator starts its batch count at 1
        self.log(metric_names.VAL_PPL, _safe_exp(loss), prog_bar=True, logger=False)
        self.log(metric_names.VAL_LOSS, loss, logger=False)  # the objective sweeps and pruning read
        self.log_metrics({
            metric_names.VAL_LOSS: loss,
            metric_names.VAL_PPL: _safe_exp(loss),
            metric_names.VAL_LOSS_PAPER: loss_paper,
            metric_names.VAL_PPL_PAPER: _safe_exp(loss_paper),
            metric_names.VAL_TOKENS: tokens,
        })

    # ----------------------------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(model=self.llama)
        schedule = self.scheduler_factory(warmup_steps=self.hparams.warmup_steps,
                                          total_steps=self.hparams.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning zeroes gradients only after the next forward; freeing them here keeps them from
        # sitting beside that forward's activations (measured: +29% peak memory for SCALE on CPU).
        optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["optsweep"] = dict(self.run_meta)
        checkpoint["optsweep_counters"] = {
            "tokens_seen": int(self.tokens_seen),
            "tokens_seen_nonpad": int(self.tokens_seen_nonpad.item()),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        counters = checkpoint.get("optsweep_counters", {})
        self.tokens_seen = counters.get("tokens_seen", 0)
        self.tokens_seen_nonpad = torch.tensor(counters.get("tokens_seen_nonpad", 0), dtype=torch.long)


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")
