"""Reading runs from the MLflow store: experiments, runs with their tags, params and final metrics, and the
metric histories a report draws. Nothing here computes or renders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optsweep.report import project_root

SUMMARY_TAG = "optsweep.summary"  # a report's own run: never a training run to compare
REPLICATE_TAG = "optsweep.replicate"  # a sweep's winner rerun on a new seed (sweeper's replicates)
REPLICATE_OF_TAG = "optsweep.replicate_of"  # the search trial it replicates
STUDY_TAG = "optuna.study"
TRIAL_TAG = "optuna.trial"
PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "optuna.role"
DEFAULT_STATUSES = ("FINISHED",)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the store training writes to: ``sqlite:///<project root>/outputs/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'outputs' / 'mlflow.db'}"


@dataclass
class RunRecord:
    run_id: str
    run_name: str
    experiment_id: str
    experiment: str
    status: str
    start_time: int  # ms since the epoch
    tags: dict[str, str]
    metrics: dict[str, float]  # final values (MLflow's latest: the largest step)
    params: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float, int]]] = field(default_factory=dict)  # (step, value, ms)

    @property
    def method(self) -> str:
        """The method as the report names it: the ``method`` tag (SCALE's ablation variants each have
        their own, e.g. ``sgd+sign``), else the ``optimizer`` tag (runs logged before the method tag)."""
        return self.tags.get("method") or self.tags.get("optimizer", "?")

    optimizer = method  # the name earlier reports used

    @property
    def model(self) -> str:
        return self.tags.get("model", "?")

    @property
    def lr(self) -> float | None:
        """The configured peak learning rate (param optimizer.lr)."""
        return number(self.params.get("optimizer.lr"))

    @property
    def seed(self) -> str:
        return self.params.get("seed") or self.tags.get("seed", "?")

    @property
    def is_replicate(self) -> bool:
        return self.tags.get(REPLICATE_TAG) == "true"


class NoRunsError(LookupError):
    pass


def number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def client_for(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():  # MLflow would silently create an empty store
            raise NoRunsError(
                f"no MLflow store at {path}: train first (python run.py experiment=quickstart) or "
                f"pass --tracking-uri"
            )
    return MlflowClient(tracking_uri=tracking_uri)


def experiments_named(client, names: Sequence[str] | None, tracking_uri: str) -> list:
    if not names:
        return list(client.search_experiments())
    found = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise NoRunsError(
                f"no experiment named '{name}' in {tracking_uri} (experiments: {known}); list them "
                f"with: python -m optsweep.report compare --list --tracking-uri {tracking_uri}"
            )
        found.append(experiment)
    return found


def all_runs(client, experiments: list) -> list:
    runs, token = [], None
    ids = [e.experiment_id for e in experiments]
    while ids:
        page = client.search_runs(ids, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [r for r in runs if r.data.tags.get(SUMMARY_TAG) != "true"]


def record(run, experiment_names: dict[str, str]) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id[:8],
        experiment_id=run.info.experiment_id,
        experiment=experiment_names[run.info.experiment_id],
        status=run.info.status,
        start_time=run.info.start_time or 0,
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
    )


def counts(values) -> str:
    tally: dict[str, int] = {}
    for value in values:
        tally[value] = tally.get(value, 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(tally.items()))


def find_runs(client, experiment_names: Sequence[str] | None, tags: dict[str, str],
              tracking_uri: str) -> tuple[list[RunRecord], list[str]]:
    """Training runs (any status) in the experiments, passing every tag filter, and notes on what was left
    out. Raises NoRunsError naming the first filter that left nothing."""
    experiments = experiments_named(client, experiment_names, tracking_uri)
    where = ", ".join(f"'{e.name}'" for e in experiments)
    names = {e.experiment_id: e.name for e in experiments}
    runs = [record(r, names) for r in all_runs(client, experiments)]
    if not runs:
        raise NoRunsError(f"experiment(s) {where} hold no runs in {tracking_uri}; {listing(tracking_uri)}")
    for key, value in tags.items():
        kept = [r for r in runs if r.tags.get(key) == value]
        if not kept:
            seen = ", ".join(sorted({r.tags[key] for r in runs if key in r.tags})) or "none"
            raise NoRunsError(f"no run in {where} has tag {key}={value} (values seen: {seen}); "
                              f"{listing(tracking_uri)}")
        runs = kept
    notes = []
    untagged = [r for r in runs if "optimizer" not in r.tags or "model" not in r.tags]
    if untagged:  # e.g. the parent run of a sweep: its trials are the runs to compare
        runs = [r for r in runs if r not in untagged]
        notes.append(
            f"skipped {len(untagged)} run(s) without optimizer/model tags (sweep parents?): "
            + ", ".join(r.run_name for r in untagged[:5]) + (" ..." if len(untagged) > 5 else "")
        )
        if not runs:
            raise NoRunsError(f"the runs matching in {where} carry no optimizer/model tags (not training runs "
                              f"of this project?); {listing(tracking_uri)}")
    return runs, notes


def listing(tracking_uri: str) -> str:
    return f"list experiments and runs with: python -m optsweep.report compare --list --tracking-uri {tracking_uri}"


def load_history(client, run: RunRecord, keys: Sequence[str]) -> None:
    """Fill ``run.history[key]`` with (step, value, timestamp ms), by step, for each logged key."""
    for key in keys:
        if key in run.metrics and key not in run.history:
            points = client.get_metric_history(run.run_id, key)
            run.history[key] = sorted((m.step, m.value, m.timestamp) for m in points)


def sweep_parents(client, experiment_ids: Sequence[str]) -> list:
    """The sweeps' parent runs (tag optuna.role=sweep) in these experiments."""
    if not experiment_ids:
        return []
    return list(client.search_runs(list(experiment_ids), filter_string=f"tags.`{ROLE_TAG}` = 'sweep'"))


def list_store(client, tracking_uri: str) -> str:
    lines = [f"MLflow store: {tracking_uri}"]
    for experiment in client.search_experiments():
        runs = [record(r, {experiment.experiment_id: experiment.name}) for r in all_runs(client, [experiment])]
        pairs = sorted({f"{r.method}/{r.model}" for r in runs if "optimizer" in r.tags})
        lines.append(
            f"- {experiment.name}: {len(runs)} run(s) ({counts(r.status for r in runs) or 'none'})"
            + (f"; method/model: {', '.join(pairs)}" if pairs else "")
        )
    return "\n".join(lines)
