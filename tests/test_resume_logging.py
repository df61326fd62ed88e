"""A run stopped short of its budget ends with a checkpoint of its last step, and resuming it continues the
same MLflow run with synchronous logging: the run's first params kept, the resume's own values recorded
beside them (``resume/<n>/<key>``), never a "Changing param values is not allowed" failure."""

from __future__ import annotations

import torch
from _inject import mlflow_run, run_py

CKPTS = "outputs/checkpoints/quickstart/adamw-llama_tiny-seed42"
# 7 steps, a checkpoint every 4: neither the first stop (5) nor the end (7) is a multiple
BASE = ["experiment=quickstart", "data.seq_len=32", "data.val_tokens=600", "train.total_batch_size=8",
        "train.micro_batch_size=4", "train.warmup_steps=2", "train.max_steps=7", "train.eval_every_n_steps=2",
        "train.eval_at_start=false", "callbacks.checkpoint.every_n_train_steps=4", "logger.mlflow.synchronous=true"]


def saved_step(path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu", mmap=True)["global_step"]


def test_stop_then_resume_keeps_params_and_checkpoints_the_last_step(tmp_path):
    first = run_py(tmp_path, *BASE, "trainer.max_steps=5")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = tmp_path / CKPTS
    assert saved_step(ckpts / "last.ckpt") == 5 and saved_step(ckpts / "step0000005.ckpt") == 5
    _, before = mlflow_run(tmp_path)

    resumed = run_py(tmp_path, *BASE, "train.ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert saved_step(ckpts / "last.ckpt") == 7 and saved_step(ckpts / "step0000007.ckpt") == 7
    client, run = mlflow_run(tmp_path)  # still the only run
    assert run.info.run_id == before.info.run_id and run.info.status == "FINISHED"
    params = run.data.params
    # the first values stay; what the resume changed is recorded under its number
    for key in ("train.ckpt_path", "paths.run_dir", "trainer.max_steps"):
        assert params[key] == before.data.params[key], key
    assert params["resume/1/train.ckpt_path"] == "last" and params["resume/1/trainer.max_steps"] == "None"
    assert params["resume/1/paths.run_dir"] != params["paths.run_dir"]
    assert not any(k.startswith("resume/") and not k.startswith("resume/1/") for k in params)
    assert run.data.tags["resume_count"] == "1"
    assert run.data.tags["resumed_from"] == str(ckpts / "last.ckpt")
    assert client.get_metric_history(run.info.run_id, "val/loss")[-1].step == 7
