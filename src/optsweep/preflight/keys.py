"""Keys that nothing reads. Hydra refuses a misspelt key it is asked to override, but a key added with ``+``
goes in unread: a typo the run would silently ignore. Refused here: one beyond the schema's fields
(``optsweep.preflight.schema``), one that is not an argument of the object its node builds (``_target_``),
and a trainer argument optsweep derives itself."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from functools import cache

from omegaconf import DictConfig, OmegaConf

from optsweep.errors import ConfigError, closest, show

# Trainer arguments train.py derives or passes itself: a value under trainer.* would be overridden.
DERIVED_TRAINER = {
    "accumulate_grad_batches": "set train.total_batch_size and train.micro_batch_size, from which it is derived",
    "val_check_interval": "set train.eval_every_n_steps instead",
    "check_val_every_n_epoch": "set train.eval_every_n_steps instead",
    "max_epochs": "training is counted in steps: set train.max_steps (or trainer.max_steps to stop early)",
    "strategy": "choose strategy=<auto, ddp, ddp_spawn or fsdp> instead",
    "logger": "choose logger=<mlflow, csv or none> instead",
    "callbacks": "edit callbacks.* instead",
    "plugins": "remove it",
    "enable_progress_bar": "remove it",
}


def check_keys(cfg: DictConfig) -> None:
    check_schema_keys(cfg)
    for path in ("data", "model", "scheduler", "trainer", "strategy"):
        node = OmegaConf.select(cfg, path)
        if isinstance(node, DictConfig):
            _check_target_keys(path, node)
    for group in ("callbacks", "logger"):
        for key, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig):
                _check_target_keys(f"{group}.{key}", node)
    for key, fix in DERIVED_TRAINER.items():
        if key in cfg.trainer:
            raise ConfigError(f"trainer.{key}={show(cfg.trainer, key)} is set by optsweep itself: remove it; {fix}")


def check_schema_keys(cfg: DictConfig) -> None:
    """Every key of the root and of its typed sections is a field of the schema (``+`` bypasses it)."""
    nodes = [("", cfg)] + [(str(k), v) for k, v in cfg.items_ex(resolve=False) if isinstance(v, DictConfig)]
    for path, node in nodes:
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            known = {f.name for f in dataclasses.fields(schema)}
            _refuse_unknown(path, node, known | ({"hydra"} if not path else set()))


def _refuse_unknown(path: str, node: DictConfig, known: Iterable[str]) -> None:
    known = set(known)
    prefix, where = (f"{path}.", f"of {path}") if path else ("", "at the top level")
    for key in node:
        key = str(key)
        if key.startswith("_") or key in known:
            continue
        guess = closest(key, known)
        hint = f"did you mean {prefix}{guess}?" if guess else f"its settings are {', '.join(sorted(known))}"
        raise ConfigError(f"{prefix}{key}={show(node, key)} is not a setting {where} ({hint}): remove it or "
                          "fix its spelling")


def _check_target_keys(path: str, node: DictConfig) -> None:
    """The keys of a node that builds an object must be arguments of that object (unless it takes **kwargs)."""
    target = node.get("_target_")
    if not target:
        return
    parameters = _parameters(str(target))
    if parameters is None:
        return
    skip = {"name", "fsdp"} if path == "strategy" else set()
    _refuse_unknown(path, node, parameters | skip)


@cache
def _parameters(target: str) -> frozenset[str] | None:
    try:
        from hydra.utils import get_object

        obj = get_object(target)
        signature = inspect.signature(obj)
    except Exception:  # noqa: BLE001 - an unimportable target is reported when it is built
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return frozenset(signature.parameters)
