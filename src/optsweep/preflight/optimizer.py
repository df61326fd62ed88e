"""The optimizer's options: names (from its ``for_model`` signature), types (its defaults and annotations),
ranges (lr and eps positive, betas in [0, 1), ...), and then the optimizer itself, built on the stand-in
model's shapes on the meta device, so that its constructor's own checks fail before ``trainer.fit`` rather
than after an MLflow run was opened."""

from __future__ import annotations

import inspect
import logging
import re
import typing
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from optsweep.errors import ConfigError, UserError, closest, one_line, render, render_number, show
from optsweep.preflight.fields import is_int, is_number

if typing.TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Options by the range they must lie in (also any ``<prefix>_lr``, ``<prefix>_eps``, ...); an option an
# optimizer lacks is simply not checked.
_POSITIVE = ("lr", "eps")
_UNIT_INTERVAL = ("momentum", "beta", "beta1", "beta2", "gamma1", "gamma2", "gamma3")
_NON_NEGATIVE = ("weight_decay",)
_POSITIVE_INT = ("ns_steps",)  # Newton-Schulz iterations: SCALE and SWAN refuse 0, Muon would silently skip them
_SECONDARY = ("adam",)  # the auxiliary AdamW of SCALE, Muon, NorMuon, SWAN: adam_lr, adam_betas, adam_eps

_OPTIMIZER_CONF = Path(__file__).resolve().parents[3] / "conf" / "optimizer"


def check_optimizer(opt: DictConfig) -> None:
    """Its name, the options it takes, their types and their ranges (imports the optimizer registry, so torch)."""
    from optsweep.optim.registry import OPTIMIZERS, optimizer_options

    name = opt.get("name")
    if name not in OPTIMIZERS:
        guess = closest(name, OPTIMIZERS)
        hint = f" (did you mean optimizer={guess}?)" if guess else ""
        raise ConfigError(
            f"unknown optimizer '{name}'{hint}: choose optimizer=<one of {', '.join(sorted(OPTIMIZERS))}>"
        )
    allowed = optimizer_options(name)
    given = {k for k in opt if not str(k).startswith("_") and k != "name"}
    unknown = sorted(given - allowed)
    if unknown:
        guess = closest(unknown[0], allowed)
        hint = f"did you mean optimizer.{guess}? " if guess else ""
        raise ConfigError(
            f"optimizer '{name}' has no option '{unknown[0]}': {hint}remove optimizer.{unknown[0]} "
            f"(its options are {', '.join(sorted(allowed))})"
        )
    defaults, types = _option_defaults(name), _option_types(name)
    for key in sorted(given):
        _check_option_type(name, key, opt.get(key), types.get(key), defaults.get(key))
    check_optimizer_ranges(opt, sorted(given), defaults)


def check_optimizer_values(opt: DictConfig) -> None:
    """The range checks of ``check_optimizer`` on the options the optimizer's yaml declares: they need no
    torch, so run.py refuses ``optimizer.lr=-1`` in a second instead of after the heavy imports."""
    path = _OPTIMIZER_CONF / f"{opt.get('name')}.yaml"
    if not path.is_file():
        return  # an optimizer outside conf/: check_optimizer checks it after the imports
    declared = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    keys = sorted(k for k in opt if k in declared and not str(k).startswith("_") and k != "name")
    for key in keys:
        if isinstance(declared[key], (float, list)):  # a number or a list: its type is not in doubt
            _check_option_type(opt.get("name"), key, opt.get(key), declared[key], declared[key])
    check_optimizer_ranges(opt, keys, declared)


def check_optimizer_ranges(opt: DictConfig, keys: Iterable[str], defaults: dict) -> None:
    """Each named option within its range; a default is the fix shown."""
    for key in keys:
        value = opt.get(key)
        if value is None:
            continue
        prefix, _, suffix = key.partition("_")
        base = suffix if prefix in _SECONDARY else key  # adam_lr is an lr, adam_betas are betas
        if base in _POSITIVE and not (is_number(value) and value > 0):
            example = defaults.get(key) if is_number(defaults.get(key)) and defaults.get(key) > 0 else 1e-3
            raise ConfigError(
                f"optimizer.{key}={render(value)} must be a positive number: set e.g. "
                f"optimizer.{key}={render_number(example)}"
            )
        if base in _UNIT_INTERVAL and not (is_number(value) and 0 <= value < 1):
            raise ConfigError(f"optimizer.{key}={render(value)} must lie in [0, 1): set e.g. optimizer.{key}=0.9")
        if base == "betas":
            items = _as_list(value)
            example = "[0.9,0.999]"
            if not isinstance(items, list) or len(items) != 2:
                raise ConfigError(f"optimizer.{key}={render(value)} must be two numbers in [0, 1): set e.g. "
                                  f"optimizer.{key}={example}")
            for i, beta in enumerate(items):
                if not (is_number(beta) and 0 <= beta < 1):
                    raise ConfigError(
                        f"optimizer.{key}[{i}]={beta} must lie in [0, 1): set e.g. optimizer.{key}={example}"
                    )
        if base in _NON_NEGATIVE and not (is_number(value) and value >= 0):
            raise ConfigError(f"optimizer.{key}={render(value)} must be >= 0: set optimizer.{key}=0.0 to disable it")
        if base in _POSITIVE_INT and not (is_int(value) and value >= 1):
            example = defaults.get(key) if is_int(defaults.get(key)) else 5
            raise ConfigError(f"optimizer.{key}={render(value)} must be a positive integer: set e.g. "
                              f"optimizer.{key}={example}")


def _for_model_options(name: str) -> dict[str, inspect.Parameter]:
    """The options of optimizer ``name`` that have a default (its ``for_model``'s, and its constructor's where
    ``for_model`` passes ``**options`` on)."""
    from optsweep.optim.registry import option_parameters

    return {p: v for p, v in option_parameters(name).items() if v.default is not inspect.Parameter.empty}


@cache
def _option_defaults(name: str) -> dict:
    return {p: v.default for p, v in _for_model_options(name).items()}


@cache
def _option_types(name: str) -> dict:
    """A value of each option's type: its default, or for a ``None`` default one of the type its annotation
    names (``fused: bool | None = None`` -> False); None where the type is not that simple."""
    stand_ins = {"bool": False, "int": 0, "float": 0.0, "str": ""}
    types = {}
    for p, v in _for_model_options(name).items():
        types[p] = v.default
        if v.default is None:
            annotation = v.annotation if isinstance(v.annotation, str) else getattr(v.annotation, "__name__", "")
            kinds = {k.strip() for k in re.sub(r"Optional\[(.*)\]", r"\1", str(annotation)).split("|")} - {"None"}
            types[p] = stand_ins.get(kinds.pop()) if len(kinds) == 1 else None
    return types


def _check_option_type(name: str, key: str, value, default, example_default) -> None:
    """The type an option's default has (bool, int, number, text, list) is the type its value must have."""
    if value is None or default is None:
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = is_int(value), "an integer"
    elif isinstance(default, float):
        ok, kind = is_number(value), "a finite number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a word"
    elif isinstance(default, (tuple, list)):
        ok, kind = isinstance(_as_list(value), list), f"a list like {render(default)}"
    else:
        return
    if not ok:
        example = render_number(example_default) if isinstance(example_default, float) else render(example_default)
        raise ConfigError(f"optimizer.{key}={render(value)} must be {kind} for optimizer {name}: set e.g. "
                          f"optimizer.{key}={example}")


def _as_list(value):
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, tuple):
        value = list(value)
    return value


def check_optimizer_builds(opt: DictConfig, model: torch.nn.Module) -> None:
    """Build the optimizer on the model's shapes (meta device): its constructor's checks fail here, now."""
    from optsweep.optim.registry import optimizer_factory, optimizer_options

    name = opt.get("name")
    try:
        factory = optimizer_factory(opt)
        factory(model=model)
    except UserError:
        raise
    except (ValueError, TypeError, AssertionError) as error:
        cause = error.__cause__ if type(error).__name__ == "InstantiationException" and error.__cause__ else error
        message = one_line(cause)
        options = sorted(optimizer_options(name), key=len, reverse=True)
        named = next((k for k in options if re.search(rf"(?<![A-Za-z0-9_]){re.escape(k)}(?![A-Za-z0-9_])", message)),
                     None)
        if named is not None and named in opt:
            raise ConfigError(f"optimizer.{named}={show(opt, named)} is refused by optimizer {name} ({message}): "
                              f"change optimizer.{named}") from None
        raise ConfigError(f"optimizer {name} refuses its settings ({message}): change the optimizer.* value it "
                          "names") from None
    except Exception as error:  # noqa: BLE001 - e.g. an op the meta device lacks: the real run will tell
        log.debug("optimizer %s could not be tried on the meta device: %r", name, error)
