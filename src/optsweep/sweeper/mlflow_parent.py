"""The sweep's MLflow parent run, and the sweeper's finishing touches on each trial's child run.

One parent run per study, found again by its tags when the sweep is re-run or when another worker joins,
so the UI shows a study as one tree however many times and places it ran. MLflow is an extra: any MLflow
error is logged as a warning and the sweep goes on without it.
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
    def open(cls, tracking_uri: str | None, experiment_name: str | None, study_name: str,
             description: dict[str, str]) -> SweepRun | None:
        """Find or create the parent run of `study_name`; None when MLflow is not configured or fails."""
        if not tracking_uri or not experiment_name:
            log.info("no MLflow tracking URI / experiment for the sweep: no parent run")
            return None
        for attempt in range(4):
            try:
                return cls._open(tracking_uri, experiment_name, study_name, description)
            except Exception as error:  # noqa: BLE001
                # a worker started at the same moment may be creating the same database tables
                if attempt == 3:
                    log.warning("MLflow unavailable (%s: %s): the sweep runs without a parent run",
                                type(error).__name__, error)
                    return None
                time.sleep(1.0 + attempt + random.random())
        return None

    @classmethod
    def _open(cls, tracking_uri: str, experiment_name: str, study_name: str,
              description: dict[str, str]) -> SweepRun:
        from mlflow import MlflowClient

        # On sqlite the lock serialises the store's creation (the client creates its tables) and the
        # find-or-create of the parent, so workers started together share one. A tracking server has no
        # lock: workers that both created a parent all keep the oldest.
        with sqlite_creation_lock(tracking_uri):
            client = MlflowClient(tracking_uri)
            experiment_id = _experiment_id(client, tracking_uri, experiment_name)
            found = cls._parents(client, experiment_id, study_name)
            if found:
                run_id = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
            else:
                tags = {STUDY_TAG: study_name, ROLE_TAG: "sweep", "mlflow.runName": f"sweep {study_name}"}
                tags.update({_mlflow_key(f"search.{key}"): value[:5000] for key, value in description.items()})
                run_id = client.create_run(experiment_id, tags=tags).info.run_id
                found = cls._parents(client, experiment_id, study_name)
                if found and found[0].info.run_id != run_id:
                    client.delete_run(run_id)
                    run_id = found[0].info.run_id
        log.info("MLflow parent run %s (experiment %s, study %s)", run_id, experiment_name, study_name)
        return cls(client, experiment_id, run_id)

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
    def summarize(self, counts: dict[str, int], best: Any | None, running_elsewhere: int) -> None:
        for state, count in counts.items():
            self.client.log_metric(self.run_id, f"trials_{state.lower()}", count)
        if best is not None:
            self.client.log_metric(self.run_id, "best_value", best.value)
            self.client.set_tag(self.run_id, "optuna.best_trial", str(best.number))
            self.client.set_tag(self.run_id, "optuna.best_params", repr(best.params)[:5000])
        # another worker still running trials will close the parent when it is done
        if not running_elsewhere:
            self.client.set_terminated(self.run_id, status="FINISHED")


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
