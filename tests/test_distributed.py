"""DDP and FSDP2 on CPU/gloo with 2 processes, each run a run.py subprocess (issue 7).

Same global batch for 1 and 2 processes: the train stream gives each rank its own documents. With fewer
shards than readers every reader reads all shards and keeps documents r, r+W, ... (documents.py), so a
one-shard folder, file order (no shuffle) and rows one document each make the 2-rank global batch the same
8 documents as the 1-process batch (grouped differently into micro batches). At seq_len 16 the rows are
full (no padding), so the mean-of-micro-batch-means the two compute is the same mean: DDP equals one
process up to float summation order. DDP and FSDP2 see identical micro batches on each rank.

A full-format checkpoint (one file) resumes under the other strategy: a run resumed at step 2 must log what
the uninterrupted run logged at steps 3-4, and its ranks must hold the saved optimizer state, sharded on
dim 0 where the optimizer shards it and whole (identical on both ranks) elsewhere. A sharded (DCP)
checkpoint folder resumes under FSDP2 the same way (SCALE through Lightning here: no state for its hidden
matrices; every optimizer of the registry, plain SGD's empty state included, in the two-process worker).

Each path is run once (every run costs two processes' imports): DDP into FSDP2 from a file for an
element-wise optimizer (AdamW), SCALE and a whole-matrix one (GaLore; Muon's state is shaped like AdamW's),
FSDP2 into DDP from a file, FSDP2 from a DCP folder. The FSDP2 runs that the resumes start from are also the
runs compared with DDP (the checkpoint format does not change training).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from _inject import ROOT, history, run_py

from optsweep.data.sample import ensure_sample
from optsweep.optim.registry import OPTIMIZERS

STEPS = 4
TOL_SINGLE = 2e-5  # DDP vs 1 process: same data, different summation order (observed: see report)
TOL_FSDP = 2e-5  # FSDP2 vs DDP: reduce-scatter vs all-reduce of the same gradients
# what a run resumed from the step-2 checkpoint logs, compared with the uninterrupted run
RESUMED = {"train/loss": [3, 4], "val/loss": [4], "lr": [3, 4], "tokens/seen": [3, 4], "tokens/seen_nonpad": [3, 4]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    sample = ensure_sample(base.parent / "shared-data" / "sample")
    one = base / "one-shard"
    one.mkdir()
    for f in ["c4-train.00000-of-01024.json.gz", *[p.name for p in sample.glob("c4-validation.*")]]:
        shutil.copy(sample / f, one / f)
    return base, one, sample


def args(corpus, *extra: str) -> list[str]:
    _, one, sample = corpus
    return ["model=llama_tiny", "trainer=cpu", "data=c4_local", f"data.path={one}", f"data.tokenizer={sample}",
            "data.shuffle_buffer=0", "data.seq_len=16", "data.num_workers=0", "data.val_tokens=600",
            "train.total_batch_size=8", "train.micro_batch_size=4", "train.warmup_steps=1",
            f"train.max_steps={STEPS}", "train.eval_every_n_steps=2", "trainer.log_every_n_steps=1",
            "callbacks.checkpoint.every_n_train_steps=2", "task_name=dist", *extra]


TWO = {"ddp": ["strategy=ddp", "trainer.devices=2"],
       # run as sweeps run it, under Hydra multirun (-m, one job), where strategy=ddp cannot; no validation
       # outside fit (each trainer.validate would spawn two more processes)
       "ddp_spawn": ["strategy=ddp_spawn", "trainer.devices=2", "train.eval_at_start=false"],
       "fsdp": ["strategy=fsdp", "trainer.devices=2", "strategy.save_distributed_checkpoint=false"],  # full files
       "fsdp_dcp": ["strategy=fsdp", "trainer.devices=2", "strategy.save_distributed_checkpoint=true"],  # folders
       "single": []}
_runs: dict = {}


def curves(corpus, strategy: str, optimizer: str):
    key = (strategy, optimizer)
    if key not in _runs:
        tmp = corpus[0] / f"{strategy}-{optimizer}"
        result = run_py(tmp, *args(corpus, f"optimizer={optimizer}", *TWO[strategy]), timeout=600,
                        multirun=strategy == "ddp_spawn")
        assert result.returncode == 0, result.stderr[-3000:]
        _runs[key] = tmp, {m: {s: v[0] for s, v in history(tmp, m, "dist").items()}
                           for m in ("train/loss", "val/loss", "optimizer/state_bytes", *RESUMED)}
    return _runs[key]


def close(a: dict, b: dict, tol: float) -> float:
    assert sorted(a) == sorted(b)
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst <= tol, (worst, a, b)
    return worst


def test_ddp_matches_one_process_with_the_same_global_batch(corpus):
    _, single = curves(corpus, "single", "adamw")
    _, ddp = curves(corpus, "ddp", "adamw")
    assert sorted(single["train/loss"]) == list(range(1, STEPS + 1))
    assert single["val/loss"][0] == pytest.approx(ddp["val/loss"][0], abs=1e-6)  # same initial weights
    for metric in ("train/loss", "val/loss"):
        close(single[metric], ddp[metric], TOL_SINGLE)
    # two replicas of one optimizer hold one optimizer's state as the memory column counts it
    assert list(ddp["optimizer/state_bytes"].values()) == list(single["optimizer/state_bytes"].values())


def test_ddp_spawn_trains_as_ddp(corpus):
    """strategy=ddp_spawn, in a Hydra multirun as sweeps use it, trains the same run as strategy=ddp does alone."""
    _, ddp = curves(corpus, "ddp", "adamw")
    tmp, spawn = curves(corpus, "ddp_spawn", "adamw")
    assert sorted(spawn["val/loss"]) == [2, 4]  # no evaluation at step 0 (train.eval_at_start=false)
    close(spawn["train/loss"], ddp["train/loss"], 0.0)
    close(spawn["val/loss"], {s: ddp["val/loss"][s] for s in (2, 4)}, 0.0)
    assert spawn["tokens/seen"] == ddp["tokens/seen"]
    total, per_device = (history(tmp, m, "dist") for m in ("throughput/tokens_per_s", "throughput/tokens_per_s_per_device"))
    assert sorted(total) == [1, 2, 3, 4] and all(total[s] == [2 * per_device[s][0]] for s in total)


@pytest.mark.parametrize(("optimizer", "fsdp_run"), [("adamw", "fsdp"), ("scale", "fsdp_dcp")])
def test_fsdp2_matches_ddp(corpus, optimizer, fsdp_run):
    _, ddp = curves(corpus, "ddp", optimizer)
    _, fsdp = curves(corpus, fsdp_run, optimizer)
    for metric in ("train/loss", "val/loss"):
        close(ddp[metric], fsdp[metric], TOL_FSDP)
    assert fsdp["train/loss"][STEPS] < fsdp["train/loss"][1]
    assert list(fsdp["optimizer/state_bytes"].values()) == list(ddp["optimizer/state_bytes"].values())  # shards summed


def resume(corpus, source: str, target: str, optimizer: str):
    """Resume ``source``'s step-2 checkpoint under ``target`` in a folder of its own (a new MLflow run).

    Returns the checkpoint, what the resumed run logged (metric -> step -> value) and what each rank held
    of the optimizer state right after the resume (``_inject.DumpOptimizerState``).
    """
    tmp_source, _ = curves(corpus, source, optimizer)
    ckpt = next((tmp_source / "outputs" / "checkpoints").rglob("step0000002.ckpt"))
    tmp = corpus[0] / f"{source}-to-{target}-{optimizer}"
    probe = tmp / "probe"
    result = run_py(tmp, *args(corpus, f"optimizer={optimizer}", *TWO[target], f"train.ckpt_path={ckpt}",
                               "+callbacks.probe._target_=_inject.DumpOptimizerState",
                               f"+callbacks.probe.dirpath={probe}"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = {}
    for metric, steps in RESUMED.items():
        values = history(tmp, metric, "dist")
        assert sorted(values) == steps and all(len(v) == 1 for v in values.values()), (metric, values)
        logged[metric] = {step: v[0] for step, v in values.items()}
    held = [torch.load(probe / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return ckpt, logged, held


def same_as_uninterrupted(logged: dict, uninterrupted: dict, tol: float) -> float:
    """Losses after the resume equal the uninterrupted run's at the same steps; schedule and counters exactly."""
    worst = max(close(logged[m], {s: uninterrupted[m][s] for s in logged[m]}, tol) for m in ("train/loss", "val/loss"))
    for metric in ("lr", "tokens/seen", "tokens/seen_nonpad"):
        assert logged[metric] == {s: uninterrupted[metric][s] for s in logged[metric]}, metric
    return worst


def saved_optimizer_state(ckpt) -> dict:
    """The checkpoint's (first) optimizer state, every tensor whole, numbered as ``Optimizer.state_dict()``
    numbers parameters (a DCP folder names them: numbered here by their place in its param groups)."""
    if not ckpt.is_dir():
        return torch.load(ckpt, map_location="cpu", weights_only=False)["optimizer_states"][0]["state"]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = ckpt.parent / f"{ckpt.name}.whole.pt"
    dcp_to_torch_save(ckpt, whole)
    saved = torch.load(whole, weights_only=False)["optimizer_0"]
    whole.unlink()
    names = [name for group in saved["param_groups"] for name in group["params"]]
    return {index: saved["state"][name] for index, name in enumerate(names) if name in saved["state"]}


def held_as_saved(ckpt, held: list[dict]) -> dict[str, set]:
    """Both ranks together hold exactly the checkpoint's optimizer state: a sharded entry as the saved
    tensor's rows split on dim 0 between the ranks, anything else whole and identical on both ranks.
    Returns the entries found sharded and whole, as {(key, ndim)}."""
    saved = saved_optimizer_state(ckpt)
    assert sorted(held[0]) == sorted(held[1]) == sorted(saved)
    kinds: dict[str, set] = {"shard": set(), "whole": set()}
    for index, entries in saved.items():
        assert sorted(held[0][index]) == sorted(held[1][index]) == sorted(entries), index
        for key, value in entries.items():
            (kind, first), (other_kind, second) = held[0][index][key], held[1][index][key]
            assert kind == other_kind, (index, key)
            if kind == "shard":
                assert torch.equal(torch.cat([first, second]), value), (index, key)
            elif torch.is_tensor(value):
                assert torch.equal(first, value) and torch.equal(second, value), (index, key)
            else:
                assert first == second == value, (index, key)
            kinds[kind].add((key, value.ndim if torch.is_tensor(value) else 0))
    return kinds


@pytest.mark.parametrize("optimizer", ["adamw", "scale", "galore"])
def test_ddp_checkpoint_resumes_under_fsdp2_full_format(corpus, optimizer):
    ckpt, logged, held = resume(corpus, "ddp", "fsdp", optimizer)
    _, ddp = curves(corpus, "ddp", optimizer)
    worst = same_as_uninterrupted(logged, ddp, TOL_FSDP)
    print(f"{optimizer}: resumed under FSDP2 vs uninterrupted DDP, max loss difference {worst:.2e}")
    kinds = held_as_saved(ckpt, held)
    if optimizer == "galore":
        # full-rank projectors and low-rank moments at this size: matrix-shaped, yet whole on every rank
        assert ("projector", 2) in kinds["whole"] and ("exp_avg", 2) in kinds["whole"], kinds
    else:  # every tensor but the step counters is shaped like its parameter: sharded like it
        assert all(ndim == 0 for _, ndim in kinds["whole"]), kinds
    assert ("exp_avg" if optimizer != "scale" else "momentum_buffer", 2) in kinds["shard"], kinds


def test_fsdp2_full_checkpoint_resumes_under_ddp(corpus):
    """The way back (a full file into FSDP2 is the test above: DDP and FSDP2 write the same layout)."""
    ckpt, logged, held = resume(corpus, "fsdp", "ddp", "adamw")
    _, fsdp = curves(corpus, "fsdp", "adamw")
    worst = same_as_uninterrupted(logged, fsdp, TOL_FSDP)
    print(f"adamw: resumed under DDP vs uninterrupted FSDP2, max loss difference {worst:.2e}")
    kinds = held_as_saved(ckpt, held)
    assert not kinds["shard"] and kinds["whole"], kinds


def test_other_world_size_on_resume_says_why_not(corpus):
    tmp_ddp, _ = curves(corpus, "ddp", "adamw")
    ckpt = next((tmp_ddp / "outputs" / "checkpoints").rglob("step0000002.ckpt"))
    result = run_py(corpus[0] / "ddp-to-one", *args(corpus, "optimizer=adamw", f"train.ckpt_path={ckpt}"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint") and "saved by 2 processes but this run has 1" in last
    assert "Traceback" not in result.stderr


# --- sharded (DCP) checkpoints -----------------------------------------------------------------------------

def test_fsdp2_sharded_checkpoint_resumes_exactly(corpus):
    ckpt, logged, held = resume(corpus, "fsdp_dcp", "fsdp_dcp", "scale")
    assert ckpt.is_dir() and (ckpt / ".metadata").is_file()
    _, uninterrupted = curves(corpus, "fsdp_dcp", "scale")
    worst = same_as_uninterrupted(logged, uninterrupted, TOL_FSDP)
    print(f"scale: resumed from a DCP folder vs uninterrupted FSDP2, max loss difference {worst:.2e}")
    kinds = held_as_saved(ckpt, held)
    # AdamW moments for the 5 norm weights, lm_head's momentum; no state for the hidden matrices
    assert len(held[0]) == 6, sorted(held[0])
    assert kinds == {"shard": {("momentum_buffer", 2), ("exp_avg", 1), ("exp_avg_sq", 1)},
                     "whole": {("step", 0)}}, kinds


def test_every_optimizer_resumes_exactly_from_a_sharded_checkpoint(tmp_path):
    """Each optimizer of the registry, on a 2-rank FSDP2 tiny LLaMA without Lightning (_inject.sharded_resume):
    after the load each rank holds exactly the state it saved, and training on gives the same weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    code = f"import _inject; _inject.sharded_resume_main({str(tmp_path)!r})"
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    per_rank = json.loads((tmp_path / "result.json").read_text())
    for rank, result in enumerate(per_rank):
        assert sorted(result) == sorted(OPTIMIZERS)
        for name, r in result.items():
            if rank == 0:
                print(f"{name}: {r['entries']} state entries on rank 0, weight difference {r['weights']:.1e}")
            assert r["state_differs"] == [] and r["weights"] == 0.0, (rank, name, r)
            assert r["global_step"] == 3 and r["files"] == ["last.ckpt"], (rank, name, r)
        assert result["sgd"]["entries"] == 0 and result["scale"]["entries"] > 0  # stateless, partly stateless
