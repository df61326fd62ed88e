"""Callbacks: throughput and MFU, a progress bar in optimizer steps, the divergence guard, checkpoints,
a clean stop on a signal, and the count of skipped bad data lines.

None of them synchronises the host with the device every step: timings are wall-clock over a logging
window (the device queue is bounded, so a window's average is the device's real rate), and the
divergence guard accumulates a non-finite flag on the device and reads it every ``check_every_n_steps``.

- ``StepCheckpoint`` saves every N optimizer steps and at the end of training, whatever the last step is.
- ``GracefulShutdown`` turns SIGTERM (preemption) and SIGINT (Ctrl-C) into a checkpoint at the next
  optimizer-step boundary, then stops with ``Interrupted`` so the run is marked KILLED, not FAILED.
"""

from __future__ import annotations

import math
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from optsweep import metric_names
from optsweep.models.llama import flops_per_token

# Dense bf16 peak FLOP/s per device. Lightning's own table misses current GPU names,
# so the config may set `throughput.peak_flops` explicitly; this table is only the fallback.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def completes_optimizer_step(trainer: L.Trainer) -> bool:
    """Whether the batch that just ended was the last micro batch of an optimizer step (call it from
    ``on_train_batch_end``). Lightning's fit loop is the one that knows; it has no public accessor."""
    return not trainer.fit_loop._should_accumulate()


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether the batch that just ended completed an optimizer step whose metrics are logged: every
    ``trainer.log_every_n_steps`` steps and the last one."""
    step = trainer.global_step
    return completes_optimizer_step(trainer) and (
        step % max(1, trainer.log_every_n_steps) == 0 or step == trainer.max_steps)


def detect_peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss; the message carries the step, the lr and the last finite loss."""

    def __init__(self, step: int, lr: float, last_finite_loss: float | None, detected_at: int | None = None,
                 what: str = "loss") -> None:
        last = f"{last_finite_loss:.4f}" if last_finite_loss is not None else "none yet"
        seen = f" (detected at step {detected_at})" if detected_at is not None and detected_at != step else ""
        super().__init__(
            f"training diverged: non-finite {what} at step {step}{seen}, lr {lr:.3g}, last finite loss {last}; "
            "lower optimizer.lr or raise train.warmup_steps"
        )
        self.step = step


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, step: int, path: str | None) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint {path}; resume with train.ckpt_path=last")
        self.signum = signum


class SpeedMonitor(L.Callback):
    """Logs tokens/s (total and per device), step time, the data-wait fraction, MFU and peak memory."""

    def __init__(self, seq_len: int, peak_flops: float | None = None, window: int | None = None) -> None:
        self.seq_len = seq_len
        self.peak_flops = peak_flops
        self.window = window
        self._reset_window()
        self._last_batch_end: float | None = None
        self._flops_per_token: float | None = None
        self._seen_step = 0

    def _reset_window(self) -> None:
        self._window_start = None
        self._window_steps = 0
        self._window_tokens = 0
        self._data_wait = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._seen_step = trainer.global_step
        self._flops_per_token = flops_per_token(pl_module.llama, self.seq_len)
        if self.peak_flops is None:
            self.peak_flops = detect_peak_flops()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._window_start is None:
            self._window_start = now
        elif self._last_batch_end is not None:
            self._data_wait += now - self._last_batch_end  # time spent fetching this batch
        self._window_tokens += batch["input_ids"].numel()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_batch_end = time.perf_counter()
        step = trainer.global_step
        if step == self._seen_step:
            return  # an accumulation micro batch
        self._seen_step = step
        self._window_steps += 1
        window = self.window or max(1, trainer.log_every_n_steps)
        if step % window and step != trainer.max_steps:
            return
        elapsed = self._last_batch_end - self._window_start
        world = trainer.world_size
        tokens_per_s_device = self._window_tokens / max(elapsed, 1e-9)
        metrics = {
            metric_names.THROUGHPUT: tokens_per_s_device * world,
            metric_names.THROUGHPUT_PER_DEVICE: tokens_per_s_device,
            metric_names.STEP_TIME: elapsed / self._window_steps,
            metric_names.DATA_WAIT: self._data_wait / max(elapsed, 1e-9),
            metric_names.PEAK_BYTES: float(peak_memory_bytes()),
        }
        if self.peak_flops:
            metrics[metric_names.MFU] = tokens_per_s_device * self._flops_per_token / self.peak_flops
        pl_module.log_metrics(metrics)
        pl_module.log("tok/s", metrics[metric_names.THROUGHPUT], prog_bar=True, logger=False)
        self._reset_window()
        self._window_start = self._last_batch_end


def peak_memory_bytes() -> int:
    """Peak device memory on CUDA; on CPU the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class DivergenceGuard(L.Callback):
    """Stops training on a non-finite loss, with the step, the lr and the last finite loss in the message.

    The check reads a device flag every ``check_every_n_steps`` optimizer steps (1 = every step, at the
    price of one host sync per step on GPU), and always right before a checkpoint is written, so a diverged
    state never becomes the last good checkpoint.

    ``max_skipped_steps`` > 0 tolerates rare overflows (e.g. in bf16): an optimizer step whose gradients are
    not all finite is skipped (its grads are dropped, so the optimizer leaves those parameters and their
    state alone) up to that many times over the run; the next one stops the run. This inspects the
    gradients before every optimizer step, i.e. one host sync per step.
    """

    def __init__(self, check_every_n_steps: int = 10, max_skipped_steps: int = 0) -> None:
        if check_every_n_steps < 1 or max_skipped_steps < 0:
            raise ValueError("check_every_n_steps must be >= 1 and max_skipped_steps >= 0")
        self.check_every_n_steps = check_every_n_steps
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = 0
        self._nonfinite: torch.Tensor | None = None  # any non-finite loss since the last check
        self._first_bad_step: torch.Tensor | None = None  # the step that produced it (kept on the device)
        self._last_loss: torch.Tensor | None = None
        self._step_sum: torch.Tensor | None = None  # loss summed over the micro batches of the step in progress
        self._skipping = False
        self.last_finite_loss: float | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.max_skipped_steps:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True)
        if trainer.world_size > 1:  # every rank must take the same decision
            finite = trainer.strategy.reduce(finite.float(), reduce_op="min") > 0
        self._skipping = not bool(finite)
        if not self._skipping:
            return
        self.skipped_steps += 1
        if self.skipped_steps > self.max_skipped_steps:
            self.check(trainer, force=True,
                       what=f"gradient (after {self.max_skipped_steps} skipped, divergence.max_skipped_steps)")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        pl_module.log_metrics({metric_names.SKIPPED_STEPS: self.skipped_steps})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        self._step_sum = loss if self._step_sum is None else self._step_sum + loss
        if not completes_optimizer_step(trainer):
            return
        step = trainer.global_step
        step_loss, self._step_sum = self._step_sum, None
        bad = ~torch.isfinite(step_loss)
        if self._skipping:  # this step's non-finite loss was dealt with by skipping the update
            self._skipping = False
        else:
            if self._nonfinite is None:
                self._nonfinite, self._first_bad_step = bad, torch.full_like(step_loss, step, dtype=torch.long)
            else:
                here = torch.full_like(self._first_bad_step, step)
                self._first_bad_step = torch.where(self._nonfinite, self._first_bad_step, here)
                self._nonfinite = self._nonfinite | bad
            last = self._last_loss if self._last_loss is not None else torch.full_like(step_loss, math.nan)
            self._last_loss = torch.where(bad, last, step_loss)
        checkpoint = trainer.checkpoint_callback
        every_ckpt = getattr(checkpoint, "_every_n_train_steps", 0) or 0
        if (step % self.check_every_n_steps == 0 or step >= trainer.max_steps
                or (every_ckpt and step % every_ckpt == 0)):
            self.check(trainer)

    def check(self, trainer, force: bool = False, what: str = "loss") -> None:
        if self._last_loss is not None:
            last = float(self._last_loss)
            self.last_finite_loss = last if math.isfinite(last) else self.last_finite_loss
        bad = self._nonfinite is not None and bool(self._nonfinite)
        if bad or force:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            step = int(self._first_bad_step) if bad else trainer.global_step + 1
            raise DivergenceError(step, lr, self.last_finite_loss, detected_at=trainer.global_step if bad else None,
                                  what="loss" if bad else what)

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_steps = state_dict.get("skipped_steps", 0)


class StepProgressBar(TQDMProgressBar):
    """tqdm bar over optimizer steps (not micro batches of an endless stream), so its ETA is the run's."""

    _drawn_at = 0.0  # when the bar was last redrawn (monotonic seconds)

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if trainer.global_step != bar.n and (trainer.global_step % self.refresh_rate == 0
                                             or trainer.global_step >= trainer.max_steps):
            bar.n = trainer.global_step
            bar.set_description("train", refresh=False)
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()
            self._drawn_at = time.monotonic()
        elif trainer.accumulate_grad_batches > 1 and time.monotonic() - self._drawn_at > 2.0:
            # A large accumulation on a slow machine (a paper-size batch on a CPU) can take minutes per
            # step: show which micro batch it is on, at most every 2 s (no device sync involved).
            accumulate = trainer.accumulate_grad_batches
            micro = batch_idx % accumulate + 1
            if micro < accumulate:
                bar.set_description(f"train (step {trainer.global_step + 1}: micro batch {micro}/{accumulate})")
                self._drawn_at = time.monotonic()

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        loss = items.get(metric_names.TRAIN_LOSS)
        if isinstance(loss, (int, float)) and loss < 50:
            items["ppl"] = f"{math.exp(loss):.1f}"
        return items


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that also saves the final step (a step file and ``last.ckpt``).

    With ``every_n_train_steps`` Lightning saves only at multiples of N (its end-of-training save is skipped
    once any ``last.ckpt`` was written), so a run of 10 steps with N=4 ended with step 8 as its newest
    checkpoint. Training that stops on an exception (divergence, a signal) does not reach ``on_train_end``:
    the last good checkpoint stays the newest.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        if self._should_skip_saving_checkpoint(trainer):  # also: already saved at this step
            return super().on_train_end(trainer, pl_module)
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


class GracefulShutdown(L.Callback):
    """On SIGTERM/SIGINT: finish the current optimizer step, save ``last.ckpt``, stop with ``Interrupted``."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if not _main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        received = self.received
        if trainer.world_size > 1:  # every rank must stop at the same step: agree every 10 steps
            if trainer.global_step % 10 or not completes_optimizer_step(trainer):
                return
            flag = torch.tensor(float(received or 0), device=pl_module.device)
            received = int(trainer.strategy.reduce(flag, reduce_op="max").item()) or None
        if received is None or not completes_optimizer_step(trainer):
            return
        # Lightning calls the module's own on_train_batch_end after the callbacks': let it log this step
        # first (it does so once per step), and never save a diverged state as the last good one.
        pl_module.on_train_batch_end(outputs, batch, batch_idx)
        for callback in trainer.callbacks:
            if isinstance(callback, DivergenceGuard):
                callback.check(trainer)
        path = None
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath:
            path = str(Path(checkpoint.dirpath) / "last.ckpt")
            trainer.save_checkpoint(path)
        raise Interrupted(received, trainer.global_step, path)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class SkippedLinesMonitor(L.Callback):
    """Logs ``data/bad_documents_skipped`` (summed over ranks) when the data skips bad lines."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not is_logging_step(trainer):
            return
        # every rank reads the whole validation split: count its bad lines once
        count = torch.tensor(float(trainer.datamodule.bad_lines_skipped(trainer.is_global_zero)))
        if trainer.world_size > 1:
            count = trainer.strategy.reduce(count.to(pl_module.device), reduce_op="sum")
        pl_module.log_metrics({metric_names.BAD_DOCUMENTS_SKIPPED: count})
