"""Two CPU processes (gloo): optimizers that need the whole matrix or a statistic across its rows (GaLore,
Fira, APOLLO, APOLLO-Mini; SCALE with each normalisation) on an FSDP2-sharded tiny LLaMA against the same optimizer on the
unsharded model.

Run by tests/test_optim_whole_matrix_sharded.py as ``python tests/_whole_matrix_sharded_worker.py``; prints
one JSON line with, per case:

- ``sharded``: the largest difference, over all steps and parameters, between the sharded run's rows and
  the same rows of rank 0's unsharded run (the unsharded model is fed the gathered gradients of the
  sharded one);
- ``rank_local``: the negative control, the same optimizer stepping each rank's rows as plain tensors, as if
  they were the whole matrix (rank-local projectors and statistics), against the unsharded run;
- ``moved``: how far the unsharded run moved the weights; ``refreshes``: the steps on which the first
  hidden matrix got a new projector (low-rank methods); ``rows``: each rank's row count of the MLP's
  gate matrix (37 rows: 19 and 18).
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

WORLD = 2
STEPS = 7  # projector refreshes on steps 1, 3, 5 and 7 at update_proj_gap 2
LOW_RANK = {"rank": 4, "update_proj_gap": 2, "weight_decay": 0.1}  # rank 4 < 32 and 37
SCALE_HP = {"lr": 1e-2, "adam_lr": 1e-2, "weight_decay": 0.1}
CASES = {  # label -> (registry name, options)
    "galore": ("galore", LOW_RANK),
    "fira": ("fira", LOW_RANK),
    "apollo": ("apollo", LOW_RANK),
    "apollo_mini": ("apollo_mini", {"update_proj_gap": 2, "weight_decay": 0.1}),  # rank 1, one factor
    "scale/column": ("scale", {**SCALE_HP, "normalization": "column"}),  # the embedding's RMS over the vocab
    "scale/row": ("scale", {**SCALE_HP, "normalization": "row", "momentum_on": "all"}),
    "scale/sign": ("scale", {**SCALE_HP, "normalization": "sign"}),
    "scale/newton_schulz": ("scale", {**SCALE_HP, "normalization": "newton_schulz"}),
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
        result = {label: compare(name, options) for label, (name, options) in CASES.items()}
        if rank == 0:
            queue.put(result)
        dist.barrier()  # both ranks leave gloo together
    finally:
        dist.destroy_process_group()


def compare(name: str, options: dict) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from optsweep.models.llama import ModelSpec, build_llama
    from optsweep.optim.registry import build_optimizer
    from optsweep.optim.sharding import full_tensor, local

    mesh = init_device_mesh("cpu", (WORLD,))
    # 37 MLP rows and 97 vocabulary rows do not split evenly over 2 ranks
    spec = ModelSpec(name="t", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=4, vocab_size=97)
    torch.manual_seed(0)
    model = build_llama(spec)
    whole = copy.deepcopy(model)
    start = [p.detach().clone() for p in whole.parameters()]
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    sharded_opt = build_optimizer(model, name, **options)
    whole_opt = build_optimizer(whole, name, **options)

    # Negative control: the same param groups, each parameter replaced by this rank's rows as a plain tensor.
    shards = {id(p): torch.nn.Parameter(local(p).detach().clone()) for p in model.parameters()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [shards[id(p)] for p in g["params"]]}
              for g in sharded_opt.param_groups]
    rank_local_opt = type(sharded_opt)(groups)

    first_hidden = model.model.layers[0].self_attn.q_proj.weight
    refreshes, previous = [], None
    sharded = rank_local = 0.0
    for step in range(1, STEPS + 1):
        batch = torch.randint(0, spec.vocab_size, (2, 8), generator=torch.Generator().manual_seed(step))
        model(input_ids=batch, labels=batch).loss.backward()  # same batch on both ranks
        for p, q in zip(model.parameters(), whole.parameters()):
            q.grad = full_tensor(p.grad).clone()
            shards[id(p)].grad = local(p.grad).clone()
        sharded_opt.step()
        whole_opt.step()
        rank_local_opt.step()
        model.zero_grad(set_to_none=True)
        for p, q in zip(model.parameters(), whole.parameters()):
            reference = q.detach().clone()
            dist.broadcast(reference, src=0)  # rank 0's unsharded result: a rank-dependent bug shows too
            mine = reference.chunk(WORLD, dim=0)[dist.get_rank()]  # this rank's rows (FSDP2 uses chunk)
            sharded = max(sharded, (local(p).detach() - mine).abs().max().item())
            rank_local = max(rank_local, (shards[id(p)].detach() - mine).abs().max().item())
        projector = sharded_opt.state[first_hidden].get("projector")
        if projector is not None and (previous is None or not torch.equal(projector, previous)):
            refreshes.append(step)
            previous = projector.clone()

    diffs = torch.tensor([sharded, rank_local])
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    rows = [0] * WORLD
    rows[dist.get_rank()] = local(model.model.layers[0].mlp.gate_proj.weight).shape[0]
    rows_t = torch.tensor(rows)
    dist.all_reduce(rows_t)
    moved = max((q.detach() - q0).abs().max().item() for q, q0 in zip(whole.parameters(), start))
    return {"sharded": diffs[0].item(), "rank_local": diffs[1].item(), "moved": moved,
            "refreshes": refreshes, "rows": rows_t.tolist()}


def main() -> None:
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(run, args=(free_port(), queue), nprocs=WORLD, start_method="spawn")
    print(json.dumps(queue.get()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
