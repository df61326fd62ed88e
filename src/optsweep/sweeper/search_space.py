"""From `hydra.sweeper.params` / `variants` / command-line sweeps to Optuna distributions, and from a trial
back to Hydra overrides.

Values use Hydra's override grammar, as in the official plugin:
    choice(a, b, c) / a,b,c     categorical
    range(1, 9, 2)              integers 1, 3, 5, 7 (categorical when the values are floats)
    interval(1e-4, 1e-1)        float, uniform; int(interval(a, b)) integer
    tag(log, interval(a, b))    log-uniform
    anything else               a fixed override, passed to every job as it is

`variants` adds one categorical parameter, "variant", whose value selects a bundle of overrides. A bundle's
values may be search-space expressions: those are Optuna parameters named "<key>:<variant>" and are
sampled only when their variant is picked, so each variant has its own range (a conditional search space).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from optsweep.errors import UserError


class SweepConfigError(UserError, ValueError):
    """A sweep whose configuration cannot run (search space, grid, strategy): one sentence with the fix."""


VARIANT = "variant"


@dataclass(frozen=True)
class Param:
    key: str  # override key as written, "+" / "++" included
    name: str  # Optuna parameter name ("" for a fixed value)
    distribution: BaseDistribution | None
    fixed: str | None = None  # override value for a fixed parameter
    expression: str = ""  # as written in the config, for the record


def override_text(value: Any) -> str:
    """A value as the right-hand side of an override. Strings are kept as written (Hydra's encode of a
    choice, or the config's text); YAML's already-parsed values (0.9, true, null, lists) are written back."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return Override._get_value_element_as_str(value)


def parse_param(key: str, value: Any, name: str | None = None) -> Param:
    text = override_text(value)
    override = OverridesParser.create().parse_override(f"{key}={text}")
    if name is None:
        name = override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"
    if not override.is_sweep_override():
        return Param(key=key, name="", distribution=None, fixed=text, expression=text)
    return Param(key=key, name=name, distribution=_distribution(override), expression=text)


def _distribution(override: Override) -> BaseDistribution:
    value = override.value()
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int) and len(values) > 1:
            return IntDistribution(min(values), max(values), step=abs(value.step))
        return CategoricalDistribution(values)
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    raise SweepConfigError(f"cannot turn {override.input_line!r} into an Optuna distribution")


def suggest(trial: Any, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                   log=distribution.log)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                 log=distribution.log)
    assert isinstance(distribution, CategoricalDistribution)
    return trial.suggest_categorical(name, distribution.choices)


class SearchSpace:
    def __init__(self, params: list[Param], variants: dict[str, list[Param]]) -> None:
        self.params = params
        self.variants = variants
        keys = [p.key.lstrip("+") for p in params]
        for name, bundle in variants.items():
            clash = sorted({p.key.lstrip("+") for p in bundle} & set(keys))
            if clash:
                raise SweepConfigError(
                    f"variant {name!r} sets {clash}, which params already set: set them in one place")

    @classmethod
    def build(cls, params: Mapping[str, Any] | None, variants: Mapping[str, Mapping[str, Any]] | None,
              arguments: list[str]) -> tuple[SearchSpace, list[str]]:
        """Parse the config's params and variants and the command line's overrides. Returns the space and the
        command-line overrides that are not part of it (passed to every job unchanged)."""
        by_key: dict[str, Param] = {key: parse_param(key, value) for key, value in (params or {}).items()}
        passthrough = []
        parser = OverridesParser.create()
        for argument in arguments:
            override = parser.parse_override(argument)
            if override.is_sweep_override():
                # a sweep on the command line replaces the config's entry for the same key
                key = override.get_key_element()
                by_key.pop(key, None)
                by_key[key] = parse_param(key, override.get_value_string())
            else:
                passthrough.append(argument)
        bundles = {
            str(variant): [parse_param(key, value, name=f"{key.lstrip('+')}:{variant}") for key, value in bundle.items()]
            for variant, bundle in (variants or {}).items()
        }
        return cls(list(by_key.values()), bundles), passthrough

    def suggest(self, trial: Any) -> list[str]:
        """Sample the trial's parameters (define-by-run) and return its Hydra overrides."""
        overrides = [self._override(trial, p) for p in self.params]
        if self.variants:
            variant = suggest(trial, VARIANT, CategoricalDistribution(list(self.variants)))
            overrides += [self._override(trial, p) for p in self.variants[variant]]
        return overrides

    @staticmethod
    def _override(trial: Any, param: Param) -> str:
        if param.distribution is None:
            return f"{param.key}={param.fixed}"
        return f"{param.key}={override_text(suggest(trial, param.name, param.distribution))}"

    def grid(self) -> dict[str, list[Any]]:
        """The GridSampler's search space: every swept parameter must be enumerable, variants fixed."""
        grid: dict[str, list[Any]] = {}
        for p in self.params:
            if p.distribution is None:
                continue
            if isinstance(p.distribution, CategoricalDistribution):
                grid[p.name] = list(p.distribution.choices)
            elif isinstance(p.distribution, IntDistribution) and not p.distribution.log:
                grid[p.name] = list(range(p.distribution.low, p.distribution.high + 1, p.distribution.step))
            else:
                raise SweepConfigError(
                    f"the grid sampler cannot enumerate {p.key}={p.expression}: use choice() or range()")
        for variant, bundle in self.variants.items():
            for p in bundle:
                if p.distribution is not None:
                    raise SweepConfigError(f"the grid sampler needs fixed values in variants: "
                                     f"{variant}: {p.key}={p.expression}")
        if self.variants:
            grid[VARIANT] = list(self.variants)
        if not grid:
            raise SweepConfigError("the grid sampler needs at least one choice() or range() parameter")
        return grid

    def left_fixed_rates(self, options_of: Callable[[str | None], Mapping[str, Any]]) -> list[tuple[str, str]]:
        """Where ``optimizer.lr`` is tuned, each other learning rate of that optimizer (an ``*_lr`` option such
        as Muon's ``adam_lr``) that is neither tuned nor tied to it (null), as (key, optimizer name).
        A comparison is fair only if every rate that moves weights gets the same search. ``options_of(name)``
        gives an optimizer's options; None names the config's own (no ``optimizer`` override in the space)."""
        fixed = []
        for bundle in [{p.key: p for p in b} for b in self.variants.values()] or [{}]:
            entries = {p.key: p for p in self.params} | bundle
            lr = entries.get("optimizer.lr")
            if lr is None or lr.distribution is None:
                continue  # lr itself not searched (e.g. a grid at given lrs): nothing to keep in step
            chosen = entries.get("optimizer")
            options = options_of(chosen.fixed if chosen is not None else None)
            for key, value in options.items():
                if not key.endswith("_lr") or isinstance(value, str):  # a mode such as adjust_lr: original
                    continue
                entry = entries.get(f"optimizer.{key}")
                tied = entry.fixed == "null" if entry is not None else value is None
                if not tied and (entry is None or entry.distribution is None):
                    fixed.append((key, str(options.get("name") or (chosen.fixed if chosen else "the optimizer"))))
        return fixed

    def describe(self) -> dict[str, str]:
        rows = {p.key: p.expression for p in self.params}
        for variant, bundle in self.variants.items():
            rows.update({f"{VARIANT}={variant}: {p.key}": p.expression for p in bundle})
        return rows
