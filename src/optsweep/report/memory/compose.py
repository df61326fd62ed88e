"""What a training run would build, read from conf/: the model to report on and each optimizer's factory.

A model is a conf/model name, a yaml path or overrides (``parse_model``); an optimizer is its
``conf/optimizer/<name>.yaml`` with the paper's settings for that model on top, composed by Hydra
(``ConfigComposer``) and instantiated (``optimizer_setup``), so the report measures what training runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from optsweep.models.llama import ModelSpec
from optsweep.optim.registry import build_optimizer, optimizer_class, optimizer_factory, option_parameters
from optsweep.report.memory.paper import PAPER_MODELS


@dataclass
class ModelChoice:
    """A model to report on: its shape, the name its paper settings are filed under, its label."""

    spec: ModelSpec
    label: str
    settings_name: str | None  # conf/paper/*/<settings_name>.yaml; None for a shape with no such files
    is_paper_model: bool  # a paper size, unmodified: the paper's number applies
    notes: list[str] = field(default_factory=list)


def parse_model(token: str, conf_dir: Path, vocab_size: int = 32000) -> ModelChoice:
    """``llama_60m`` (conf/model/llama_60m.yaml), a path to such a yaml, or overrides: ``llama_1b,num_hidden_
    layers=4`` (a base and changes) or ``name=x,hidden_size=256,intermediate_size=688,...`` (a full shape)."""
    parts = [p.strip() for p in token.split(",") if p.strip()]
    bases = [p for p in parts if "=" not in p]
    overrides = {}
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            overrides[key.strip().removeprefix("model.")] = yaml.safe_load(value)
    if len(bases) > 1:
        raise ValueError(f"model '{token}': give at most one base model, then key=value overrides")
    fields = {}
    base_name = None
    if bases:
        path = Path(bases[0])
        if not path.suffix:
            path = conf_dir / "model" / f"{bases[0]}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in (conf_dir / "model").glob("*.yaml")))
            raise ValueError(f"no model config '{bases[0]}' (looked for {path}); known: {known}")
        fields = yaml.safe_load(path.read_text())
        fields.pop("_target_", None)
        base_name = fields.get("name", path.stem)
    allowed = set(inspect.signature(ModelSpec).parameters)
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(
            f"model '{token}': unknown field(s) {', '.join(sorted(unknown))}; "
            f"fields are {', '.join(sorted(allowed))}"
        )
    fields.update(overrides)
    changed = {k: v for k, v in overrides.items() if k != "name"}
    if "name" not in overrides:
        fields["name"] = (
            base_name if not changed else ",".join([*bases, *(f"{k}={v}" for k, v in changed.items())])
        )
    notes = []
    if fields.get("vocab_size") is None:
        fields["vocab_size"] = vocab_size
        notes.append(
            f"{fields['name']}: vocab_size is the tokenizer's in its config; {vocab_size} assumed "
            f"(--vocab-size)"
        )
    try:
        spec = ModelSpec(**fields)
    except TypeError as error:
        raise ValueError(f"model '{token}': {error}") from None
    return ModelChoice(
        spec=spec,
        label=spec.name,
        settings_name=base_name,
        is_paper_model=base_name in PAPER_MODELS and not changed,
        notes=notes,
    )


@dataclass
class OptimizerSetup:
    factory: Callable[..., torch.optim.Optimizer] | None  # model -> optimizer; None if not importable
    hparams: dict  # every for_model option, as this run sets it
    unavailable: str | None = None


class ConfigComposer:
    """The ``optimizer`` node a training run would get, from the same files conf/config.yaml selects:
    ``optimizer/<name>.yaml`` (composed by Hydra), then ``paper/budget/<model>.yaml`` and
    ``paper/hparams/<name>_<model>.yaml`` (``# @package _global_`` files, merged on top), over the root
    config's own keys so that interpolations such as ``${train.max_steps}`` resolve."""

    def __init__(self, conf_dir: Path):
        self.conf_dir = conf_dir
        self._context = None
        self._optimizers: dict = {}

    def __enter__(self):
        from hydra import initialize_config_dir

        from optsweep.config import register_resolvers

        register_resolvers()
        self._hydra = initialize_config_dir(config_dir=str(self.conf_dir.resolve()), version_base="1.3")
        self._hydra.__enter__()
        root = self.conf_dir / "config.yaml"
        context = yaml.safe_load(root.read_text()) if root.is_file() else {}
        context.pop("defaults", None)
        self._context = context
        return self

    def __exit__(self, *exc):
        self._hydra.__exit__(*exc)
        return False

    def _optimizer_yaml(self, name: str):
        from hydra import compose
        from omegaconf import OmegaConf

        if name not in self._optimizers:
            if (self.conf_dir / "optimizer" / f"{name}.yaml").is_file():
                self._optimizers[name] = compose(config_name=None, overrides=[f"+optimizer={name}"])
            else:
                self._optimizers[name] = OmegaConf.create({})
        return self._optimizers[name]

    def _global_file(self, path: Path):
        from hydra import compose
        from omegaconf import OmegaConf

        loaded = OmegaConf.load(path)
        if "defaults" in loaded:  # let Hydra handle a defaults list
            group = path.parent.relative_to(self.conf_dir).as_posix()
            return compose(config_name=None, overrides=[f"+{group}@_global_={path.stem}"])
        return loaded

    def optimizer_node(
        self, name: str, settings_name: str | None, expect_paper: bool
    ) -> tuple[dict, list[str]]:
        """The resolved ``optimizer`` node as training would see it, and notes on what was missing."""
        from omegaconf import OmegaConf

        layers = [OmegaConf.create(self._context), self._optimizer_yaml(name)]
        missing = (
            []
            if (self.conf_dir / "optimizer" / f"{name}.yaml").is_file()
            else [f"conf/optimizer/{name}.yaml"]
        )
        if settings_name is not None:
            budget = self.conf_dir / "paper" / "budget" / f"{settings_name}.yaml"
            if budget.is_file():
                layers.append(self._global_file(budget))
            hparams = self.conf_dir / "paper" / "hparams" / f"{name}_{settings_name}.yaml"
            if hparams.is_file():
                layers.append(self._global_file(hparams))
            elif expect_paper:
                missing.append(f"conf/paper/hparams/{name}_<model>.yaml")
        notes = []
        if missing:
            notes.append(
                f"{name}: no {' nor '.join(missing)} (for the rows marked), so "
                + (
                    "for_model's defaults"
                    if missing[0].startswith("conf/optimizer")
                    else f"conf/optimizer/{name}.yaml alone"
                )
            )
        node = OmegaConf.merge(*layers).get("optimizer") or OmegaConf.create({})
        resolved = {}
        for key in node:
            try:
                value = node[key]
                resolved[key] = (
                    OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                )
            except Exception as error:  # noqa: BLE001 - an interpolation only a full training config resolves
                notes.append(
                    f"{name}: optimizer.{key} does not resolve outside a training run "
                    f"({type(error).__name__}); for_model's default used"
                )
        return resolved, notes


def optimizer_setup(name: str, node: dict) -> OptimizerSetup:
    """The factory training gets from ``optimizer_factory(cfg.optimizer)``, and the hyperparameters in force."""
    options = {k: v for k, v in node.items() if k not in ("_target_", "_partial_", "name")}
    try:
        optimizer_class(name)  # imported now: a missing file is reported per row
    except Exception as error:  # noqa: BLE001 - any import failure means "not implemented yet"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return OptimizerSetup(factory=None, hparams=options, unavailable=f"not available: {reason}")
    defaults = {key: p.default for key, p in option_parameters(name).items()
                if p.default is not inspect.Parameter.empty}
    hparams = {**defaults, **options}
    if "_target_" in node:
        factory = optimizer_factory({**node, "_partial_": True})
    else:

        def factory(model, _options=options):
            return build_optimizer(model, name, **_options)

    return OptimizerSetup(factory=factory, hparams=hparams)
