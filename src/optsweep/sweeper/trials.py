"""A trial's bookkeeping outside the loop: which states count as finished, the heartbeat that marks running
trials alive, when a RUNNING trial's worker is gone, and a job's return value as objective values."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from optsweep.sweeper import attrs as attr_names

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def why_interrupted(trial: optuna.trial.FrozenTrial, machine: str, pid: int, grace_period: int | None,
                    now: float) -> str | None:
    """Why a RUNNING trial will not finish (its sweeper is this process or a dead one on this machine, or
    its heartbeat is older than grace_period); None while it may still be running."""
    # the sweeper that took it tells the result; older studies recorded it as `worker`
    attrs = trial.user_attrs
    worker = attrs.get(attr_names.SWEEPER_ATTR) or attrs.get(attr_names.WORKER_ATTR) or {}
    beat = attrs.get("heartbeat")
    if worker.get("machine") == machine and (worker.get("pid") == pid
                                             or not alive(int(worker.get("pid", -1)))):
        return f"interrupted: its worker (pid {worker.get('pid')}) is gone"
    if grace_period and beat is not None and now - beat > grace_period:
        return f"interrupted: no heartbeat for {now - beat:.0f} s (worker {worker.get('machine')})"
    return None


class Heartbeat:
    """Marks running trials alive (user attribute `heartbeat`, seconds since the epoch) every interval."""

    def __init__(self, study: optuna.Study, trial_ids: list[int], interval: int | None) -> None:
        self.storage, self.trial_ids, self.interval = study._storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="optuna-heartbeat")

    def __enter__(self) -> Heartbeat:  # noqa: PYI034
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for trial_id in self.trial_ids:
                try:
                    self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
                except Exception as error:  # noqa: BLE001 - a missed beat is not worth a crash
                    log.debug("heartbeat of trial %d failed: %s", trial_id, error)


def objective_values(value: Any, n_objectives: int) -> tuple[list[float] | None, str | None]:
    """The task's return value as floats, or the reason it cannot be told as COMPLETE."""
    raw = list(value) if isinstance(value, list | tuple) else [value]
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        return None, f"the task returned {value!r}, not a number"
    if len(values) != n_objectives:
        return None, f"the task returned {len(values)} values for {n_objectives} objective(s)"
    if not all(math.isfinite(v) for v in values):
        return None, f"objective is {value} (diverged)"
    return values, None
