"""Rows -> batches -> the train loader, whose state is the stream's position after the batches used.

A batch is ``input_ids``, ``attention_mask`` (1 on real tokens) and ``labels`` = ``input_ids`` with -100
at pad positions, so that the loss ignores padding (transformers shifts the labels itself).

The position is saved per worker by torchdata's ``StatefulDataLoader``; Lightning stores the train loader's
state in its checkpoints. ``TrainLoader`` fixes two gaps: Lightning fetches a batch ahead (the state must
be that after the batches training used) and only rank 0 writes the checkpoint (the state must hold every
rank's position). Resuming then gives exactly the batches of the uninterrupted run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from optsweep.data.rows import Row

IGNORE_INDEX = -100


def collate(rows: Sequence[Row]) -> dict[str, torch.Tensor]:
    ids = torch.from_numpy(np.stack([r[0] for r in rows])).long()
    lengths = torch.tensor([r[1] for r in rows], dtype=torch.long)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE_INDEX)}


class TrainLoader(StatefulDataLoader):
    """A StatefulDataLoader whose state is the position after the batches training *used*, on every rank.

    Two things a plain StatefulDataLoader gets wrong under Lightning:
    - Lightning fetches one batch ahead, so the loader has yielded one batch more than training used when a
      checkpoint is taken, and a resume would skip it. The datamodule reports each train batch as it goes
      to the device (``mark_consumed``); the state returned is the one recorded after that many batches.
      Nobody reporting (a plain loop) means every yielded batch counts as used.
    - Lightning writes the checkpoint from rank 0 and gives that one state to every rank on resume, but each
      rank reads a different part of the data: ``state_dict`` gathers all ranks' states (a collective:
      every rank calls it, as Lightning's checkpointing does) and ``load_state_dict`` picks this rank's.
    """

    _KEEP = 64  # states kept for batches yielded but not yet used (Lightning holds one)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._history: dict[int, dict] = {}
        self._yielded = 0
        self._consumed: int | None = None

    def __iter__(self):
        batches = super().__iter__()
        self._yielded, self._consumed = 0, None
        self._history = {0: copy.deepcopy(super().state_dict())}
        return self._track(batches)

    def _track(self, batches):
        for batch in batches:
            self._yielded += 1
            self._history[self._yielded] = copy.deepcopy(super().state_dict())
            self._history.pop(self._yielded - self._KEEP, None)
            yield batch

    def mark_consumed(self) -> None:
        self._consumed = (self._consumed or 0) + 1
        self._history.pop(self._consumed - 1, None)

    def local_state(self) -> dict:
        """This rank's state after the batches training used."""
        if self._consumed is not None and self._consumed in self._history:
            return self._history[self._consumed]
        return super().state_dict()

    def state_dict(self) -> dict:
        local = self.local_state()
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        states = [local]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, local)
        return {"world_size": world, "ranks": states}

    def load_state_dict(self, state_dict: dict) -> None:
        if "ranks" not in state_dict:
            return super().load_state_dict(state_dict)
        rank, world = distributed_rank_world() or (0, 1)
        if state_dict["world_size"] != world:
            raise ValueError(
                f"the checkpoint's data position was saved by {state_dict['world_size']} ranks but this run has "
                f"{world}: resume with the same number of devices"
            )
        super().load_state_dict(state_dict["ranks"][rank])


def distributed_rank_world() -> tuple[int, int] | None:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None
