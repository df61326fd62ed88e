"""What a training job needs to know about the Optuna trial it is running, if any.

The sweeper opens a TrialContext around each job; the training code asks for it with `current()`:

    ctx = context.current()            # None outside a sweep
    if ctx is not None:
        callbacks.append(ctx.pruning_callback("val/loss"))   # reports, and raises optuna.TrialPruned
        mlflow_tags.update(ctx.mlflow_tags())                # makes the run a child of the sweep's run
        ...
        ctx.run_id = mlflow_logger.run_id                    # once the run exists
        ctx.failure_reason = "non-finite loss at step 812"   # before returning +inf on divergence

Jobs find their trial through the environment variable OPTSWEEP_TRIAL_ID, which the sweeper sets per job
through `hydra.job.env_set` (Hydra applies it around the task function, in whatever process runs it). A job
in the sweeper's process (Hydra's basic launcher) gets the sweeper's own Trial object; a job in another
process (submitit, joblib) rebuilds one from the storage described in OPTSWEEP_SWEEP, which the sweeper puts
in its environment for the length of the sweep. run_id and failure_reason are stored as user attributes of
the trial, so the sweeper reads them back whichever process set them; so is `worker`, the process that
trains the trial (`record_worker`, called once the job runs), which under submitit is not the sweeper.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optsweep import metric_names
from optsweep.sweeper.attrs import FAILURE_ATTR, REPLICATE_ATTR, REPLICATE_OF_ATTR, RUN_ID_ATTR, WORKER_ATTR

if TYPE_CHECKING:
    import optuna

    from optsweep.sweeper.pruning import OptunaPruning

log = logging.getLogger(__name__)

TRIAL_ENV = "OPTSWEEP_TRIAL_ID"
SWEEP_ENV = "OPTSWEEP_SWEEP"



def machine() -> str:
    """This machine: its hostname (not unique across containers) and its boot id, which tells them apart."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def _trial_attribute(key: str, doc: str) -> property:
    """A property kept in the Optuna trial's user attributes, so every worker sharing the study sees it."""
    return property(lambda self: self.trial.user_attrs.get(key), lambda self, value: self.trial.set_user_attr(key, value),
                    doc=doc)


class TrialContext:
    def __init__(self, trial: optuna.Trial, study_name: str, parent_run_id: str | None) -> None:
        self.trial = trial
        self.study_name = study_name
        self.parent_run_id = parent_run_id

    @property
    def number(self) -> int:
        return self.trial.number

    run_id = _trial_attribute(RUN_ID_ATTR, "The MLflow run this trial trains in (None before it has one).")
    failure_reason = _trial_attribute(FAILURE_ATTR, "Why the trial failed, in one sentence (None if it did not).")

    def record_worker(self) -> None:
        """Name this process as the one training the trial (the job calls it once it runs)."""
        self.trial.set_user_attr(WORKER_ATTR, {"machine": machine(), "pid": os.getpid()})

    def mlflow_tags(self) -> dict[str, str]:
        """Tags for the trial's MLflow run: `mlflow.parentRunId` nests it under the sweep's run; a replicate
        of a sweep's winner says so (optsweep.replicate, optsweep.replicate_of)."""
        tags = {"optuna.study": self.study_name, "optuna.trial": str(self.number)}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        tags.update(replicate_tags(self.trial.user_attrs))
        return tags

    def run_name(self) -> str:
        if self.trial.user_attrs.get(REPLICATE_ATTR):
            return f"replicate-{self.number}-of-trial-{self.trial.user_attrs.get(REPLICATE_OF_ATTR)}"
        return f"trial-{self.number}"

    def pruning_callback(self, monitor: str = metric_names.VAL_LOSS) -> OptunaPruning:
        from optsweep.sweeper.pruning import OptunaPruning

        return OptunaPruning(self.trial, monitor=monitor)


def replicate_tags(user_attrs: dict[str, Any]) -> dict[str, str]:
    """MLflow tags of a replicate trial (read by the comparison report); none for a search trial."""
    if not user_attrs.get(REPLICATE_ATTR):
        return {}
    return {"optsweep.replicate": "true", "optsweep.replicate_of": str(user_attrs.get(REPLICATE_OF_ATTR))}


_active: dict[int, TrialContext] = {}


def current() -> TrialContext | None:
    """The trial this job runs, or None when the job is not part of an Optuna sweep."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id:
        return None
    ctx = _active.get(int(trial_id))
    # outside the sweeper's process: a new Trial object on the storage (call current() once per job)
    return ctx if ctx is not None else _from_storage(int(trial_id))


@contextmanager
def activate(ctx: TrialContext) -> Iterator[TrialContext]:
    """Sweeper side: make `ctx` what `current()` returns in jobs that carry its trial id."""
    _active[ctx.trial._trial_id] = ctx
    try:
        yield ctx
    finally:
        _active.pop(ctx.trial._trial_id, None)


def sweep_environment(storage_url: str, study_name: str, pruner: dict[str, Any] | None,
                      parent_run_id: str | None) -> str:
    """The value of OPTSWEEP_SWEEP: enough for another process to rebuild the trial and its pruner."""
    return json.dumps({"storage": storage_url, "study": study_name, "pruner": pruner,
                       "parent_run_id": parent_run_id})


def _from_storage(trial_id: int) -> TrialContext | None:
    raw = os.environ.get(SWEEP_ENV)
    if not raw:
        log.warning("%s=%s is set but %s is not: running without the trial", TRIAL_ENV, trial_id, SWEEP_ENV)
        return None
    import optuna
    from hydra.utils import instantiate

    sweep = json.loads(raw)
    pruner = instantiate(sweep["pruner"]) if sweep.get("pruner") else None
    # The sampler never runs here (the sweeper sampled every parameter); RandomSampler is the cheapest.
    study = optuna.load_study(study_name=sweep["study"], storage=sweep["storage"],
                              sampler=optuna.samplers.RandomSampler(), pruner=pruner)
    return TrialContext(optuna.Trial(study, trial_id), sweep["study"], sweep.get("parent_run_id"))
