"""Two CPU processes (gloo): Adafactor, Lion and AdEMAMix on an FSDP2-sharded tiny LLaMA against the same
optimizer on the unsharded model fed the same (gathered) gradients.

Run by tests/test_optim_sharded_parity.py as ``python tests/_sharded_parity_worker.py``; prints one JSON line,
per optimizer the largest weight difference after a few steps (``sharded``), how far the weights moved, and,
for Adafactor, a negative control: the optimizer stepping each rank's rows as if they were the whole matrix
(``per_shard``: its factors and RMS(X) are then statistics of the shard). The vocabulary of 97 and the MLP
width of 65 do not split evenly over 2 ranks.
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
SETTINGS = {
    "adafactor": {"weight_decay": 0.1},
    "lion": {"lr": 1e-3, "weight_decay": 0.1},
    "ademamix": {"lr": 1e-2, "alpha_warmup": 2, "beta3_warmup": 2, "weight_decay": 0.1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result = {name: compare(name, hp) for name, hp in SETTINGS.items()}
        if rank == 0:
            queue.put(result)
        dist.barrier()  # both ranks leave together (a peer tearing gloo down early can abort the other)
    finally:
        dist.destroy_process_group()


def compare(name: str, hp: dict) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from optsweep.models.llama import ModelSpec, build_llama
    from optsweep.optim.registry import build_optimizer, optimizer_class
    from optsweep.optim.sharding import full_tensor, keep_local, local

    mesh = init_device_mesh("cpu", (WORLD,))
    spec = ModelSpec(name="t", hidden_size=32, intermediate_size=65, num_hidden_layers=2,
                     num_attention_heads=4, vocab_size=97)
    torch.manual_seed(0)
    model = build_llama(spec)
    whole = copy.deepcopy(model)
    start = [p.detach().clone() for p in whole.parameters()]
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded_opt = build_optimizer(model, name, **hp)
    whole_opt = build_optimizer(whole, name, **hp)
    shards = {id(p): nn.Parameter(local(p).detach().clone()) for p in model.parameters()}
    per_shard_opt = optimizer_class(name)(list(shards.values()), **hp)

    for step in range(STEPS):
        batch = torch.randint(0, spec.vocab_size, (2, 8), generator=torch.Generator().manual_seed(step))
        model(input_ids=batch, labels=batch).loss.backward()  # same batch on both ranks
        for p, q in zip(model.parameters(), whole.parameters()):
            q.grad = full_tensor(p.grad).clone()
            shards[id(p)].grad = local(p.grad).clone()
        sharded_opt.step()
        whole_opt.step()
        per_shard_opt.step()
        model.zero_grad(set_to_none=True)

    sharded = per_shard = moved = 0.0
    for p, q, q0 in zip(model.parameters(), whole.parameters(), start):
        mine = keep_local(q.detach(), p)  # this rank's rows of the unsharded result
        sharded = max(sharded, (local(p).detach() - mine).abs().max().item())
        per_shard = max(per_shard, (shards[id(p)].detach() - mine).abs().max().item())
        moved = max(moved, (q.detach() - q0).abs().max().item())
    diffs = torch.tensor([sharded, per_shard])
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    return {"sharded": diffs[0].item(), "per_shard": diffs[1].item(), "moved": moved}


def main() -> None:
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(run, args=(free_port(), queue), nprocs=WORLD, start_method="spawn")
    print(json.dumps(queue.get()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
