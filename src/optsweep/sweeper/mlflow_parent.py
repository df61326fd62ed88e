"""The sweep's MLflow parent run, and the sweeper's finishing touches on each trial's child run.

One parent run per study, so the UI shows a study as one tree however many times and places it ran. The
study itself names its parent (user attribute ``mlflow_parent_run_id``): the worker whose storage created
the study (an atomic insert, whatever the storage) creates the parent, and workers that join a study still
being set up wait for that name, instead of each creating a parent and trashing all but one. A study
without the attribute (an older sweep) finds its parent by its tags. The parent's trial counts are the
study's, logged at step = finished trials, so the count taken last is the one the UI shows. MLflow is an
extra: any MLflow error is logged as a warning and the sweep goes on without it.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from pathlib import Path
from typing import Any

from optsweep.sweeper._locks import sqlite_creation_lock

log = logging.getLogger(__name__)

STUDY_TAG = "optuna.study"
ROLE_TAG = "optuna.role"
TRIAL_TAG = "optuna.trial"
STATE_TAG = "optuna.state"
PARENT_TAG = "mlflow.parentRunId"
PARENT_ATTR = "mlflow_parent_run_id"  # the study's user attribute naming its parent run
PARENT_WAIT_S = 60.0  # how long a joining worker waits for the study's creator to name the parent

# child run status by the trial's final Optuna state
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}


def _mlflow_key(name: str) -> str:
    # MLflow keys allow letters, digits, _ - . / : and space
    return re.sub(r"[^\w\-./: ]", "_", name)


def _guarded(method):  # type: ignore[no-untyped-def]
    def wrapper(self: SweepRun, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - MLflow must never stop the sweep
            log.warning("MLflow: %s failed (%s: %s); the sweep goes on", method.__name__,
                        type(error).__name__, error)
            return None

    return wrapper


class SweepRun:
    def __init__(self, client: Any, experiment_id: str, run_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.run_id = run_id

    @classmethod
    def open(cls, tracking_uri: str | None, experiment_name: str | None, study: Any, created: bool,
             description: dict[str, str]) -> SweepRun | None:
        """Find or create the parent run of the Optuna `study` (`created`: this worker's storage created
        it); None when MLflow is not configured or fails."""
        if not tracking_uri or not experiment_name:
            log.info("no MLflow tracking URI / experiment for the sweep: no parent run")
            return None
        for attempt in range(4):
            try:
                return cls._open(tracking_uri, experiment_name, study, created, description)
            except Exception as error:  # noqa: BLE001
                # a worker started at the same moment may be creating the same database tables
                if attempt == 3:
                    log.warning("MLflow unavailable (%s: %s): the sweep runs without a parent run",
                                type(error).__name__, error)
                    return None
                time.sleep(1.0 + attempt + random.random())
        return None

    @classmethod
    def _open(cls, tracking_uri: str, experiment_name: str, study: Any, created: bool,
              description: dict[str, str]) -> SweepRun:
        from mlflow import MlflowClient

        with sqlite_creation_lock(tracking_uri):  # workers started together must not both create its tables
            client = MlflowClient(tracking_uri)
            experiment_id = _experiment_id(client, tracking_uri, experiment_name)
        run_id = _named_parent(client, experiment_id, study)
        if run_id is None and not created and not study.get_trials(deepcopy=False):
            run_id = _wait_for_parent(client, experiment_id, study)
        if run_id is None:
            run_id = cls._find_or_create(client, tracking_uri, experiment_id, study.study_name, description)
            study.set_user_attr(PARENT_ATTR, run_id)
        client.update_run(run_id, status="RUNNING")
        log.info("MLflow parent run %s (experiment %s, study %s)", run_id, experiment_name, study.study_name)
        return cls(client, experiment_id, run_id)

    @classmethod
    def _find_or_create(cls, client: Any, tracking_uri: str, experiment_id: str, study_name: str,
                        description: dict[str, str]) -> str:
        """The parent found by its tags, else a new one. Only where the study does not name its parent: an
        sqlite store is locked meanwhile; elsewhere workers that both created one keep the oldest."""
        with sqlite_creation_lock(tracking_uri):
            found = cls._parents(client, experiment_id, study_name)
            if found:
                return found[0].info.run_id
            tags = {STUDY_TAG: study_name, ROLE_TAG: "sweep", "mlflow.runName": f"sweep {study_name}"}
            tags.update({_mlflow_key(f"search.{key}"): value[:5000] for key, value in description.items()})
            run_id = client.create_run(experiment_id, tags=tags).info.run_id
            found = cls._parents(client, experiment_id, study_name)
            if found and found[0].info.run_id != run_id:
                client.delete_run(run_id)
                run_id = found[0].info.run_id
            return run_id

    @staticmethod
    def _parents(client: Any, experiment_id: str, study_name: str) -> list[Any]:
        escaped = study_name.replace("'", "\\'")
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{STUDY_TAG}` = '{escaped}'",
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def _children(self, trial_number: int, study: str | None = None) -> list[Any]:
        # the search and its replicate study both number trials from 0: the study tag tells them apart
        where = f"tags.`{PARENT_TAG}` = '{self.run_id}' and tags.`{TRIAL_TAG}` = '{trial_number}'"
        if study is not None:
            escaped = study.replace("'", "\\'")
            where += f" and tags.`{STUDY_TAG}` = '{escaped}'"
        return self.client.search_runs([self.experiment_id], filter_string=where)

    def find_child(self, trial_number: int, study: str | None = None) -> str | None:
        runs = self._children(trial_number, study)
        return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None

    @_guarded
    def finish_child(self, run_id: str | None, trial_number: int, state: str, value: float | None,
                     params: dict[str, Any], reason: str | None, was_interrupted: bool, study: str | None = None,
                     extra_tags: dict[str, str] | None = None) -> None:
        """Tag the trial's child run with what Optuna recorded and give it a status that says so."""
        from mlflow.entities import Metric, Param, RunTag

        run_id = run_id or self.find_child(trial_number, study)
        if run_id is None:
            log.info("trial %d has no MLflow run (logger off, or it failed before creating one)", trial_number)
            return
        # the training code normally sets the parent already; setting it again is harmless
        tags = {PARENT_TAG: self.run_id, TRIAL_TAG: str(trial_number), STATE_TAG: state, **(extra_tags or {})}
        if reason:
            tags["optuna.failure_reason"] = reason[:5000]
        metrics = []
        if value is not None and math.isfinite(value):
            metrics.append(Metric("optuna/objective", value, int(time.time() * 1000), 0))
        self.client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(_mlflow_key(f"optuna/{k}"), str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.client.set_terminated(run_id, status=_STATUS[state])
        if was_interrupted:
            # an attempt killed with its worker and not resumed by this one goes to the trash
            for run in self._children(trial_number, study):
                if run.info.run_id != run_id and run.data.tags.get(STATE_TAG) == "INTERRUPTED":
                    self.client.delete_run(run.info.run_id)

    @_guarded
    def mark_interrupted(self, trial_number: int, reason: str, study: str | None = None) -> None:
        """The trial will run again under the same number. Its dead attempt is marked; if the new attempt
        resumes it (same run id, from the trial's checkpoint) it becomes live again, otherwise
        finish_child moves it to MLflow's trash (restorable there), keeping one child per trial."""
        run_id = self.find_child(trial_number, study)
        if run_id is not None and self.client.get_run(run_id).info.status in ("RUNNING", "KILLED"):
            self.client.set_tag(run_id, STATE_TAG, "INTERRUPTED")
            self.client.set_tag(run_id, "optuna.failure_reason", reason)
            self.client.set_terminated(run_id, status="KILLED")

    @_guarded
    def stopped(self) -> None:
        """This worker's part of the sweep ended early (signal, error); a rerun sets it RUNNING again."""
        self.client.set_terminated(self.run_id, status="KILLED")

    @_guarded
    def summarize(self, counts: dict[str, int], best: Any | None, running_elsewhere: int,
                  counted_at: float) -> None:
        """The study's trial counts (every state, zeros included) as of `counted_at` (seconds since the
        epoch). Logged at step = finished trials and time = counted_at: MLflow shows the value of the
        highest step, then the latest time, so a worker that finished earlier but logs later cannot
        overwrite the counts of the one that finished last."""
        from mlflow.entities import Metric

        finished = sum(counts.get(state, 0) for state in ("COMPLETE", "PRUNED", "FAIL"))
        stamp = int(counted_at * 1000)
        metrics = [Metric(f"trials_{state.lower()}", count, stamp, finished) for state, count in counts.items()]
        if best is not None:
            metrics.append(Metric("best_value", best.value, stamp, finished))
        self.client.log_batch(self.run_id, metrics=metrics)
        # the best trial's tags only from the newest count (tags have no step to order them by)
        if best is not None and self.client.get_run(self.run_id).data.metrics.get("best_value") == best.value:
            self.client.set_tag(self.run_id, "optuna.best_trial", str(best.number))
            self.client.set_tag(self.run_id, "optuna.best_params", repr(best.params)[:5000])
        # another worker still running trials will close the parent when it is done
        if not running_elsewhere:
            self.client.set_terminated(self.run_id, status="FINISHED")


def _named_parent(client: Any, experiment_id: str, study: Any) -> str | None:
    """The parent run the study names, if it is a live run of this experiment (not of another store)."""
    from mlflow.exceptions import MlflowException

    run_id = study.user_attrs.get(PARENT_ATTR)
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage != "active" or run.info.experiment_id != experiment_id:
        return None
    return run_id


def _wait_for_parent(client: Any, experiment_id: str, study: Any) -> str | None:
    """Another worker created the study a moment ago and is opening its parent: wait for its name."""
    log.info("waiting for the worker that created study %r to open its MLflow parent run", study.study_name)
    deadline = time.monotonic() + PARENT_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.5)
        run_id = _named_parent(client, experiment_id, study)
        if run_id is not None:
            return run_id
    log.warning("no MLflow parent run named by study %r after %.0f s: looking for it by its tags",
                study.study_name, PARENT_WAIT_S)
    return None


def _experiment_id(client: Any, tracking_uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None
    if tracking_uri.startswith("sqlite:///"):
        # next to the database, not in ./mlruns of whatever directory the sweep started from
        artifacts = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:
        # another worker (or the first trial's logger) created it in between
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
