"""Where a sweep's study lives: the Optuna storage, the study itself (created by one worker, loaded by the
others) and its default name, the command's overrides."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from pathlib import Path
from typing import Any

import optuna

from optsweep.sweeper._locks import sqlite_creation_lock

log = logging.getLogger(__name__)


def default_study_name(arguments: list[str]) -> str:
    """The command's overrides, order-free: the same command continues the same study."""
    name = " ".join(sorted(arguments)) or "sweep"
    if len(name) > 200:
        name = f"{name[:180]}...{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    if url is None:
        log.warning("hydra.sweeper.storage is null: the study lives in memory and cannot be resumed")
        return None
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        # several workers on one sqlite file wait for each other's writes instead of failing at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    with sqlite_creation_lock(url):
        return retrying(lambda: optuna.storages.RDBStorage(url, **kwargs), "opening the Optuna storage")


def absolute_url(url: str | None) -> str | None:
    """A relative sqlite path made absolute, so jobs running in their own directories find the same file."""
    if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return url


def retrying(make: Any, what: str, attempts: int = 5) -> Any:
    """Workers started together race to create the same database tables: the loser waits and retries."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception as error:
            if attempt == attempts - 1:
                raise
            log.info("%s failed (%s), retrying", what, type(error).__name__)
            time.sleep(1.0 + attempt + random.random())


def create_or_load(study_name: str, storage: Any, sampler: Any, pruner: Any,
                   directions: list[str]) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it: the storage inserts a study atomically, so among
    workers started together exactly one is its creator (the one that opens its MLflow parent run)."""
    try:
        return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                   directions=directions), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                   directions=directions, load_if_exists=True), False
