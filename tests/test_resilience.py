"""Runs that are killed, preempted or diverge lose nothing (issues 7 and 8), driven through run.py.

The reference is one uninterrupted run; every interrupted run must log, after its resume, exactly the same
train/val losses at every step (bit-exact: CPU fp32, the data position, RNG and optimizer state restored).
The runs read C4's shard format from disk (``data=c4_local`` on the sample corpus's four train shards) with
two loader workers, so every resume must also put each worker back at its place in its shards.
Saves are crash-safe under DDP and FSDP2, in both of FSDP2's formats (a file, a DCP folder): a crash in
the middle of one leaves the previous checkpoint whole, and ``train.ckpt_path=last`` resumes from it.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from _inject import history, mlflow_run, run_py
from torch.distributed.checkpoint import load as dcp_load

from optsweep.data.sample import ensure_sample
from optsweep.training import checkpoint_io
from optsweep.training.callbacks import DivergenceError, DivergenceGuard
from optsweep.training.fsdp2 import FSDP2Strategy

torch.set_num_threads(1)

STEPS = 10
CKPTS = "outputs/checkpoints/quickstart/adamw-llama_tiny-seed42"


def inject(kind: str, key: str = "inject", **kwargs) -> list[str]:
    return [f"+callbacks.{key}._target_=_inject.{kind}"] + [f"+callbacks.{key}.{k}={v}" for k, v in kwargs.items()]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    """The runs' overrides: the sample corpus's shards read as local C4, shuffled, by 2 workers."""
    shards = ensure_sample(tmp_path_factory.getbasetemp() / "shared-data" / "sample")
    return ["experiment=quickstart", "data=c4_local", f"data.path={shards}", f"data.tokenizer={shards}",
            "data.num_workers=2", "data.shuffle_buffer=200", "data.seq_len=32", "data.val_tokens=600",
            "train.total_batch_size=8", "train.micro_batch_size=4", "train.warmup_steps=2", f"train.max_steps={STEPS}",
            "train.eval_every_n_steps=2", "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base):
    tmp = tmp_path_factory.mktemp("reference")
    result = run_py(tmp, *base)
    assert result.returncode == 0, result.stderr[-3000:]
    return {m: history(tmp, m) for m in ("train/loss", "val/loss")}


def assert_same_curves(tmp: Path, reference: dict) -> None:
    for metric, ref in reference.items():
        got = history(tmp, metric)
        assert sorted(got) == sorted(ref), metric
        for step, values in got.items():
            assert all(v == ref[step][0] for v in values), (metric, step, values, ref[step])


def test_sigkill_midway_then_resume_is_bit_exact(tmp_path, reference, base):
    killed = run_py(tmp_path, *base, *inject("SignalAt", step=6, signum="SIGKILL"))
    assert killed.returncode == -signal.SIGKILL
    ckpt = torch.load(tmp_path / CKPTS / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4  # the newest checkpoint before the kill
    _, before = mlflow_run(tmp_path)
    assert before.info.status == "RUNNING"  # killed mid-training: neither FINISHED (by the first eval) nor KILLED
    resumed = run_py(tmp_path, *base, "train.ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, after = mlflow_run(tmp_path)  # asserts there is still exactly one run
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert_same_curves(tmp_path, reference)


def test_ctrl_c_then_sigterm_each_save_mark_killed_and_resume_exactly(tmp_path, reference, base):
    """Ctrl-C (SIGINT to the run and its loader workers, as a terminal sends it) after step 3; resumed, SIGTERM
    after step 5; resumed again, the run ends with the uninterrupted run's losses. The three runs share their
    overrides (the signals are keyed by step, and a resumed run never repeats a step)."""
    signals = [*inject("SignalAt", key="ctrl_c", step=3, signum="SIGINT", children=True),
               *inject("SignalAt", key="preempt", step=5, signum="SIGTERM")]
    first_run = None
    for signum, step, resume in ((signal.SIGINT, 3, []), (signal.SIGTERM, 5, ["train.ckpt_path=last"])):
        stopped = run_py(tmp_path, *base, *signals, *resume)
        assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
        assert f"stopped by {signal.Signals(signum).name} at step {step}" in stopped.stderr
        ckpt = torch.load(tmp_path / CKPTS / "last.ckpt", weights_only=True, map_location="cpu")
        assert ckpt["global_step"] == step
        _, run = mlflow_run(tmp_path)
        assert run.info.status == "KILLED" and run.info.run_id == (first_run or run.info.run_id)
        first_run = run.info.run_id
    resumed = run_py(tmp_path, *base, *signals, "train.ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, again = mlflow_run(tmp_path)
    assert again.info.run_id == first_run and again.info.status == "FINISHED"
    assert_same_curves(tmp_path, reference)


def test_nan_stops_with_step_lr_last_loss_and_keeps_last_good_checkpoint(tmp_path, reference, base):
    # NaN weight after step 6: step 7's loss is NaN; the guard (checking every 10 steps, and before every
    # checkpoint) stops at step 8 before the step-8 checkpoint is written.
    result = run_py(tmp_path, *base, *inject("NanAt", step=6))
    assert result.returncode == 0, result.stderr[-3000:]  # a diverged run is a result (+inf), not a crash
    logs = result.stderr + "".join(p.read_text() for p in (tmp_path / "outputs" / "runs").rglob("*.log"))
    line = next(x for x in logs.splitlines() if "training diverged" in x)
    last_loss = reference["train/loss"][6][0]
    assert "non-finite loss at step 7 (detected at step 8)" in line
    assert f"last finite loss {last_loss:.4f}" in line and "lr " in line and "objective +inf" in line
    _, run = mlflow_run(tmp_path)
    assert run.info.status == "FAILED"
    names = sorted(p.name for p in (tmp_path / CKPTS).iterdir())
    assert names == ["last.ckpt", "step0000004.ckpt"], names
    ckpt = torch.load(tmp_path / CKPTS / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = checkpoint_io.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.arange(3.0)}, path)

    def dies_midway(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # also a BaseException that is not an Exception

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind
    kept = torch.load(path, weights_only=True)
    assert kept["global_step"] == 4 and torch.equal(kept["w"], torch.arange(3.0))


def small_checkpoint(step: int) -> dict:
    """What Lightning hands a strategy to save, in miniature."""
    return {"global_step": step, "state_dict": {"w": torch.full((3,), float(step))}, "optimizer_states": []}


def save(fmt: str, step: int, path: Path) -> None:
    """Through FSDP2Strategy's own save (one process: its collectives are no-ops)."""
    strategy = FSDP2Strategy(save_distributed_checkpoint=fmt == "dcp")
    strategy.save_checkpoint(small_checkpoint(step), path)


def saved_step_and_weights(path: Path) -> tuple[int, torch.Tensor]:
    if path.is_dir():
        state = {"state_dict": {"w": torch.empty(3)}}
        dcp_load(state, checkpoint_id=path)
        return torch.load(path / "meta.pt", weights_only=True)["global_step"], state["state_dict"]["w"]
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["global_step"], checkpoint["state_dict"]["w"]


@pytest.mark.parametrize("fmt", ["file", "dcp"])
def test_interrupted_fsdp2_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch, fmt):
    path = tmp_path / "last.ckpt"
    save(fmt, 2, path)
    save(fmt, 4, path)  # replaces the first one, leaving nothing else behind
    assert os.listdir(tmp_path) == ["last.ckpt"]

    def dies_midway(obj, file):  # the file, or a DCP folder's meta.pt after every shard is written
        Path(file).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io, "_write_durably", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save(fmt, 6, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary left behind
    step, weights = saved_step_and_weights(path)
    assert step == 4 and torch.equal(weights, torch.full((3,), 4.0))
    assert checkpoint_io.find_resume_checkpoint("last", tmp_path) == str(path)


def test_fsdp2_save_switches_format_in_place(tmp_path):
    path = tmp_path / "last.ckpt"
    for fmt, step in [("file", 2), ("dcp", 4), ("file", 6)]:
        save(fmt, step, path)
        assert os.listdir(tmp_path) == ["last.ckpt"] and path.is_dir() == (fmt == "dcp")
        assert saved_step_and_weights(path)[0] == step


def test_last_is_the_newest_complete_checkpoint(tmp_path):
    """What crashes leave behind: temporaries never count, whatever they hold; a folder without .metadata or
    an unreadable file is no checkpoint; a previous last.ckpt renamed aside is; the highest step wins."""
    def find() -> str | None:
        return checkpoint_io.find_resume_checkpoint("last", tmp_path)

    save("dcp", 4, tmp_path / "last.ckpt")
    save("file", 2, tmp_path / "step0000002.ckpt")
    save("dcp", 6, tmp_path / ".last.ckpt.0123abcd.tmp")  # whole, but the rename never came
    save("file", 6, tmp_path / ".step0000006.ckpt.4567cdef.tmp")
    (tmp_path / "step0000006.ckpt").mkdir()  # a folder half written in place (before saves were atomic)
    (tmp_path / "step0000006.ckpt" / "__0_0.distcp").write_bytes(b"shard")
    (tmp_path / "step0000008.ckpt").write_bytes(b"truncated")
    assert find() == str(tmp_path / "last.ckpt")
    # killed between the renames that swap a folder in: the previous one is only aside
    (tmp_path / "last.ckpt").rename(tmp_path / ".last.ckpt.89abcdef.old")
    assert find() == str(tmp_path / ".last.ckpt.89abcdef.old")
    save("file", 4, tmp_path / "step0000004.ckpt")  # the same step: either will do
    assert find() in (str(tmp_path / "step0000004.ckpt"), str(tmp_path / ".last.ckpt.89abcdef.old"))
    save("file", 10, tmp_path / "step0000010.ckpt")  # a file newer than any folder
    assert find() == str(tmp_path / "step0000010.ckpt")
    save("dcp", 10, tmp_path / "last.ckpt")  # a tie goes to last.ckpt; its save clears the leftovers
    assert find() == str(tmp_path / "last.ckpt")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".last.ckpt.")]


FSDP2 = ["experiment=quickstart", "strategy=fsdp", "trainer.devices=2", "data.seq_len=32", "data.val_tokens=600",
         "train.total_batch_size=8", "train.micro_batch_size=4", "train.warmup_steps=1", "train.max_steps=4",
         "train.eval_every_n_steps=2", "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=2",
         "callbacks.checkpoint.save_top_k=0"]  # last.ckpt only: nothing newer to resume from than the previous


@pytest.mark.parametrize("fmt", ["file", "dcp"])
def test_fsdp2_killed_midway_through_a_save_resumes_from_the_previous_checkpoint(tmp_path, fmt):
    overrides = [*FSDP2, f"strategy.save_distributed_checkpoint={fmt == 'dcp'}"]
    killed = run_py(tmp_path, *overrides, *inject("KillDuringSave", step=4), timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpts = tmp_path / CKPTS
    leftovers = [p for p in ckpts.iterdir() if p.name.startswith(".last.ckpt.") and p.name.endswith(".tmp")]
    assert len(leftovers) == 1, sorted(ckpts.iterdir())  # the save was under way...
    last = ckpts / "last.ckpt"
    assert last.is_dir() == (fmt == "dcp")
    assert checkpoint_io.read_checkpoint_meta(str(last))["world_size"] == 2  # ...and the previous one is whole
    assert checkpoint_io._saved_step(last) == 2
    _, before = mlflow_run(tmp_path)

    resumed = run_py(tmp_path, *overrides, "train.ckpt_path=last", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stderr + "".join(
        p.read_text() for p in (tmp_path / "outputs" / "runs").rglob("*.log"))
    _, after = mlflow_run(tmp_path)
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    losses = history(tmp_path, "train/loss")
    assert sorted(losses) == [1, 2, 3, 4] and len(losses[3]) == 2, losses  # step 3: before the kill and after
    assert losses[3][0] == losses[3][1], losses  # the resume is exact
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]  # the next save cleared the leftover
    assert checkpoint_io._saved_step(last) == 4


# --- the guard's "skip up to K non-finite steps", in process on a one-parameter model ----------------------

class Quadratic(L.LightningModule):
    """loss = (w - 3)^2 with SGD(lr=0.25): w_{t+1} = w_t - 0.5 (w_t - 3); infinite loss on ``bad_steps``."""

    def __init__(self, bad_steps: set[int]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.bad_steps = bad_steps

    def training_step(self, batch, batch_idx):
        loss = (self.w - 3) ** 2
        return loss * math.inf if self.global_step + 1 in self.bad_steps else loss

    def log_metrics(self, metrics):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.25)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(64, 1), batch_size=1)


def fit(guard: DivergenceGuard, bad_steps: set[int], steps: int = 6) -> Quadratic:
    model = Quadratic(bad_steps)
    trainer = L.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model)
    return model


def plain_w(steps: int, skipped: set[int]) -> float:
    w = 0.0
    for step in range(1, steps + 1):
        if step not in skipped:
            w -= 0.25 * 2 * (w - 3)
    return w


def test_guard_skips_up_to_k_nonfinite_steps():
    guard = DivergenceGuard(check_every_n_steps=1, max_skipped_steps=2)
    model = fit(guard, bad_steps={2, 5})
    assert guard.skipped_steps == 2
    assert model.w.item() == pytest.approx(plain_w(6, skipped={2, 5}), abs=1e-7)  # 2.90625


def test_guard_stops_on_one_more_than_k():
    guard = DivergenceGuard(check_every_n_steps=1, max_skipped_steps=1)
    with pytest.raises(DivergenceError, match=r"non-finite gradient \(after 1 skipped.*\) at step 4, lr 0.25, last finite loss 2.2500"):
        fit(guard, bad_steps={2, 4})


def test_guard_without_skips_stops_at_the_first_nonfinite_step():
    guard = DivergenceGuard(check_every_n_steps=3)
    with pytest.raises(DivergenceError, match=r"at step 2 \(detected at step 3\)"):
        fit(guard, bad_steps={2})
    loss_after_step_1 = (plain_w(1, set()) - 3) ** 2  # the loss computed in step 1 is at w0
    assert guard.last_finite_loss == pytest.approx((0 - 3) ** 2) and loss_after_step_1 == 2.25
