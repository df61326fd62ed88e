"""The report into MLflow: a report run (tag ``optsweep.summary=true``) in the compared runs' experiment holding
the report's files as artifacts and each method's numbers as metrics, and the same on the sweep's parent run
when every compared run is a trial of one sweep, so the comparison sits where the sweep is looked at."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from optsweep.report import queries

METRIC_PREFIX = "report"


def metric_key(*parts: str) -> str:
    """MLflow keys allow letters, digits, _ - . / : and space (method sgd+sign -> sgd_sign)."""
    import re

    return "/".join(re.sub(r"[^\w\-.: ]", "_", p) for p in parts)


def summary_metrics(summaries, pairs, sensitivity, to_target) -> dict[str, float]:
    """report/<method>/<model>/<number>: the interval, seeds, robustness, divergence rate, speedup, p-value."""
    metrics: dict[str, float] = {}

    def put(method: str, model: str, name: str, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            metrics[metric_key(METRIC_PREFIX, method, model, name)] = float(value)

    for s in summaries:
        put(s.method, s.model, "n_seeds", s.loss.n if s.loss else 0)
        if s.loss:
            put(s.method, s.model, "val_loss_mean", s.loss.mean)
            put(s.method, s.model, "val_loss_ci_low", s.loss.low)
            put(s.method, s.model, "val_loss_ci_high", s.loss.high)
        if s.ppl:
            put(s.method, s.model, "val_ppl_mean", s.ppl.mean)
        put(s.method, s.model, "lr", s.cell.lr)
    for r in sensitivity:
        put(r.method, r.model, "lr_robustness_decades", r.robustness_decades)
        put(r.method, r.model, "divergence_rate", r.divergence_rate)
    for r in to_target:
        put(r.method, r.model, "tokens_to_target", r.tokens)
        put(r.method, r.model, "speedup_to_target", r.speedup)
    for r in pairs:
        put(r.method, r.model, "p_holm_vs_baseline", r.p_holm)
        put(r.method, r.model, "loss_difference_vs_baseline", r.difference)
    return metrics


def _log(client, run_id: str, out: Path, metrics: dict[str, float], artifact_path: str | None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for start in range(0, len(items), 900):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=items[start:start + 900])
    for path in sorted(out.iterdir()):
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path)


def _sweep_parent(summaries) -> str | None:
    """The parent run every compared run hangs under, if there is exactly one."""
    parents = {r.tags.get(queries.PARENT_TAG) for s in summaries for r in s.cell.runs}
    return next(iter(parents)) if len(parents) == 1 and None not in parents else None


def _experiment(summaries, named: Sequence[str] | None) -> str:
    """The first experiment named, else the one most compared runs are in."""
    runs = [r for s in summaries for r in s.cell.runs]
    if named:
        for run in runs:
            if run.experiment == named[0]:
                return run.experiment_id
    tally: dict[str, int] = {}
    for run in runs:
        tally[run.experiment_id] = tally.get(run.experiment_id, 0) + 1
    return max(tally, key=tally.get)


def publish(client, summaries, pairs, sensitivity, to_target, out: Path, named: Sequence[str] | None,
            params: dict[str, str]) -> str:
    """Log the report; returns the report run's id."""
    metrics = summary_metrics(summaries, pairs, sensitivity, to_target)
    run = client.create_run(_experiment(summaries, named), run_name=f"report-{out.name}",
                            tags={queries.SUMMARY_TAG: "true"})
    run_id = run.info.run_id
    try:
        for key, value in params.items():
            client.log_param(run_id, key, value[:6000])
        _log(client, run_id, out, metrics, None)
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    parent = _sweep_parent(summaries)
    if parent is not None:
        # the sweep's own run shows its comparison; the newest report's metrics overwrite older ones
        _log(client, parent, out, metrics, f"report/{out.name}")
        client.set_tag(parent, "optsweep.report_run", run_id)
    return run_id
