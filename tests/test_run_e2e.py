"""run.py driven as a user drives it: a subprocess per run, the embedded sample corpus, an MLflow store in
a temporary folder. Checks what lands in MLflow (params, tags, metrics, artifacts) and the error paths.

One run carries most of the README's promises at once (a subprocess costs ~15 s of imports): SCALE's
sign-normalised SGD ablation (its own `method` tag, different lrs per parameter role) for 6 steps of a
12-step schedule (`trainer.max_steps`), logged to MLflow and CSV together, with `throughput.peak_flops` set
so MFU is logged on the CPU, over the checkpoints of an earlier run, which must be moved aside.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
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
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


def mlflow_runs(tmp: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/outputs/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return client, client.search_runs([exp.experiment_id])


# SCALE's ablation "SGD + sign": no momentum anywhere, so its only state is AdamW's on the 1-D weights
SIGN_SGD = ["optimizer=scale", "optimizer.normalization=sign", "optimizer.momentum_on=none", "optimizer.lr=1e-3",
            "optimizer.adam_lr=2e-2"]
PEAK_FLOPS = 1e12
OLD_CKPTS = "outputs/checkpoints/quickstart/scale-llama_tiny-seed7"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    old = tmp / OLD_CKPTS
    old.mkdir(parents=True)
    (old / "step0000099.ckpt").write_bytes(b"an earlier run's checkpoint")
    result = run(tmp, *TINY, *SIGN_SGD, "train.max_steps=12", "trainer.max_steps=6", "train.eval_every_n_steps=3",
                 "callbacks.checkpoint.every_n_train_steps=3", "trainer.log_every_n_steps=1", "seed=7",
                 "logger=[mlflow,csv]", f"throughput.peak_flops={PEAK_FLOPS}")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, result


def history(client, run, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}


def test_run_logs_params_tags_metrics_and_artifacts(quick_run):
    tmp, result = quick_run
    assert "optimizer:" in result.stdout and "total_batch_size: 8" in result.stdout  # resolved config printed
    client, runs = mlflow_runs(tmp, "quickstart")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "scale-llama_tiny"
    tags = r.data.tags
    assert {k: tags[k] for k in ("optimizer", "method", "model", "data", "strategy", "seed")} == {
        "optimizer": "scale", "method": "sgd+sign", "model": "llama_tiny", "data": "sample", "strategy": "auto",
        "seed": "7"}
    git = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    if git.returncode == 0:  # the checkout the run's code came from
        assert tags["git_dirty"] == str(bool(git.stdout.strip())).lower()
        assert tags["git_commit"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                                    text=True, check=True).stdout.strip()
    params = r.data.params
    assert params["train.total_batch_size"] == "8" and params["optimizer.lr"] == "0.001"
    assert params["model.hidden_size"] == "64"
    for metric in ("train/loss", "val/loss", "val/ppl", "val/loss_paper", "val/ppl_paper", "lr", "tokens/seen",
                   "tokens/seen_nonpad", "throughput/tokens_per_s", "throughput/step_time_s",
                   "memory/peak_bytes", "model/params", "optimizer/state_bytes",
                   "memory/model_optimizer_bytes"):
        assert metric in r.data.metrics, metric
    val = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val/loss")]
    assert [s for s, _ in val] == [0, 3, 6]  # evaluated at start, every 3 optimizer steps, up to trainer.max_steps
    ppl = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val/ppl")}
    assert all(math.isclose(ppl[s], math.exp(v), rel_tol=1e-6) for s, v in val)
    paper = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val/loss_paper")}
    assert all(paper[s] < v for s, v in val)  # the batches+1 estimator always reads lower
    tokens = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "tokens/seen")}
    assert tokens[6] == 6 * 8 * 128  # steps x global batch x seq len
    # no momentum: only AdamW's two fp32 moments for each of the 5 norm gains of 64 (its step count is an int)
    assert r.data.metrics["optimizer/state_bytes"] == 5 * 2 * 4 * 64
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "config")}
    assert "config/resolved.yaml" in artifacts
    assert {a.path for a in client.list_artifacts(r.info.run_id, "environment")} == {"environment/versions.json"}


def test_objective_and_checkpoints(quick_run):
    """trainer.max_steps=6 stops at step 6 of the 12-step budget; the earlier run's checkpoints are moved
    aside (not deleted), and the new folder holds only this run's."""
    tmp, result = quick_run
    assert "final val/loss" in result.stderr + result.stdout
    ckpts = list((tmp / "outputs" / "checkpoints" / "quickstart").rglob("last.ckpt"))
    assert len(ckpts) == 1
    import torch

    checkpoint = torch.load(ckpts[0], weights_only=True, map_location="cpu")
    assert checkpoint["optsweep"]["optimizer"] == "scale" and checkpoint["global_step"] == 6
    new = tmp / OLD_CKPTS
    assert sorted(p.name for p in new.iterdir()) == ["last.ckpt", "step0000003.ckpt", "step0000006.ckpt"]
    (aside,) = new.parent.glob(f"{new.name}.*")
    assert [(p.name, p.read_bytes()) for p in aside.iterdir()] == [("step0000099.ckpt", b"an earlier run's checkpoint")]


def test_stopping_early_keeps_the_whole_schedule(quick_run):
    """lr at step s is lr x f(s) of the 12-step budget (linear warmup over 2 steps, cosine to 0.1 at step
    12), per parameter role: the 1-D weights follow adam_lr; `lr` is the first group's (the matrices')."""
    tmp, _ = quick_run
    client, (r,) = mlflow_runs(tmp, "quickstart")

    def f(step: int) -> float:
        return step / 2 if step < 2 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 10))

    logged = {name: history(client, r, name) for name in ("lr", "lr/hidden", "lr/embedding", "lr/output", "lr/vector")}
    assert sorted(history(client, r, "train/loss")) == [1, 2, 3, 4, 5, 6]  # stopped at trainer.max_steps
    for name, base in (("lr", 1e-3), ("lr/hidden", 1e-3), ("lr/embedding", 1e-3), ("lr/output", 1e-3),
                       ("lr/vector", 2e-2)):
        assert logged[name] == pytest.approx({s: base * f(s) for s in range(1, 7)}, rel=1e-12), name


def test_mfu_on_cpu_is_flops_per_token_times_tokens_per_s_over_the_peak(quick_run):
    """FLOPs per token written out by hand for llama_tiny (hidden 64, MLP 172, 2 layers, 4 heads of 16, seq
    len 128): 6 x the matmul weights (q, k, v, o, gate, up, down per layer, and lm_head; not the embedding
    lookup, not the norms) + 12 x layers x heads x head dim x seq len (attention scores and values,
    forward and backward, no causal discount)."""
    tmp, _ = quick_run
    client, (r,) = mlflow_runs(tmp, "quickstart")
    h, inner, layers, heads, seq = 64, 172, 2, 4, 128
    params = int(r.data.metrics["model/params"])
    # params = embedding + lm_head (vocab x h each) + per layer (4 h^2 + 3 h inner + 2 norms) + the final norm
    vocab, rest = divmod(params - layers * (4 * h * h + 3 * h * inner + 2 * h) - h, 2 * h)
    assert rest == 0 and vocab > 1000, (params, vocab)
    matmul = layers * (4 * h * h + 3 * h * inner) + vocab * h
    flops_per_token = 6 * matmul + 12 * layers * heads * (h // heads) * seq
    mfu = history(client, r, "throughput/mfu")
    per_device = history(client, r, "throughput/tokens_per_s_per_device")
    assert sorted(mfu) == [1, 2, 3, 4, 5, 6] and sorted(per_device) == sorted(mfu)
    for step, value in mfu.items():
        assert value == pytest.approx(flops_per_token * per_device[step] / PEAK_FLOPS, rel=1e-9), step
    assert history(client, r, "throughput/tokens_per_s") == per_device  # one process


def test_csv_logger_writes_the_same_metrics(quick_run):
    tmp, _ = quick_run
    client, (r,) = mlflow_runs(tmp, "quickstart")
    (path,) = (tmp / "outputs" / "csv" / "quickstart").glob("version_*/metrics.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for metric in ("train/loss", "val/loss", "lr/vector", "tokens/seen"):
        logged = {int(row["step"]): float(row[metric]) for row in rows if row.get(metric)}
        assert logged == pytest.approx(history(client, r, metric), rel=1e-6), metric


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


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_tags_say_whether_the_tree_was_dirty(tmp_path):
    from optsweep.tracking import git_state

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "first")
    (tmp_path / "notes.txt").write_text("untracked files do not make a tree dirty\n")
    assert git_state(tmp_path) == {"git_commit": git("rev-parse", "HEAD"), "git_dirty": "false"}
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_state(tmp_path)["git_dirty"] == "true"
