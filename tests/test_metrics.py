"""The numbers every comparison rests on, recomputed by hand with plain torch.

``val/loss`` (the sweep objective) must be the summed token cross-entropy over non-pad targets divided by
their count, pooled over every batch of every rank; ``val/loss_paper`` the sum of per-batch mean losses over
(batches + 1); ``train/loss`` the mean over the ranks of the mean over accumulated micro batches of each
micro batch's token-mean loss (what the gradient averages); ``tokens/seen_nonpad`` the count of non-pad
input tokens. The module runs for real through Lightning (``_metrics_worker.py``) on padded rows of unequal
lengths, on 1 process and on 2 DDP processes holding different numbers of rows.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import _metrics_worker as worker
import pytest
import torch

from optsweep.models.llama import build_llama

WORKER = Path(worker.__file__)


def _run(tmp_path: Path, world_size: int) -> list[tuple[int, dict[str, float]]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(WORKER), str(tmp_path), str(world_size)], check=False, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [(step, metrics) for step, metrics in json.loads((tmp_path / "logged.json").read_text())]


def _initial_model(tmp_path: Path) -> torch.nn.Module:
    model = build_llama(worker.SPEC, pad_token_id=worker.PAD)
    model.load_state_dict(torch.load(tmp_path / "initial.pt", weights_only=True))
    return model.eval()


@torch.no_grad()
def _token_losses(model, batch) -> tuple[float, int]:
    """(sum of next-token cross-entropies over non-pad targets, their count), written out by hand."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    predicted, targets = logits[:, :-1], batch["labels"][:, 1:]
    keep = targets != -100
    log_probs = torch.log_softmax(predicted, dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(-(picked * keep).sum()), int(keep.sum())


def _expected_val(model, ranks) -> tuple[float, float]:
    loss_sum = tokens = batch_means = batches = 0
    for rank in ranks:
        for batch in worker.val_batches(rank):
            s, n = _token_losses(model, batch)
            loss_sum, tokens = loss_sum + s, tokens + n
            batch_means, batches = batch_means + s / n, batches + 1
    return loss_sum / tokens, batch_means / (batches + 1)


def _expected_train(model, ranks) -> tuple[list[float], list[int]]:
    """Per optimizer step: train/loss and the cumulative non-pad input tokens over all ranks."""
    per_rank_means, counted = [], [0] * worker.STEPS
    for rank in ranks:
        micro = worker.train_batches(rank)
        means = []
        for step in range(worker.STEPS):
            chunk = micro[step * worker.ACCUMULATE:(step + 1) * worker.ACCUMULATE]
            means.append(sum(s / n for s, n in (_token_losses(model, b) for b in chunk)) / len(chunk))
            counted[step] += sum(int(b["attention_mask"].sum()) for b in chunk)
        per_rank_means.append(means)
    losses = [sum(m[step] for m in per_rank_means) / len(ranks) for step in range(worker.STEPS)]
    cumulative = [sum(counted[:step + 1]) for step in range(worker.STEPS)]
    return losses, cumulative


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_logged_losses_and_token_counts_match_hand_computation(tmp_path, world_size):
    logged = _run(tmp_path, world_size)
    model = _initial_model(tmp_path)
    ranks = range(world_size)

    val = next(m for step, m in logged if step == 0 and "val/loss" in m)
    loss, loss_paper = _expected_val(model, ranks)
    # the check has teeth: on these rows the two estimators and the unweighted mean all differ
    unweighted = sum(_token_losses(model, b)[0] / _token_losses(model, b)[1]
                     for r in ranks for b in worker.val_batches(r))
    unweighted /= sum(len(worker.val_batches(r)) for r in ranks)
    assert abs(unweighted - loss) > 1e-3 and abs(loss_paper - loss) > 1e-3
    assert val["val/loss"] == pytest.approx(loss, rel=1e-6)
    assert val["val/ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert val["val/loss_paper"] == pytest.approx(loss_paper, rel=1e-6)
    assert val["val/tokens"] == sum(_token_losses(model, b)[1] for r in ranks for b in worker.val_batches(r))

    train_losses, nonpad = _expected_train(model, ranks)
    by_step = {step: m for step, m in logged if "train/loss" in m}
    assert sorted(by_step) == list(range(1, worker.STEPS + 1))
    for step in range(1, worker.STEPS + 1):
        assert by_step[step]["train/loss"] == pytest.approx(train_losses[step - 1], rel=1e-6)
        assert by_step[step]["tokens/seen_nonpad"] == nonpad[step - 1]
        padded = sum(b["input_ids"].numel() for b in worker.train_batches(0)[:step * worker.ACCUMULATE])
        assert by_step[step]["tokens/seen"] == padded * world_size  # nominal: rank 0's shape x ranks
