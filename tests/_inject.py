"""Test-only callbacks, loaded into a run.py subprocess with PYTHONPATH=tests and
``+callbacks.<key>._target_=_inject.<Class>``: they make things go wrong at a chosen optimizer step, or
record what a rank holds. Also the helpers that drive run.py, and a two-process worker that takes every
optimizer through a sharded checkpoint without Lightning."""

from __future__ import annotations

import io
import json
import os
import signal

import lightning as L
import torch


class SignalAt(L.Callback):
    """Sends ``signum`` (a name like SIGTERM or SIGKILL) to its own process right after optimizer step ``step``;
    with ``children``, to its child processes (the data loader's workers) first, as Ctrl-C in a terminal
    reaches the whole process group."""

    def __init__(self, step: int, signum: str = "SIGTERM", children: bool = False) -> None:
        self.step = step
        self.signum = getattr(signal, signum)
        self.children = children

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not trainer.fit_loop._should_accumulate():
            if self.children:
                import multiprocessing

                for child in multiprocessing.active_children():
                    os.kill(child.pid, self.signum)
            os.kill(os.getpid(), self.signum)


class NanAt(L.Callback):
    """Sets the first entry of every weight to NaN after optimizer step ``step``: step ``step + 1``'s loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not trainer.fit_loop._should_accumulate():
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.view(-1)[0] = float("nan")


class SweepFaults(L.Callback):
    """In a sweep, by trial number: trial ``nan_trial`` gets NaN weights after optimizer step ``step`` (as
    ``NanAt``); trial ``kill_trial`` SIGKILLs its process (the whole sweep, under Hydra's basic launcher)
    right after step ``step``, once: ``marker`` remembers it, so the trial runs through when resumed."""

    def __init__(self, step: int, nan_trial: int, kill_trial: int, marker: str) -> None:
        self.step = step
        self.nan_trial = nan_trial
        self.kill_trial = kill_trial
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from optsweep.sweeper import context

        if trainer.global_step != self.step or trainer.fit_loop._should_accumulate():
            return
        trial = context.current()
        if trial is not None and trial.number == self.nan_trial:
            NanAt(self.step).on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        elif trial is not None and trial.number == self.kill_trial and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class DumpOptimizerState(L.Callback):
    """Saves what this rank holds of the optimizer state when training starts (right after a resume) to
    ``<dirpath>/rank<r>.pt``: per parameter (torch's numbering) and entry, ``("shard", this rank's rows)``
    for a sharded DTensor, else ``("whole", value)``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.distributed.tensor import DTensor

        def held(value):
            if isinstance(value, DTensor):
                return "shard", value.to_local().detach().cpu().clone()
            return "whole", value.detach().cpu().clone() if torch.is_tensor(value) else value

        state = trainer.optimizers[0].state_dict()["state"]
        dump = {index: {key: held(value) for key, value in entries.items()} for index, entries in state.items()}
        os.makedirs(self.dirpath, exist_ok=True)
        torch.save(dump, os.path.join(self.dirpath, f"rank{trainer.global_rank}.pt"))


class KillDuringSave(L.Callback):
    """A machine lost in the middle of a save: at optimizer step ``step``, while rank 0 writes checkpoint
    ``name`` (its file, or the meta.pt of its DCP folder once every shard is written), half of that file
    reaches the disk, then every rank of the run is SIGKILLed."""

    def __init__(self, step: int, name: str = "last.ckpt") -> None:
        self.step = step
        self.name = name

    def setup(self, trainer, pl_module, stage: str) -> None:
        from optsweep.training import checkpoint_io

        pids = [os.getpid()] * trainer.world_size
        if trainer.world_size > 1:
            torch.distributed.all_gather_object(pids, os.getpid())
        write = checkpoint_io._write_durably

        def dies_midway(obj, file) -> None:
            if trainer.global_step != self.step or f".{self.name}." not in str(file):
                return write(obj, file)
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            with open(file, "wb") as handle:
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            for pid in pids:
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint_io._write_durably = dies_midway


# --- driving run.py in a subprocess (as tests/test_run_e2e.py does) ---------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_py(tmp, *overrides: str, timeout: int = 300, multirun: bool = False):
    """run.py with outputs under ``tmp/outputs``, the sample corpus shared beside ``tmp``, this module importable;
    ``multirun``: ``run.py -m`` (a sweep)."""
    import subprocess
    import sys

    path = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PROJECT_ROOT": str(tmp), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, str(ROOT / "run.py"), *(["-m"] if multirun else []),
           f"paths.data_dir={tmp.parent / 'shared-data'}", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


def mlflow_run(tmp, experiment: str = "quickstart"):
    """(client, the only run) of an experiment in ``tmp``'s MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def history(tmp, metric: str, experiment: str = "quickstart") -> dict[int, list[float]]:
    """step -> every value logged at that step (a resumed run may log a step twice: both must agree)."""
    client, r = mlflow_run(tmp, experiment)
    out: dict[int, list[float]] = {}
    for m in client.get_metric_history(r.info.run_id, metric):
        out.setdefault(m.step, []).append(m.value)
    return out


# --- two processes (gloo), no Lightning: every optimizer through a sharded checkpoint ----------------------

SHARDED_STEPS = (3, 3)  # steps before the save, steps after it
SHARDED_OPTIONS = {  # small ranks and projector/reset gaps of 2, so that they act on both sides of the save
    "galore": {"rank": 4, "update_proj_gap": 2}, "fira": {"rank": 4, "update_proj_gap": 2},
    "apollo": {"rank": 4, "update_proj_gap": 2}, "apollo_mini": {"update_proj_gap": 2},
    "stable_spam": {"update_proj_gap": 2},
}


def sharded_resume_main(folder: str) -> None:
    """``python -c 'import _inject; _inject.sharded_resume_main(FOLDER)'``: 2 ranks run ``sharded_resume``
    for every optimizer of the registry, with checkpoints in FOLDER/<name>; FOLDER/result.json gets
    ``[{name: rank 0's result}, {name: rank 1's result}]``."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_resume_rank, args=(port, folder), nprocs=2, join=True)


def _sharded_resume_rank(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from optsweep.optim.registry import OPTIMIZERS

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = {name: sharded_resume(name, os.path.join(folder, name), rank) for name in OPTIMIZERS}
    results = [None, None] if rank == 0 else None
    dist.gather_object(result, results)
    if rank == 0:
        with open(os.path.join(folder, "result.json"), "w") as f:
            json.dump(results, f)
    dist.barrier()
    # Leave at once, both done: tearing gloo down (destroy_process_group, or the interpreter's exit) while the
    # peer, which hosts the store, goes away aborted a rank now and then ("terminate called without an
    # active exception"), after all the work.
    os._exit(0)


def sharded_resume(name: str, folder: str, rank: int) -> dict:
    """Train an FSDP2-sharded tiny LLaMA (uneven shards: vocabulary 97, MLP width 65) a few steps, save a
    DCP checkpoint as FSDP2Strategy does (twice to the same path: the second replaces the first), and go
    on; then build a fresh model and optimizer from another seed, load the checkpoint, and take the same
    steps. Returns what differed: this rank's optimizer state right after the load against right after the
    save (entries missing or extra, values or memory layouts not equal), the largest weight difference at
    the end, and what the checkpoint's folder holds (no temporary may be left)."""
    from pathlib import Path

    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from optsweep.models.llama import ModelSpec, build_llama
    from optsweep.optim.registry import build_optimizer
    from optsweep.training.fsdp2 import load_sharded_checkpoint, save_sharded_checkpoint

    spec = ModelSpec(name="t", hidden_size=32, intermediate_size=65, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=97)
    mesh = init_device_mesh("cpu", (2,))

    def build(seed: int):
        torch.manual_seed(seed)
        model = build_llama(spec)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, build_optimizer(model, name, **SHARDED_OPTIONS.get(name, {}))

    def train(model, optimizer, steps) -> None:
        for step in steps:  # each rank its own batch, as data parallelism has it
            x = torch.randint(0, spec.vocab_size, (2, 16), generator=torch.Generator().manual_seed(100 * step + rank))
            model(input_ids=x, labels=x).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    def save(model, optimizer, step: int) -> None:  # what Lightning hands FSDP2Strategy.save_checkpoint
        options = StateDictOptions(cpu_offload=True)
        save_sharded_checkpoint({"state_dict": get_model_state_dict(model, options=options),
                                 "optimizer_states": [get_optimizer_state_dict(model, optimizer, options=options)],
                                 "global_step": step}, Path(folder) / "last.ckpt")

    before, after = SHARDED_STEPS
    model, optimizer = build(0)
    train(model, optimizer, range(before - 1))
    save(model, optimizer, before - 1)
    train(model, optimizer, [before - 1])
    save(model, optimizer, before)
    saved = _local_state(optimizer)
    train(model, optimizer, range(before, before + after))

    resumed, resumed_optimizer = build(1)
    meta = load_sharded_checkpoint(Path(folder) / "last.ckpt", resumed, [resumed_optimizer])
    loaded = _local_state(resumed_optimizer)
    train(resumed, resumed_optimizer, range(before, before + after))
    return {
        "global_step": meta["global_step"],
        "files": sorted(os.listdir(folder)),
        "entries": sum(len(entries) for entries in saved["state"].values()),
        "state_differs": _differences(saved, loaded),
        "weights": max((p.full_tensor() - q.full_tensor()).abs().max().item()
                       for p, q in zip(model.parameters(), resumed.parameters())),
    }


def _local_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with this rank's part of every DTensor, copied."""
    from torch.distributed.tensor import DTensor

    def local(value):
        if isinstance(value, DTensor):
            value = value.to_local()
        return value.detach().clone() if torch.is_tensor(value) else value

    state = optimizer.state_dict()
    return {"state": {i: {k: local(v) for k, v in entries.items()} for i, entries in state["state"].items()},
            "param_groups": state["param_groups"]}


def _differences(saved: dict, loaded: dict) -> list[str]:
    out = []
    if saved["param_groups"] != loaded["param_groups"]:
        out.append("param_groups")
    for index in sorted(set(saved["state"]) | set(loaded["state"])):
        a, b = saved["state"].get(index, {}), loaded["state"].get(index, {})
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if torch.is_tensor(x) and torch.is_tensor(y):  # the layout too: it can change a matmul's last bit
                same = torch.equal(x, y) and x.dtype == y.dtype and x.stride() == y.stride()
            else:
                same = not torch.is_tensor(x) and not torch.is_tensor(y) and key in a and key in b and x == y
            if not same:
                out.append(f"{index}.{key}")
    return out
