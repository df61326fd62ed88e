"""What optimizers need to stay correct when FSDP2 shards their parameters.

Under FSDP2 a parameter and its gradient are DTensors sharded on dim 0 (rows), possibly unevenly. Two kinds
of optimizer math need care:

- a statistic over the sharded dim (SCALE's RMS over the vocabulary of the embedding): local sum of
  squares, all_reduce(SUM) over the mesh group, divide by the GLOBAL size - see ``all_reduce_sharded``;
- whole-matrix methods (Muon, GaLore, Fira, APOLLO, SWAN): gather the full matrix, compute the update on
  it, keep this rank's rows - see ``full_tensor`` and ``keep_local``. Every rank computes the same full
  update (same gradient, same seeded projections), so keeping rows needs no communication.

On plain tensors every function here is the identity, so single-process code pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # torch builds without distributed support
    DTensor = None  # type: ignore[assignment,misc]


def is_dtensor(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard as a plain tensor (the tensor itself when it is not a DTensor)."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole matrix as a plain tensor on every rank (an all-gather for a sharded DTensor)."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def keep_local(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``full``, laid out as ``like`` (a plain tensor, to update ``local(like)``).

    ``full`` must be identical on every rank; no communication happens (src_data_rank=None).
    """
    if not is_dtensor(like):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def sharded_dims(tensor: torch.Tensor) -> set[int]:
    if not is_dtensor(tensor):
        return set()
    return {p.dim for p in tensor.placements if isinstance(p, Shard)}


def _as_dims(dim: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % ndim if ndim else d for d in dims)


def all_reduce_sharded(sums: torch.Tensor, tensor: torch.Tensor, dim: int | Sequence[int]) -> torch.Tensor:
    """Turn this rank's sum over ``dim`` of ``local(tensor)`` into the sum over the full matrix, in place.

    Only the mesh dimensions that shard one of the reduced dims take part (one all_reduce each), so a
    2-D mesh (replicate x shard, HSDP) reduces over the shard group only. Returns ``sums``.
    """
    if not is_dtensor(tensor):
        return sums
    reduced = set(_as_dims(dim, tensor.ndim))
    for mesh_dim, placement in enumerate(tensor.placements):
        if isinstance(placement, Shard) and placement.dim in reduced:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=tensor.device_mesh.get_group(mesh_dim))
    return sums
