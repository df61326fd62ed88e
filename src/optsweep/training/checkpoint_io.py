"""Checkpoint files and folders that survive crashes, and finding the one to resume from.

- ``AtomicCheckpointIO`` (DDP, and FSDP2's full format) and ``finish_folder_checkpoint`` (FSDP2's DCP
  folders, see ``fsdp2.py``) write each checkpoint to a temporary sibling, make it durable (fsync) and
  rename it into place: a crash (or SIGKILL) while saving leaves the previous checkpoint intact.
- ``find_resume_checkpoint`` turns ``train.ckpt_path=last`` into the newest complete checkpoint (file or
  DCP folder) of this run's identity (task, optimizer, model, seed) and checks that a given checkpoint
  exists and can be read; ``read_checkpoint_meta`` and ``check_compatible`` check it fits this run.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from optsweep.errors import UserError


class CheckpointError(UserError):
    pass


META_FILE = "meta.pt"  # in a DCP folder, beside the shards: all of the checkpoint but model and optimizers


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves a checkpoint file crash-safely: a temporary sibling, fsynced, renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path, folder=False)
        try:
            _write_durably(checkpoint, tmp)
            _swap_into_place(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# --- crash-safe saving ------------------------------------------------------------------------------------
# A checkpoint is written under a hidden temporary name beside its final one (``.<name>.<random>.tmp``),
# made durable, then renamed into place. What a crash leaves behind is a temporary: never taken for a
# checkpoint (``newest_checkpoint``), and deleted by the next successful save of the same name.

def temporary_sibling(path: Path, folder: bool) -> Path:
    """A new, empty file or folder with a unique hidden name beside ``path`` (permissions as the umask says,
    as for the checkpoint written in place, where tempfile's would be private to the user)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    if folder:
        tmp.mkdir()
    else:
        tmp.touch(exist_ok=False)
    return tmp


def _write_durably(obj: Any, file: Path) -> None:
    with open(file, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` (files created or renamed there) durable, not only their contents."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(new: Path, path: Path) -> None:
    """Rename the complete, durable checkpoint ``new`` (a file or a folder) to ``path``.

    A file replaces a file in one atomic rename. Nothing replaces a folder that way (nor a file a folder, or
    the reverse, when a run changes format): the old one is first renamed aside to ``.<name>.<random>.old``,
    then the new one in, then the old one deleted. A crash between the two renames leaves no ``path`` but
    the whole previous checkpoint under that name, which ``newest_checkpoint`` still finds.
    """
    old = None
    if path.exists() and (path.is_dir() or new.is_dir()):
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(path, old)
    os.replace(new, path)
    _fsync_folder(path.parent)
    # The new checkpoint is in place: the old one, and whatever earlier crashes left of this name, can go.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if stale.name.endswith((".tmp", ".old")):
            remove(stale)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def finish_folder_checkpoint(tmp: Path, rest: dict[str, Any], path: Path) -> None:
    """Complete the temporary folder ``tmp`` whose shards are written: add ``rest`` (the checkpoint but its
    model and optimizers) as meta.pt, make the folder durable and swap it into place at ``path``."""
    _write_durably(rest, tmp / META_FILE)
    _fsync_folder(tmp)
    _swap_into_place(tmp, path)


def find_resume_checkpoint(ckpt_path: str | None, ckpt_dir: str | Path) -> str | None:
    """The checkpoint to resume from, or None for a fresh run. ``last`` with nothing saved yet is fresh."""
    if ckpt_path in (None, "", "none", "null"):
        return None
    if ckpt_path == "last":
        return newest_checkpoint(ckpt_dir)
    path = Path(ckpt_path)
    if not path.exists():
        raise CheckpointError(
            f"train.ckpt_path={ckpt_path} does not exist: give an existing .ckpt file, or train.ckpt_path=last "
            f"to resume the newest checkpoint in {ckpt_dir}"
        )
    return str(path)


def newest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The complete checkpoint (a file or a DCP folder) of the highest step in ``ckpt_dir``, ``last.ckpt``
    on a tie; None if there is none.

    ``last.ckpt`` is normally the newest, but a crash can come after a ``step*.ckpt`` is saved and before
    ``last.ckpt`` is, or leave the previous ``last.ckpt`` renamed aside (``.last.ckpt.<random>.old``, see
    ``_swap_into_place``), which therefore counts too. A temporary (``*.tmp``) that a crash interrupted
    never counts, nor does a folder without DCP's ``.metadata`` and ``meta.pt`` or a file that cannot be
    read (both can only come from a save that was not crash-safe).
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob("*.ckpt") if not p.name.startswith(".")]
    candidates += folder.glob(".last.ckpt.*.old")
    best, best_key = None, None
    for candidate in candidates:
        step = _saved_step(candidate)
        if step is None:
            continue
        key = (step, candidate.name == "last.ckpt")
        if best_key is None or key > best_key:
            best, best_key = candidate, key
    return str(best) if best is not None else None


def _saved_step(path: Path) -> int | None:
    """The global step a complete checkpoint was saved at; None if ``path`` is not one."""
    try:
        if path.is_dir():
            if not (path / ".metadata").is_file():
                return None
            meta = torch.load(path / META_FILE, map_location="cpu", weights_only=True)
        else:  # mmap: reads the small entries, not every tensor
            meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(meta["global_step"])
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: not a checkpoint to resume
        return None


def read_checkpoint_meta(path: str) -> dict[str, Any]:
    """The small part of a checkpoint that resuming checks before Lightning loads the rest."""
    if Path(path).is_dir():  # a sharded (DCP) checkpoint: metadata lives in its own file
        meta_file = Path(path) / META_FILE
        if not meta_file.exists() and not (Path(path) / ".metadata").exists():
            raise CheckpointError(
                f"train.ckpt_path={path} is a folder but not a sharded checkpoint (it has no .metadata): point "
                "train.ckpt_path at a .ckpt file or at a checkpoint folder, or use train.ckpt_path=last"
            )
        # meta.pt is the whole checkpoint but its model and optimizer states: ours is one entry of it
        return torch.load(meta_file, weights_only=True).get("optsweep", {}) if meta_file.exists() else {}
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same problem to the user
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}): it is corrupt or not a checkpoint; "
            "point train.ckpt_path at another one"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is a torch file but not a training checkpoint (it has no state_dict): point "
            "train.ckpt_path at a .ckpt file a run saved, or use train.ckpt_path=last"
        )
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
