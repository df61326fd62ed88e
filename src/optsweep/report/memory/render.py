"""The memory rows as markdown, CSV or a rich console table, with numbered footnotes for the differences."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from optsweep.report.memory.paper import PAPER_SOURCE
from optsweep.report.memory.rows import MemoryRow

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
