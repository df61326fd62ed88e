"""Two CPU processes (gloo): SCALE on an FSDP2-sharded tiny LLaMA against SCALE on the unsharded model.

Run by tests/test_optim_scale_sharded.py as ``python tests/_scale_sharded_worker.py``; prints one JSON line,
per setting the largest parameter difference after a few steps between

- ``sharded``: SCALE stepping the DTensor shards that ``fully_shard`` made (the vocabulary of 97 and the
  MLP width of 65 do not split evenly over 2 ranks), and
- ``local_rms``: the negative control, SCALE stepping each rank's shard as if it were the whole matrix
  (plain tensors, so every RMS over the sharded dim is a per-shard RMS),

each against SCALE on the whole model fed the same (gathered) gradients.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
STEPS = 3
SETTINGS = [  # (normalization, momentum_on)
    ("column", "last"),
    ("row", "all"),
    ("newton_schulz", "last"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result = compare_all(rank)
        if rank == 0:
            queue.put(result)
        # Both ranks leave together: a rank tearing gloo down while its peer still holds the connection
        # can abort the peer ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def compare_all(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from optsweep.models.llama import ModelSpec, build_llama
    from optsweep.optim.groups import split_parameters
    from optsweep.optim.scale import SCALE
    from optsweep.optim.sharding import full_tensor, keep_local, local

    mesh = init_device_mesh("cpu", (WORLD,))
    spec = ModelSpec(name="t", hidden_size=32, intermediate_size=65, num_hidden_layers=2,
                     num_attention_heads=4, vocab_size=97)
    hp = {"lr": 1e-2, "adam_lr": 1e-2, "weight_decay": 0.1}
    result = {}
    for normalization, momentum_on in SETTINGS:
        torch.manual_seed(0)
        model = build_llama(spec)
        whole = copy.deepcopy(model)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        options = dict(hp, normalization=normalization, momentum_on=momentum_on)
        sharded_opt = SCALE.for_model(model, **options)
        whole_opt = SCALE.for_model(whole, **options)

        # Negative control: the same optimizer on each rank's rows as plain, unsharded tensors.
        split = split_parameters(model)
        shards = {id(p): nn.Parameter(local(p).detach().clone()) for p in model.parameters()}
        groups = [{"params": [shards[id(p)] for p in split.of(role)], "role": role}
                  for role in ("hidden", "embedding", "output", "vector") if split.of(role)]
        groups[-1]["lr"] = hp["adam_lr"]
        naive_opt = SCALE(groups, lr=hp["lr"], weight_decay=hp["weight_decay"],
                          normalization=normalization, momentum_on=momentum_on)

        for step in range(STEPS):
            batch = torch.randint(0, spec.vocab_size, (2, 8), generator=torch.Generator().manual_seed(step))
            model(input_ids=batch, labels=batch).loss.backward()  # same batch on both ranks
            for p, q in zip(model.parameters(), whole.parameters()):
                q.grad = full_tensor(p.grad).clone()
                shards[id(p)].grad = local(p.grad).clone()
            sharded_opt.step()
            whole_opt.step()
            naive_opt.step()
            model.zero_grad(set_to_none=True)

        sharded = naive = moved = 0.0
        for p, q, q0 in zip(model.parameters(), whole.parameters(), build_llama_start(spec, build_llama)):
            mine = keep_local(q.detach(), p)  # this rank's rows of the unsharded result
            sharded = max(sharded, (local(p).detach() - mine).abs().max().item())
            naive = max(naive, (shards[id(p)].detach() - mine).abs().max().item())
            moved = max(moved, (q.detach() - q0).abs().max().item())
        diffs = torch.tensor([sharded, naive])
        dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        result[f"{normalization}/{momentum_on}"] = {"sharded": diffs[0].item(), "local_rms": diffs[1].item(),
                                                   "moved": moved}
    return result


def build_llama_start(spec, build_llama):
    torch.manual_seed(0)
    return [p.detach() for p in build_llama(spec).parameters()]


def main() -> None:
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(run, args=(free_port(), queue), nprocs=WORLD, start_method="spawn")
    print(json.dumps(queue.get()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
