"""Callbacks: measured throughput and MFU, a progress bar counted in optimizer steps, divergence guard.

None of them synchronises the host with the device every step: timings are wall-clock over a logging
window (the device queue is bounded, so a window's average is the device's real rate), and the
divergence guard accumulates a non-finite flag on the device and reads it every ``check_every_n_steps``.
"""

from __future__ import annotations

import math
import resource
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from optsweep.models.llama import flops_per_token

# Dense bf16 peak FLOP/s per device. Lightning's own table misses current GPU names (platform-notes.md),
# so the config may set `throughput.peak_flops` explicitly; this table is only the fallback.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


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

    def __init__(self, step: int, lr: float, last_finite_loss: float | None) -> None:
        last = f"{last_finite_loss:.4f}" if last_finite_loss is not None else "none yet"
        super().__init__(
            f"training diverged: non-finite loss by step {step} at lr {lr:.3g} (last finite loss {last}); "
            "lower optimizer.lr or raise train.warmup_steps"
        )
        self.step = step


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
            "throughput/tokens_per_s": tokens_per_s_device * world,
            "throughput/tokens_per_s_per_device": tokens_per_s_device,
            "throughput/step_time_s": elapsed / self._window_steps,
            "throughput/data_wait_frac": self._data_wait / max(elapsed, 1e-9),
            "memory/peak_bytes": float(peak_memory_bytes()),
        }
        if self.peak_flops:
            metrics["throughput/mfu"] = tokens_per_s_device * self._flops_per_token / self.peak_flops
        pl_module.log_metrics(metrics)
        pl_module.log("tok/s", metrics["throughput/tokens_per_s"], prog_bar=True, logger=False)
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
    price of one host sync per step on GPU).
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._nonfinite: torch.Tensor | None = None
        self._last_loss: torch.Tensor | None = None
        self.last_finite_loss: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach()
        bad = ~torch.isfinite(loss)
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        self._last_loss = torch.where(bad, self._last_loss, loss) if self._last_loss is not None else loss
        step = trainer.global_step
        checkpoint = trainer.checkpoint_callback
        every_ckpt = getattr(checkpoint, "_every_n_train_steps", 0) or 0
        # Also check right before every checkpoint, so a diverged state is never saved as the last good one.
        if (step % self.check_every_n_steps == 0 or step >= trainer.max_steps
                or (every_ckpt and step % every_ckpt == 0)):
            self.check(trainer)

    def check(self, trainer) -> None:
        if self._nonfinite is None:
            return
        last = float(self._last_loss)
        self.last_finite_loss = last if math.isfinite(last) else self.last_finite_loss
        if bool(self._nonfinite):
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            raise DivergenceError(trainer.global_step, lr, self.last_finite_loss)


class StepProgressBar(TQDMProgressBar):
    """tqdm bar over optimizer steps (not micro batches of an endless stream), so its ETA is the run's."""

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
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        loss = items.get("train/loss")
        if isinstance(loss, (int, float)) and loss < 50:
            items["ppl"] = f"{math.exp(loss):.1f}"
        return items
