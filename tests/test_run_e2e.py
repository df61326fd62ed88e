"""run.py driven as a user drives it: a subprocess per run, the embedded sample corpus, an MLflow store in
a temporary folder. Checks what lands in MLflow (params, tags, metrics, artifacts) and the error paths."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=quickstart", "train.total_batch_size=8", "train.micro_batch_size=4",
        "train.warmup_steps=2", "data.val_tokens=2000"]


def run(tmp: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT_ROOT": str(tmp), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # The sample corpus is shared between tests (built once into the session cache) through paths.data_dir.
    data_dir = tmp.parent / "shared-data"
    cmd = [sys.executable, str(ROOT / "run.py"), f"paths.data_dir={data_dir}", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def mlflow_runs(tmp: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/outputs/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return client, client.search_runs([exp.experiment_id])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    result = run(tmp, *TINY, "train.max_steps=6", "train.eval_every_n_steps=3", "seed=7")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, result


def test_run_logs_params_tags_metrics_and_artifacts(quick_run):
    tmp, result = quick_run
    assert "optimizer:" in result.stdout and "total_batch_size: 8" in result.stdout  # resolved config printed
    client, runs = mlflow_runs(tmp, "quickstart")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "adamw-llama_tiny"
    tags = r.data.tags
    assert {k: tags[k] for k in ("optimizer", "model", "data", "strategy", "seed")} == {
        "optimizer": "adamw", "model": "llama_tiny", "data": "sample", "strategy": "auto", "seed": "7"}
    assert len(tags["git_commit"]) in (40, 7) or tags["git_commit"] == "unknown"
    params = r.data.params
    assert params["train.total_batch_size"] == "8" and params["optimizer.lr"] == "0.001"
    assert params["model.hidden_size"] == "64"
    for metric in ("train/loss", "val/loss", "val/ppl", "val/loss_paper", "val/ppl_paper", "lr", "tokens/seen",
                   "tokens/seen_nonpad", "throughput/tokens_per_s", "throughput/step_time_s",
                   "memory/peak_bytes", "model/params", "optimizer/state_bytes",
                   "memory/model_optimizer_bytes"):
        assert metric in r.data.metrics, metric
    val = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val/loss")]
    assert [s for s, _ in val] == [0, 3, 6]  # evaluated at start, every 3 optimizer steps
    ppl = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val/ppl")}
    assert all(math.isclose(ppl[s], math.exp(v), rel_tol=1e-6) for s, v in val)
    paper = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val/loss_paper")}
    assert all(paper[s] < v for s, v in val)  # the batches+1 estimator always reads lower
    tokens = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "tokens/seen")}
    assert tokens[6] == 6 * 8 * 128  # steps x global batch x seq len
    # AdamW keeps two moments per parameter (+ a 4-byte step counter per tensor)
    params_count = r.data.metrics["model/params"]
    state = r.data.metrics["optimizer/state_bytes"]
    assert 2 * 4 * params_count <= state <= 2 * 4 * params_count + 4 * 64
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "config")}
    assert "config/resolved.yaml" in artifacts
    assert {a.path for a in client.list_artifacts(r.info.run_id, "environment")} == {"environment/versions.json"}


def test_objective_and_checkpoints(quick_run):
    tmp, result = quick_run
    assert "final val/loss" in result.stderr + result.stdout
    ckpts = list((tmp / "outputs" / "checkpoints" / "quickstart").rglob("last.ckpt"))
    assert len(ckpts) == 1
    import torch

    checkpoint = torch.load(ckpts[0], weights_only=True, map_location="cpu")
    assert checkpoint["optsweep"]["optimizer"] == "adamw" and checkpoint["global_step"] == 6


def test_paper_60m_shape_logs_its_parameter_count(tmp_path):
    result = run(tmp_path, "model=llama_60m", "data=sample", "trainer=cpu", "train.max_steps=2",
                 "train.total_batch_size=2", "train.micro_batch_size=2", "train.warmup_steps=0",
                 "data.seq_len=64", "data.val_tokens=500", "train.eval_at_start=false", "task_name=p60")
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = mlflow_runs(tmp_path, "p60")
    assert round(runs[0].data.metrics["model/params"] / 1e6, 2) == 58.07


def test_paper_settings_are_picked_up_by_optimizer_and_model(tmp_path):
    result = run(tmp_path, "model=llama_350m", "data=sample", "train.max_steps=0")
    # max_steps=0 is refused after composition: the printed config shows what the paper preset resolved to
    assert result.returncode == 2
    assert "warmup_steps: 6000" in result.stdout and "total_batch_size: 512" in result.stdout


def test_indivisible_batch_fails_with_one_sentence(tmp_path):
    result = run(tmp_path, *TINY, "train.total_batch_size=10", "train.micro_batch_size=4")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train.total_batch_size=10 is not divisible")
    assert "Traceback" not in result.stderr


def test_c4_without_network_names_the_offline_options(tmp_path):
    result = run(tmp_path, "data=c4", "model=llama_tiny", "trainer=cpu", "train.max_steps=1")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "data=sample" in last and "data=c4_local" in last
    assert "Traceback" not in result.stderr
