"""One row per optimizer x model: the paper's number, its rule and the measured state, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optsweep.optim.groups import split_parameters
from optsweep.optim.registry import OPTIMIZERS
from optsweep.report.memory.compose import ConfigComposer, optimizer_setup, parse_model
from optsweep.report.memory.measure import MetaModels, measure_state
from optsweep.report.memory.paper import BYTES_PER_ELEMENT, GB, PAPER_MEMORY_GB, PAPER_MODELS, PAPER_ORDER
from optsweep.report.memory.rules import explain, paper_rule_elements


def default_optimizers() -> list[str]:
    """Every registered optimizer, the paper's in its table order first."""
    return [n for n in PAPER_ORDER if n in OPTIMIZERS] + [n for n in OPTIMIZERS if n not in PAPER_ORDER]


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
