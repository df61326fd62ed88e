"""FSDP2 training whose checkpoints resume exactly and survive crashes.

- ``FSDP2Strategy`` makes FSDP2's full-format checkpoints (one file) the same plain checkpoints DDP writes,
  so that a run can resume under the other strategy (same number of processes), resumes its sharded (DCP)
  checkpoints with every optimizer, including those that keep no state for some or all parameters, and
  saves both formats crash-safely (through ``checkpoint_io.py``).
- ``save_sharded_checkpoint`` / ``load_sharded_checkpoint``: the DCP folders.
- ``full_optimizer_state`` / ``load_full_optimizer_state``: an optimizer's sharded (DTensor) state gathered
  whole for a full checkpoint, and cut back into this rank's rows on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import ModelParallelStrategy

from optsweep.training.checkpoint_io import (
    META_FILE,
    AtomicCheckpointIO,
    CheckpointError,
    finish_folder_checkpoint,
    remove,
    temporary_sibling,
)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy (FSDP2) with checkpoints that resume exactly and survive crashes.

    A full checkpoint (``save_distributed_checkpoint=false``) here holds what a DDP run writes: the model's
    full state dict and, per optimizer, torch's own ``Optimizer.state_dict()`` layout - parameters numbered
    by their place in the param groups, every tensor whole. Lightning writes and reads the optimizer state
    numbered in the model's parameter order instead, so a DDP checkpoint, numbered in param-group order
    (here grouped by role, not in model order), put each state on the wrong parameter under FSDP2 and
    failed on the first shape that differed.

    A sharded checkpoint (``save_distributed_checkpoint=true``) is Lightning's DCP folder, loaded by
    ``load_sharded_checkpoint``: Lightning's own loader requires optimizer state for every trainable
    parameter, which SCALE (hidden matrices) and plain SGD (everything) do not keep.

    Both formats are saved crash-safely (a temporary sibling, fsynced, renamed into place by rank 0), where
    Lightning writes the file or the folder in place.
    """

    @property
    def checkpoint_io(self):
        # Full-format files go through the CheckpointIO: crash-safe even where the Trainer is given none. (A
        # default set in __init__ instead would make the Trainer refuse an AtomicCheckpointIO plugin.)
        if self._checkpoint_io is None:
            self._checkpoint_io = AtomicCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io) -> None:
        self._checkpoint_io = io

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self._save_distributed_checkpoint:
            return super().optimizer_state(optimizer)
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        # Every rank takes part in the all-gathers; only rank 0 writes the file, so only it keeps them.
        return full_optimizer_state(optimizer, keep=self.is_global_zero)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        path = Path(self.broadcast(filepath))  # every rank saves to rank 0's path
        if path.is_dir() and not _only_dcp_files(path):
            # A checkpoint replaces a checkpoint (even a half-written one), never a folder of something else.
            raise IsADirectoryError(f"cannot save checkpoint {path}: a folder that is not a checkpoint is there")
        if self._save_distributed_checkpoint:
            save_sharded_checkpoint(checkpoint, path)
        else:
            if self.is_global_zero:
                self.checkpoint_io.save_checkpoint(checkpoint, path)
            # No rank goes on (to train, save again or read it) before the new checkpoint is in place.
            self.barrier("FSDP2Strategy.save_checkpoint")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))  # every rank must read the same checkpoint
        if path.is_dir():
            return load_sharded_checkpoint(path, self.model, self.optimizers,
                                           strict=self.lightning_module.strict_loading, weights_only=weights_only)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # Every rank maps the same file (mmap: read as needed, not copied whole into each process), so each
        # can take its rows of an optimizer state from its own copy.
        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        options = StateDictOptions(full_state_dict=True, strict=self.lightning_module.strict_loading)
        set_model_state_dict(self.model, checkpoint.pop("state_dict"), options=options)
        saved_states = checkpoint.get("optimizer_states", [])
        if len(saved_states) != len(self.optimizers):
            raise CheckpointError(f"checkpoint {path} has {len(saved_states)} optimizer states for "
                                  f"{len(self.optimizers)} optimizers: it was written by another training setup")
        for optimizer, saved in zip(self.optimizers, saved_states):
            load_full_optimizer_state(optimizer, saved)
        # Lightning restores the rest (schedulers, loops, data position, callbacks, module hooks) from this.
        return checkpoint


# --- sharded (DCP) checkpoints ------------------------------------------------------------------------------
# Lightning's layout: a folder with the model's and each optimizer's sharded state dicts (keys
# ``state_dict`` and ``optimizer_<i>``, as torch.distributed.checkpoint.state_dict returns them: named by
# parameter) in DCP's files, and the rest of the checkpoint (loops, schedulers, callbacks...) in meta.pt.

def save_sharded_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Save a Lightning checkpoint as a DCP folder at ``path``, crash-safely. A collective: all ranks call it.

    Every rank writes its shard file into one temporary folder. DCP fsyncs each file and writes the folder's
    ``.metadata`` only once every rank's file is written; rank 0 then adds meta.pt, fsyncs the folder and
    swaps it into place. Every rank returns once it is there.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    first = _rank() == 0
    tmp = None
    if first:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(temporary_sibling(path, folder=True))
    tmp = Path(_broadcast(tmp))  # one folder for all ranks
    state = {"state_dict": checkpoint.pop("state_dict")}
    state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
    try:
        dcp.save(state, checkpoint_id=tmp)
        if first:
            finish_folder_checkpoint(tmp, checkpoint, path)
    except BaseException:
        if first:
            remove(tmp)
        raise
    _barrier()


def load_sharded_checkpoint(path: str | Path, model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                            strict: bool = True, weights_only: bool | None = None) -> dict[str, Any]:
    """Load a DCP folder into ``model`` and ``optimizers`` and return the rest of the checkpoint (meta.pt).

    A collective: every rank calls it. Each optimizer gets exactly the state that was saved (see
    ``_load_sharded_optimizer_state``). The optimizers are loaded before the model: torch's state-dict API
    steps an optimizer that holds no state yet (zero gradients, lr 0) to create it, and nothing obliges
    such a step to leave the weights alone (none of the registry's changes them, but a decay with a rate of
    its own, or a division by a zero statistic, would); the weights loaded next are the saved ones anyway.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )

    path = Path(path)
    if not (path / ".metadata").is_file() or not (path / META_FILE).is_file():
        raise CheckpointError(f"{path} is a folder but not a complete sharded checkpoint (no .metadata or "
                              f"{META_FILE}): point train.ckpt_path at another checkpoint")
    saved = dcp.FileSystemReader(path).read_metadata()
    places = saved.planner_data  # flat key of each saved value -> its place in the nested state dict
    if not isinstance(places, dict):
        raise CheckpointError(f"{path} is a sharded checkpoint without DCP's map of its keys (not saved by "
                              "Lightning or this project): it cannot be resumed here")
    saved_optimizers = {place[0] for place in places.values() if str(place[0]).startswith("optimizer_")}
    if len(saved_optimizers) != len(optimizers):
        raise CheckpointError(f"checkpoint {path} has {len(saved_optimizers)} optimizer states for "
                              f"{len(optimizers)} optimizers: it was written by another training setup")
    for index, optimizer in enumerate(optimizers):
        _load_sharded_optimizer_state(path, saved.state_dict_metadata, places, model, optimizer,
                                      f"optimizer_{index}")
    model_state = {"state_dict": get_model_state_dict(model)}
    dcp.load(model_state, checkpoint_id=path)
    set_model_state_dict(model, model_state["state_dict"], options=StateDictOptions(strict=strict))
    return torch.load(path / META_FILE, map_location="cpu", weights_only=weights_only)


def _load_sharded_optimizer_state(path: Path, saved: dict, places: dict, model: torch.nn.Module,
                                  optimizer: torch.optim.Optimizer, key: str) -> None:
    """Load the optimizer state saved under ``key`` in the DCP folder ``path``, whose metadata lists what
    was saved (``saved``: flat key -> shape and dtype, or bytes) and where (``places``: flat key -> place).

    Lightning's loader reads the entries the optimizer holds after torch's zero-gradient first step, then
    requires saved state for every trainable parameter. What an optimizer keeps is its own business: SCALE
    nothing for its hidden matrices, SGD without momentum nothing at all, and an entry could appear only
    after some steps. So what is read is what the checkpoint's metadata lists, and it is handed over with
    ``strict=False``: a parameter without saved state has none after the load, as when it was saved. An
    entry the optimizer keeps as a DTensor (sharded like its parameter) is read as this rank's rows; any
    other (a step count, GaLore's projector and low-rank moments) whole, identical on every rank.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor import empty as empty_dtensor

    # What the optimizer itself holds, by parameter name (after torch's zero-gradient step if it held
    # nothing): whether each entry is a DTensor, and its memory layout.
    held = get_optimizer_state_dict(model, optimizer)["state"]
    # DCP stores no empty dict: an optimizer without any state (plain SGD) saved no "state" at all
    target: dict[Any, Any] = {"state": {}}
    for flat_key, place in places.items():
        if place[0] != key:
            continue
        meta = saved[flat_key]
        value = None  # a number, string or list (of parameter names): DCP puts the saved object in its place
        if isinstance(meta, TensorStorageMetadata):
            like = _get_nested(held, place[2:]) if place[1] == "state" else None
            if torch.is_tensor(like) and like.shape == meta.size and like.dtype == meta.properties.dtype:
                # Also its memory layout, which DCP does not keep: a matmul with GaLore's column-major
                # projector differs in the last bit from one with a row-major copy (6e-8 after 3 steps).
                value = torch.empty_like(like)
            elif isinstance(like, DTensor):
                value = empty_dtensor(meta.size, dtype=meta.properties.dtype, device_mesh=like.device_mesh,
                                      placements=like.placements)
            else:
                value = torch.empty(meta.size, dtype=meta.properties.dtype)
        _set_nested(target, place[1:], value)
    target = _as_lists(target)
    dcp.load({key: target}, checkpoint_id=path)
    set_optimizer_state_dict(model, optimizer, target, options=StateDictOptions(strict=False))


def _only_dcp_files(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but what a DCP save writes (``.metadata`` last, via a temporary)."""
    return all(p.suffix == ".distcp" or p.name == META_FILE or p.name.startswith(".metadata")
               for p in folder.iterdir())


def _get_nested(tree: Any, place: Sequence) -> Any:
    for part in place:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _set_nested(tree: dict, place: Sequence, value: Any) -> None:
    for part in place[:-1]:
        tree = tree.setdefault(part, {})
    tree[place[-1]] = value


def _as_lists(tree: Any) -> Any:
    """``tree`` (built by ``_set_nested``) with each dict keyed by numbers as a list: DCP numbers list items."""
    if not isinstance(tree, dict):
        return tree
    items = {k: _as_lists(v) for k, v in tree.items()}
    if items and all(isinstance(k, int) for k in items):
        return [items[k] for k in sorted(items)]
    return items


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    if _distributed():
        torch.distributed.barrier()


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded (DTensor) state gathered whole, on the CPU.

    A collective: every rank must call it. Returns ``{}`` where ``keep`` is false.
    """
    from torch.distributed.tensor import DTensor

    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for index in sorted(state_dict["state"]):  # the same order on every rank: the all-gathers must match
        entries = state_dict["state"][index]
        full = {}
        for key in sorted(entries):
            value = entries[key]
            if isinstance(value, DTensor):
                value = value.full_tensor().cpu()
            full[key] = value
        state[index] = full
    return {"state": state, "param_groups": state_dict["param_groups"]} if keep else {}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a whole (unsharded) optimizer state into an optimizer of FSDP2-sharded parameters.

    Parameters are matched by their place in the param groups, as ``Optimizer.load_state_dict`` does. An
    entry the optimizer keeps sharded like its parameter gets this rank's rows of the saved tensor;
    anything else (step counters, low-rank moments and projectors of GaLore-like methods) is loaded whole,
    so it is identical on every rank. Which entries are sharded is what the optimizer itself does on its
    first step - not the shape: GaLore's moments have the matrix's shape when its rank reaches the matrix
    size, yet are whole on every rank. (An entry an optimizer created only after its first step would be
    loaded whole; none here does.)
    """
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_ids = [index for group in saved["param_groups"] for index in group["params"]]
    if len(saved_ids) != len(params):
        raise CheckpointError(f"the checkpoint's optimizer state is for {len(saved_ids)} parameters, this "
                              f"optimizer has {len(params)}: it was written for another model or optimizer")
    sharded_keys = _entries_kept_sharded(optimizer)
    state = {}
    for index, param, sharded in zip(saved_ids, params, sharded_keys):
        if index not in saved["state"]:
            continue  # no state yet (no gradient so far, or a stateless optimizer)
        state[index] = {
            # src_data_rank=None: each rank cuts its rows from its own copy of the file, no broadcast
            key: distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
            if key in sharded else value
            for key, value in saved["state"][index].items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def _entries_kept_sharded(optimizer: torch.optim.Optimizer) -> list[set[str]]:
    """Per parameter (in param-group order): the state entries the optimizer keeps as DTensors.

    Learned as torch.distributed.checkpoint does, from one step with zero gradients on the still empty
    optimizer (a collective where the optimizer gathers matrices: every rank runs it). That state is then
    discarded and the parameters restored - a zero update may be NaN, and an optimizer may decay weights -
    so the step leaves nothing behind but its answer.
    """
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]

    def dtensor_keys() -> list[set[str]]:
        return [{key for key, value in optimizer.state.get(p, {}).items() if isinstance(value, DTensor)}
                for p in params]

    if optimizer.state:  # it has stepped already: its own state says
        return dtensor_keys()
    before = [p.detach().clone() for p in params]
    for p in params:
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    sharded = dtensor_keys()
    optimizer.state.clear()
    with torch.no_grad():
        for p, value in zip(params, before):
            p.copy_(value)
            p.grad = None
    return sharded
