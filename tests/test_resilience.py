"""Runs that are killed, preempted or diverge lose nothing (issues 7 and 8), driven through run.py.

The reference is one uninterrupted run; every interrupted run must log, after its resume, exactly the same
train/val losses at every step (bit-exact: CPU fp32, the data position, RNG and optimizer state restored).
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

from optsweep.training import checkpointing
from optsweep.training.callbacks import DivergenceError, DivergenceGuard

torch.set_num_threads(1)

STEPS = 10
BASE = ["experiment=quickstart", "data.seq_len=32", "data.val_tokens=600", "train.total_batch_size=8",
        "train.micro_batch_size=4", "train.warmup_steps=2", f"train.max_steps={STEPS}",
        "train.eval_every_n_steps=2", "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=4"]
CKPTS = "outputs/checkpoints/quickstart/adamw-llama_tiny-seed42"


def inject(kind: str, **kwargs) -> list[str]:
    return [f"+callbacks.inject._target_=_inject.{kind}"] + [f"+callbacks.inject.{k}={v}" for k, v in kwargs.items()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    result = run_py(tmp, *BASE)
    assert result.returncode == 0, result.stderr[-3000:]
    return {m: history(tmp, m) for m in ("train/loss", "val/loss")}


def assert_same_curves(tmp: Path, reference: dict) -> None:
    for metric, ref in reference.items():
        got = history(tmp, metric)
        assert sorted(got) == sorted(ref), metric
        for step, values in got.items():
            assert all(v == ref[step][0] for v in values), (metric, step, values, ref[step])


def test_sigkill_midway_then_resume_is_bit_exact(tmp_path, reference):
    killed = run_py(tmp_path, *BASE, *inject("SignalAt", step=6, signum="SIGKILL"))
    assert killed.returncode == -signal.SIGKILL
    ckpt = torch.load(tmp_path / CKPTS / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4  # the newest checkpoint before the kill
    _, before = mlflow_run(tmp_path)
    resumed = run_py(tmp_path, *BASE, "train.ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, after = mlflow_run(tmp_path)  # asserts there is still exactly one run
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert_same_curves(tmp_path, reference)


def test_sigterm_saves_marks_killed_and_resumes_exactly(tmp_path, reference):
    stopped = run_py(tmp_path, *BASE, *inject("SignalAt", step=5, signum="SIGTERM"))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at step 5" in stopped.stderr
    ckpt = torch.load(tmp_path / CKPTS / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 5
    _, run = mlflow_run(tmp_path)
    assert run.info.status == "KILLED"
    resumed = run_py(tmp_path, *BASE, "train.ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, again = mlflow_run(tmp_path)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert_same_curves(tmp_path, reference)


def test_nan_stops_with_step_lr_last_loss_and_keeps_last_good_checkpoint(tmp_path, reference):
    # NaN weight after step 6: step 7's loss is NaN; the guard (checking every 10 steps, and before every
    # checkpoint) stops at step 8 before the step-8 checkpoint is written.
    result = run_py(tmp_path, *BASE, *inject("NanAt", step=6))
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
    io = checkpointing.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.arange(3.0)}, path)

    def dies_midway(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # also a BaseException that is not an Exception

    monkeypatch.setattr(checkpointing.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind
    kept = torch.load(path, weights_only=True)
    assert kept["global_step"] == 4 and torch.equal(kept["w"], torch.arange(3.0))


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
