"""DDP and FSDP2 on CPU/gloo with 2 processes, each run a run.py subprocess (issue 7).

Same global batch for 1 and 2 processes: the train stream gives each rank its own documents. With fewer
shards than readers every reader reads all shards and keeps documents r, r+W, ... (datamodule.py), so a
one-shard folder, file order (no shuffle) and rows one document each make the 2-rank global batch the same
8 documents as the 1-process batch (grouped differently into micro batches). At seq_len 16 the rows are
full (no padding), so the mean-of-micro-batch-means the two compute is the same mean: DDP equals one
process up to float summation order. DDP and FSDP2 see identical micro batches on each rank.
"""

from __future__ import annotations

import shutil

import pytest
from _inject import history, run_py

from optsweep.data.sample import ensure_sample

STEPS = 4
TOL_SINGLE = 2e-5  # DDP vs 1 process: same data, different summation order (observed: see report)
TOL_FSDP = 2e-5  # FSDP2 vs DDP: reduce-scatter vs all-reduce of the same gradients


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


TWO = {"ddp": ["strategy=ddp", "trainer.devices=2"], "fsdp": ["strategy=fsdp", "trainer.devices=2"],
       "single": []}
_runs: dict = {}


def curves(corpus, strategy: str, optimizer: str):
    key = (strategy, optimizer)
    if key not in _runs:
        tmp = corpus[0] / f"{strategy}-{optimizer}"
        result = run_py(tmp, *args(corpus, f"optimizer={optimizer}", *TWO[strategy]), timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        _runs[key] = tmp, {m: {s: v[0] for s, v in history(tmp, m, "dist").items()}
                           for m in ("train/loss", "val/loss")}
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


@pytest.mark.parametrize("optimizer", ["adamw", "scale"])
def test_fsdp2_matches_ddp(corpus, optimizer):
    _, ddp = curves(corpus, "ddp", optimizer)
    _, fsdp = curves(corpus, "fsdp", optimizer)
    for metric in ("train/loss", "val/loss"):
        close(ddp[metric], fsdp[metric], TOL_FSDP)
    assert fsdp["train/loss"][STEPS] < fsdp["train/loss"][1]


@pytest.mark.xfail(strict=True, reason="loading a full (DDP) checkpoint into FSDP2-sharded parameters fails with "
                   "a shape mismatch (32 vs 86 rows): a full->sharded state-dict conversion is still missing")
def test_ddp_checkpoint_resumes_under_fsdp2_full_format(corpus):
    tmp_ddp, _ = curves(corpus, "ddp", "adamw")
    ckpt = next((tmp_ddp / "outputs" / "checkpoints").rglob("step0000002.ckpt"))
    # same outputs folder: the resume continues the DDP run's MLflow run, so steps 3-4 are logged twice
    result = run_py(tmp_ddp, *args(corpus, "optimizer=adamw", *TWO["fsdp"], f"train.ckpt_path={ckpt}",
                                   "strategy.save_distributed_checkpoint=false"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = history(tmp_ddp, "train/loss", "dist")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in (3, 4):
        assert len(resumed[step]) == 2
        assert abs(resumed[step][1] - resumed[step][0]) <= TOL_FSDP, resumed[step]


def test_other_world_size_on_resume_says_why_not(corpus):
    tmp_ddp, _ = curves(corpus, "ddp", "adamw")
    ckpt = next((tmp_ddp / "outputs" / "checkpoints").rglob("step0000002.ckpt"))
    result = run_py(corpus[0] / "ddp-to-one", *args(corpus, "optimizer=adamw", f"train.ckpt_path={ckpt}"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint") and "saved by 2 processes but this run has 1" in last
    assert "Traceback" not in result.stderr
