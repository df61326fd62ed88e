"""Rules for one field, shared by the checks: what counts as an integer or a number, and the sentences that
refuse a value out of range or outside its choices."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from optsweep.errors import ConfigError, closest, render


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (a bool is not a number here, nor are nan and inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_integer(node: DictConfig, path: str, least: int, example, nullable: bool = False,
                    note: str = "") -> None:
    """``node``'s key (the last part of ``path``), when present, is an integer >= ``least`` (or null)."""
    key = path.rsplit(".", 1)[-1]
    if key not in node:
        return
    value = node.get(key)
    if value is None and nullable:
        return
    if not (is_int(value) and value >= least):
        what = "a positive integer" if least == 1 else f"an integer >= {least}"
        about = f" ({note})" if note else ""
        null = ", or null" if nullable else ""
        raise ConfigError(f"{path}={render(value)} must be {what}{about}: set e.g. {path}={example}{null}")


def require_one_of(field: str, value, choices, what: str, fix: str) -> None:
    """Refuse a value outside ``choices``, naming the closest valid one where there is one."""
    if value in choices:
        return
    guess = closest(value, [c for c in choices if isinstance(c, str)])
    hint = f" (did you mean {field}={guess}?)" if guess else ""
    raise ConfigError(f"{field}={value} is not {what}{hint}: {fix}")
