"""The paper's memory column (model + optimizer), measured from the optimizers that train.

For each optimizer x model, the model is built on the meta device (shapes only: nothing is allocated), the
optimizer is built the way a training run builds it (``conf/optimizer/<name>.yaml`` with
``conf/paper/hparams/<name>_<model>.yaml`` on top, composed by Hydra and instantiated, then completed with
the model), every parameter gets a meta gradient and the optimizer takes ONE step, which creates its lazy
state. The step runs on a copy of the model with a single decoder layer, whose state stands for every
layer (they all have the same shapes; ``full_depth`` steps the whole model, same numbers, much slower; see
``MetaModels``). Three numbers are then shown side by side:

- ``measured``: weights + every state tensor the optimizer actually holds;
- ``paper rule``: the paper's own accounting (its memory paragraph: weights and states in bf16) applied to the same model's real
  parameter split (``optsweep.optim.groups``) and the run's hyperparameters (e.g. the projection rank);
- ``paper``: the published number.

Conventions, the paper's: every element, weight or state, counts 2 bytes (pure bf16 training, no fp32
master copy); GB = 1e9 bytes; gradients and activations are not counted; scalar step counters (0-d tensors
or Python numbers, at most one per parameter tensor: a few hundred bytes) are not counted.
"""

from __future__ import annotations

import csv
import inspect
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.groups import ROLES, ParamSplit, split_parameters
from optsweep.optim.registry import (
    OPTIMIZERS,
    build_optimizer,
    optimizer_class,
    optimizer_factory,
    option_parameters,
)

BYTES_PER_ELEMENT = 2  # bf16, as the paper counts weights and states
GB = 1e9

PAPER_SOURCE = (
    "Glentis, Li, Han, Hong, 'A Minimalist Optimizer Design for LLM Pretraining', arXiv 2506.16659 (v2): "
    "the main comparison table (LLaMA 60M-1B on C4, model + optimizer memory in parentheses) and the 7B "
    "table"
)
PAPER_MODELS = ("llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b")


def _sizes(m60: float, m130: float, m350: float, m1b: float, m7b: float | None = None) -> dict[str, float]:
    row = dict(zip(PAPER_MODELS, (m60, m130, m350, m1b)))
    if m7b is not None:
        row["llama_7b"] = m7b
    return row


# GB, as printed in the paper. Keys are registry names.
PAPER_MEMORY_GB: dict[str, dict[str, float]] = {
    "adam": _sizes(0.35, 0.81, 2.21, 8.04),
    "stable_spam": _sizes(0.35, 0.81, 2.21, 8.04),
    "muon": _sizes(0.23, 0.54, 1.47, 5.36, 26.95),
    "galore": _sizes(0.28, 0.61, 1.59, 4.76),
    "fira": _sizes(0.28, 0.61, 1.59, 4.76),
    "swan": _sizes(0.25, 0.46, 1.00, 3.20),
    "apollo": _sizes(0.28, 0.61, 1.59, 4.76, 16.14),
    "apollo_mini": _sizes(0.25, 0.46, 1.00, 3.20, 14.53),
    "scale": _sizes(0.15, 0.32, 0.80, 2.81, 13.74),
}
# The paper's "Adam" is torch Adam with weight decay 0; AdamW keeps exactly the same two moments.
PAPER_MEMORY_GB["adamw"] = PAPER_MEMORY_GB["adam"]

# Why a cell can differ from the paper's printed number.
_ROUNDING = (
    "the paper's rounding: 3 x params x 2 bytes is 0.8046 GB at 130M and 8.0345 GB at 1B, printed "
    "0.81 and 8.04"
)
_LOWRANK_350M = (
    "the paper's 1.59 at 350M matches no rank: rank 256 (the C4 scripts' rank at 350M) gives 1.39, "
    "about 384 would give 1.58; the paper's cell cannot be reproduced"
)
_APOLLO_7B = (
    "the paper's 16.14 (from the APOLLO paper) is near rank 256 counting only the projected moments "
    "(16.1455); the real optimizer also keeps its rank x smaller-side projector"
)
_APOLLO_MINI = (
    "the paper's accounting leaves out APOLLO-Mini's rank-1 state (per hidden matrix: two moments of "
    "the larger side and a projection of the smaller side): a few hundred thousand elements that "
    "carry the measured value over the rounding boundary"
)
_MUON = (
    "the paper counts one buffer for every parameter (2 x params x 2 bytes); a real Muon keeps momentum "
    "for the hidden matrices and AdamW's two moments for the embedding, lm_head and norms"
)
# The rank each low-rank cell of the paper's table corresponds to (projector + two moments per hidden matrix).
PAPER_MEMORY_RANK = {"llama_60m": 128, "llama_130m": 256, "llama_1b": 512}


# (optimizers, models: None for every size, why); the first entry that matches explains a cell
EXPLANATIONS = (
    (("adam", "adamw", "stable_spam"), ("llama_130m", "llama_1b"), _ROUNDING),
    (("muon",), None, _MUON),
    (("apollo_mini",), None, _APOLLO_MINI),
    (("galore", "fira", "apollo"), ("llama_350m",), _LOWRANK_350M),
    (("apollo",), ("llama_7b",), _APOLLO_7B),
)


def explain(name: str, model: str, hparams: dict) -> str:
    """Why (optimizer, model)'s measured or rule value differs from the paper's cell."""
    for names, models, why in EXPLANATIONS:
        if name in names and (models is None or model in models):
            return why
    rank, paper_rank = hparams.get("rank"), PAPER_MEMORY_RANK.get(model)
    if name in ("galore", "fira", "apollo") and paper_rank is not None and rank != paper_rank:
        return (f"the paper's cell is what rank {paper_rank} gives (its memory column repeats GaLore's "
                f"ranks 128/256/-/512 for GaLore, Fira and APOLLO); this configuration trains at rank {rank}")
    return "not explained: compare the hyperparameters with the paper's"


# The paper's table order, then anything else the registry knows.
PAPER_ORDER = (
    "adam",
    "adamw",
    "stable_spam",
    "muon",
    "galore",
    "fira",
    "swan",
    "apollo",
    "apollo_mini",
    "scale",
    "sgd",
)


def default_optimizers() -> list[str]:
    return [n for n in PAPER_ORDER if n in OPTIMIZERS] + [n for n in OPTIMIZERS if n not in PAPER_ORDER]


# --------------------------------------------------------------------------------------------- models
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


def meta_model(spec: ModelSpec) -> torch.nn.Module:
    """The model in bf16 on the meta device, each parameter with a meta gradient, ready for one step."""
    model = build_llama(spec, device="meta").to(torch.bfloat16)
    for param in model.parameters():
        param.grad = torch.empty_like(param)
    return model


_LAYER = re.compile(r"\.layers\.\d+\.")


@dataclass
class MetaModels:
    """A model on the meta device, and the same shapes with one decoder layer.

    Stepping an optimizer on meta tensors still runs every operation through Python meta kernels (about
    10 ms per parameter for the projection methods), so a 7B model's 291 tensors would take seconds per
    optimizer. Every decoder layer has the same shapes and roles, so the state the optimizer keeps for
    ``layers.0.<x>`` of the one-layer model is what it keeps for ``layers.<i>.<x>`` of the full model;
    ``full_depth=True`` steps the whole model instead (tests check that both agree).
    """

    full: torch.nn.Module
    one_layer: torch.nn.Module | None

    @classmethod
    def build(cls, spec: ModelSpec, full_depth: bool = False) -> MetaModels:
        full = meta_model(spec)
        names = [n for n, _ in full.named_parameters()]
        shallow = not full_depth and spec.num_hidden_layers > 1 and any(_LAYER.search(n) for n in names)
        one_layer = meta_model(replace(spec, num_hidden_layers=1)) if shallow else None
        return cls(full=full, one_layer=one_layer)


def measure_state(factory: Callable[..., torch.optim.Optimizer], models: MetaModels) -> tuple[int, int]:
    """(elements, bytes at their real dtypes) of the optimizer state for the full model, after one step."""
    if models.one_layer is None:
        return _sum(_state_by_name(factory, models.full).values())
    per_name = _state_by_name(factory, models.one_layer)
    parts = [per_name.pop(None, (0, 0))]  # state not keyed by a parameter counts once
    for name, _ in models.full.named_parameters():
        parts.append(per_name.get(_LAYER.sub(".layers.0.", name), (0, 0)))
    return _sum(parts)


def _state_by_name(factory, model) -> dict[str | None, tuple[int, int]]:
    optimizer = factory(model=model)
    optimizer.step()
    names = {id(p): n for n, p in model.named_parameters()}
    per_name: dict[str | None, tuple[int, int]] = {}
    for key, state in optimizer.state.items():
        name = names.get(id(key))
        per_name[name] = _sum([per_name.get(name, (0, 0)), state_elements(state)])
    return per_name


def _sum(parts: Iterable[tuple[int, int]]) -> tuple[int, int]:
    elements = nbytes = 0
    for e, b in parts:
        elements += e
        nbytes += b
    return elements, nbytes


def state_elements(state) -> tuple[int, int]:
    """(elements, bytes at their real dtypes) of every tensor with at least one dimension in ``state``
    (a tensor, or dicts / lists / tuples of them; numbers and 0-d step counters are not counted)."""
    elements = nbytes = 0
    stack: list = [state]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            if value.ndim > 0:
                local = value.to_local() if hasattr(value, "to_local") else value  # a DTensor's own shard
                elements += local.numel()
                nbytes += local.numel() * local.element_size()
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return elements, nbytes


# ------------------------------------------------------------------------------------------ optimizers
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


def _everything(split: ParamSplit) -> int:
    return sum(split.numel(role) for role in ROLES)


def _outside_hidden(split: ParamSplit) -> int:
    return split.numel("embedding") + split.numel("output") + split.numel("vector")


def _low_rank(split: ParamSplit, hparams: dict) -> int | None:
    """Adam outside the hidden matrices; per hidden (m x n) matrix a rank-r projector on the smaller side
    and Adam's two moments in the projected (r x larger side) space."""
    rank = hparams.get("rank")
    if not isinstance(rank, int):
        return None
    return 2 * _outside_hidden(split) + sum(rank * min(p.shape) + 2 * rank * max(p.shape)
                                            for p in split.of("hidden"))


def _factored(split: ParamSplit, hparams: dict) -> int:
    """A row and a column factor per matrix (over its last two dims), vectors whole."""
    return sum(p.shape[:-2].numel() * (p.shape[-2] + p.shape[-1]) if p.ndim > 1 else p.numel()
               for role in ROLES for p in split.of(role))


# Optimizer-state elements as the paper counts them, and for the methods it does not compare, the state
# their definition keeps: (split of the model's parameters, the run's hyperparameters) -> elements.
STATE_RULES: dict[str, Callable[[ParamSplit, dict], int | None]] = {
    "adam": lambda split, hp: 2 * _everything(split),  # two moments
    "adamw": lambda split, hp: 2 * _everything(split),
    "stable_spam": lambda split, hp: 2 * _everything(split),
    "muon": lambda split, hp: _everything(split),  # the paper's rule: one buffer per parameter
    "galore": _low_rank,
    "fira": _low_rank,
    "apollo": _low_rank,
    "swan": lambda split, hp: 2 * _outside_hidden(split),  # stateless hidden matrices, Adam elsewhere
    "apollo_mini": lambda split, hp: 2 * _outside_hidden(split),
    "scale": lambda split, hp: split.numel("output") + 2 * split.numel("vector"),  # lm_head momentum, AdamW 1-D
    "sgd": lambda split, hp: _everything(split) if hp.get("momentum") else 0,
    "lion": lambda split, hp: _everything(split),  # one momentum buffer
    # fast EMA (none when beta1 = 0), slow EMA, second moment
    "ademamix": lambda split, hp: (3 if (hp.get("betas") or (0.9,))[0] else 2) * _everything(split),
    "adafactor": _factored,
}


def paper_rule_elements(name: str, split: ParamSplit, hparams: dict) -> int | None:
    """``STATE_RULES`` of ``name``; None where there is no rule (the measured column still has the value)."""
    rule = STATE_RULES.get(name)
    return None if rule is None else rule(split, hparams)


# ------------------------------------------------------------------------------------------------ rows
@dataclass
class MemoryRow:
    optimizer: str
    model: str
    params: int
    paper_gb: float | None
    rule_gb: float | None
    measured_gb: float | None
    measured_dtype_gb: float | None = None  # the same state at the dtypes it is really held in
    state_elements: int | None = None  # optimizer-state elements behind ``measured_gb``
    unavailable: str | None = None
    explanation: str | None = None  # why a cell differs from the paper, when known
    notes: list[str] = field(default_factory=list)

    @property
    def rule_matches(self) -> bool | None:
        return _same(self.rule_gb, self.paper_gb)

    @property
    def measured_matches(self) -> bool | None:
        return _same(self.measured_gb, self.paper_gb)

    @property
    def differs(self) -> bool:
        """A value we have disagrees with the paper's at two decimals."""
        return self.rule_matches is False or self.measured_matches is False


def _same(value: float | None, paper: float | None) -> bool | None:
    if value is None or paper is None:
        return None
    return f"{value:.2f}" == f"{paper:.2f}"


def memory_rows(
    optimizers: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    conf_dir: Path | None = None,
    vocab_size: int = 32000,
    full_depth: bool = False,
) -> list[MemoryRow]:
    """One row per optimizer x model (optimizers in the paper's order by default, the paper's five sizes)."""
    from optsweep.report import repo_root

    conf_dir = conf_dir or repo_root() / "conf"
    optimizers = list(optimizers or default_optimizers())
    unknown = [n for n in optimizers if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(
            f"unknown optimizer(s) {', '.join(unknown)}; known: {', '.join(default_optimizers())}"
        )
    choices = [parse_model(token, conf_dir, vocab_size) for token in (models or PAPER_MODELS)]
    rows = []
    with ConfigComposer(conf_dir) as composer:
        for choice in choices:
            models_ = MetaModels.build(choice.spec, full_depth=full_depth)
            split = split_parameters(models_.full)
            params = sum(p.numel() for p in models_.full.parameters())
            for name in optimizers:
                paper = PAPER_MEMORY_GB.get(name, {}).get(choice.label) if choice.is_paper_model else None
                node, notes = composer.optimizer_node(
                    name, choice.settings_name, expect_paper=paper is not None
                )
                rows.append(_row(name, choice, models_, split, params, node, paper, [*choice.notes, *notes]))
    # read like the paper's table: one block per optimizer, sizes in order
    return sorted(rows, key=lambda r: optimizers.index(r.optimizer))


def _row(name, choice, models, split, params, node, paper, notes) -> MemoryRow:
    setup = optimizer_setup(name, node)
    rule = paper_rule_elements(name, split, setup.hparams)
    row = MemoryRow(
        optimizer=name,
        model=choice.label,
        params=params,
        paper_gb=paper,
        rule_gb=None if rule is None else (params + rule) * BYTES_PER_ELEMENT / GB,
        measured_gb=None,
        unavailable=setup.unavailable,
        notes=notes,
    )
    if setup.factory is not None:
        try:
            elements, nbytes = measure_state(setup.factory, models)
            row.state_elements = elements
            row.measured_gb = (params + elements) * BYTES_PER_ELEMENT / GB
            row.measured_dtype_gb = (params * BYTES_PER_ELEMENT + nbytes) / GB
        except Exception as error:  # noqa: BLE001 - one broken optimizer must not hide the others' rows
            row.unavailable = f"one step on the meta device failed: {type(error).__name__}: {error}"
    if row.measured_dtype_gb is not None and abs(row.measured_dtype_gb - row.measured_gb) >= 5e-3:
        row.notes.append(
            f"{name}: part of its state is not held in bf16 (the CSV's measured_real_dtype_gb "
            f"counts it at its real dtype)"
        )
    if row.differs:
        row.explanation = explain(name, choice.label, setup.hparams)
    return row


# ------------------------------------------------------------------------------------------- rendering
COLUMNS = ("optimizer", "model", "params", "paper GB", "paper rule GB", "measured GB", "vs paper")


def _gb(value: float | None) -> str:
    """Two decimals, as the paper prints; three significant digits for models too small for that."""
    if value is None:
        return "—"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


def _footnotes(rows: Iterable[MemoryRow]) -> tuple[dict[int, list[str]], list[str]]:
    """Per row (by id) its footnote marks, and the numbered footnote texts (one per distinct reason)."""
    texts: list[str] = []
    marks: dict[int, list[str]] = {}

    def mark(row: MemoryRow, text: str) -> None:
        if text not in texts:
            texts.append(text)
        marks.setdefault(id(row), []).append(f"[{texts.index(text) + 1}]")

    for row in rows:
        if row.explanation:
            mark(row, row.explanation)
        for note in row.notes:
            mark(row, note)
    return marks, texts


def _cells(row: MemoryRow, marks: list[str]) -> list[str]:
    if row.unavailable:
        measured = f"n/a ({row.unavailable})"
    else:
        measured = _gb(row.measured_gb)
    if row.paper_gb is None:
        verdict = ""
    elif row.differs:
        verdict = "≠"
    elif row.measured_matches:
        verdict = "✓"
    else:
        verdict = "rule ✓" if row.rule_matches else ""
    verdict = " ".join([verdict, *marks]).strip()
    return [
        row.optimizer,
        row.model,
        f"{row.params / 1e6:.2f}M",
        _gb(row.paper_gb),
        _gb(row.rule_gb),
        measured,
        verdict,
    ]


def _footnote_lines(rows: list[MemoryRow], texts: list[str]) -> list[str]:
    lines = []
    for number, text in enumerate(texts, 1):
        cells = [r for r in rows if text == r.explanation]
        if cells:
            figures = "; ".join(
                f"{r.optimizer} {r.model}: paper {_gb(r.paper_gb)}, rule {_precise(r.rule_gb)}, "
                f"measured {_precise(r.measured_gb)}"
                for r in cells
            )
            lines.append(f"[{number}] {text} ({figures})")
        else:
            lines.append(f"[{number}] {text}")
    return lines


def _precise(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


HEADER = (
    "Model + optimizer memory, GB = 1e9 bytes, every weight and state element at 2 bytes (bf16, as the "
    "paper counts); scalar step counters not counted. 'paper rule': the paper's accounting (for methods "
    "outside the paper, the state their definition keeps) applied to "
    "this model's parameter split and the run's hyperparameters. 'measured': weights + the state tensors "
    "the optimizer holds after one step on the meta device (built from conf/ as training builds it; one "
    "decoder layer stepped, standing for each, unless --full-depth). "
    f"Paper: {PAPER_SOURCE}."
)


def render_markdown(rows: list[MemoryRow]) -> str:
    marks, texts = _footnotes(rows)
    lines = [HEADER, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cells(row, marks.get(id(row), []))) + " |")
    if texts:
        lines += ["", *_footnote_lines(rows, texts)]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[MemoryRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "optimizer",
            "model",
            "params",
            "state_elements",
            "paper_gb",
            "paper_rule_gb",
            "measured_gb",
            "measured_real_dtype_gb",
            "rule_matches_paper",
            "measured_matches_paper",
            "status",
            "note",
        ]
    )
    for row in rows:
        status = row.unavailable or (
            "differs" if row.differs else "matches" if row.paper_gb is not None else "no paper value"
        )
        writer.writerow(
            [
                row.optimizer,
                row.model,
                row.params,
                "" if row.state_elements is None else row.state_elements,
                _csv_number(row.paper_gb),
                _csv_number(row.rule_gb),
                _csv_number(row.measured_gb),
                _csv_number(row.measured_dtype_gb),
                _csv_bool(row.rule_matches),
                _csv_bool(row.measured_matches),
                status,
                " | ".join(filter(None, [row.explanation, *row.notes])),
            ]
        )
    return buffer.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.9f}"


def _csv_bool(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def print_table(rows: list[MemoryRow], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    marks, texts = _footnotes(rows)
    table = Table(
        title="Model + optimizer memory (GB = 1e9 bytes, bf16)", caption=HEADER, caption_justify="left"
    )
    for column in COLUMNS:
        table.add_column(
            column,
            justify="left" if column in ("optimizer", "model", "vs paper") else "right",
            overflow="fold",
            no_wrap=column in ("optimizer", "model", "params"),
        )
    previous = None
    for row in rows:
        if previous is not None and row.optimizer != previous:
            table.add_section()
        previous = row.optimizer
        cells = _cells(row, marks.get(id(row), []))
        style = "yellow" if row.differs else "dim" if row.unavailable else None
        table.add_row(*cells, style=style)
    console.print(table)
    for line in _footnote_lines(rows, texts):
        console.print(line, highlight=False)
