"""Checkpoints that survive crashes, resumes that continue the same run, shutdowns that lose nothing.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same folder, fsyncs it and
  renames it into place: a crash (or SIGKILL) while saving leaves the previous checkpoint intact.
- ``find_resume_checkpoint`` turns ``train.ckpt_path=last`` into the newest ``last.ckpt`` of this run's
  identity (task, optimizer, model, seed) and checks that a given checkpoint exists and can be read.
- ``GracefulShutdown`` turns SIGTERM (preemption) and SIGINT (Ctrl-C) into a checkpoint at the next
  optimizer-step boundary, then stops with ``Interrupted`` so the run is marked KILLED, not FAILED.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from optsweep.errors import UserError


class CheckpointError(UserError):
    pass


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, step: int, path: str | None) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint {path}; resume with train.ckpt_path=last")
        self.signum = signum


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def find_resume_checkpoint(ckpt_path: str | None, ckpt_dir: str | Path) -> str | None:
    """The checkpoint to resume from, or None for a fresh run. ``last`` with nothing saved yet is fresh."""
    if ckpt_path in (None, "", "none", "null"):
        return None
    if ckpt_path == "last":
        last = Path(ckpt_dir) / "last.ckpt"
        return str(last) if last.exists() else None
    path = Path(ckpt_path)
    if not path.exists():
        raise CheckpointError(
            f"train.ckpt_path={ckpt_path} does not exist: give an existing .ckpt file, or train.ckpt_path=last "
            f"to resume the newest checkpoint in {ckpt_dir}"
        )
    return str(path)


def read_checkpoint_meta(path: str) -> dict[str, Any]:
    """The small part of a checkpoint that resuming checks before Lightning loads the rest."""
    if Path(path).is_dir():  # a sharded (DCP) checkpoint: metadata lives in its own file
        meta_file = Path(path) / "meta.pt"
        return torch.load(meta_file, weights_only=True) if meta_file.exists() else {}
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same problem to the user
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}): it is corrupt or not a checkpoint; "
            "point train.ckpt_path at another one"
        ) from None
    return checkpoint.get("optsweep", {})


def check_compatible(meta: dict[str, Any], path: str, optimizer: str, model: str,
                     world_size: int | None = None) -> None:
    saved_optimizer, saved_model = meta.get("optimizer"), meta.get("model")
    if saved_model is not None and saved_model != model:
        raise CheckpointError(
            f"checkpoint {path} was trained with model={saved_model}, not model={model}: "
            f"resume with model={saved_model} or start fresh without train.ckpt_path"
        )
    if saved_optimizer is not None and saved_optimizer != optimizer:
        raise CheckpointError(
            f"checkpoint {path} was trained with optimizer={saved_optimizer}, not optimizer={optimizer}: "
            f"resume with optimizer={saved_optimizer} or start fresh without train.ckpt_path"
        )
    saved_world = meta.get("world_size")
    if saved_world is not None and world_size is not None and saved_world != world_size:
        # The train stream's position is saved per rank (each rank reads its own documents), and it cannot
        # be re-split over another number of ranks without repeating or skipping data.
        raise CheckpointError(
            f"checkpoint {path} was saved by {saved_world} processes but this run has {world_size}, and the "
            f"data stream's position is per process: resume with {saved_world} processes in all "
            f"(trainer.devices x trainer.num_nodes)"
        )


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
            if trainer.global_step % 10 or trainer.fit_loop._should_accumulate():
                return
            flag = torch.tensor(float(received or 0), device=pl_module.device)
            received = int(trainer.strategy.reduce(flag, reduce_op="max").item()) or None
        if received is None or trainer.fit_loop._should_accumulate():
            return
        # Lightning calls the module's own on_train_batch_end after the callbacks': let it log this step
        # first (it does so once per step), and never save a diverged state as the last good one.
        pl_module.on_train_batch_end(outputs, batch, batch_idx)
        for callback in trainer.callbacks:
            if hasattr(callback, "check") and callback.__class__.__name__ == "DivergenceGuard":
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
