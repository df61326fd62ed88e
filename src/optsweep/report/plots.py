"""The comparison figures: perplexity against memory with its Pareto frontier, validation loss against tokens.

Each optimizer has one colour in every report (a fixed map by name), so figures from different reports can
be read side by side. Rendering uses matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

OPTIMIZER_COLOURS = {
    "scale": "#d62728",
    "adam": "#1f77b4",
    "adamw": "#17becf",
    "stable_spam": "#ff7f0e",
    "muon": "#2ca02c",
    "galore": "#9467bd",
    "fira": "#8c564b",
    "swan": "#e377c2",
    "apollo": "#bcbd22",
    "apollo_mini": "#808000",
    "sgd": "#7f7f7f",
}
# For names outside the map (ablation variants, new optimizers): picked by a stable hash of the name.
_SPARE = (
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
    "#636363",
    "#6baed6",
    "#fd8d3c",
    "#74c476",
    "#9e9ac8",
    "#e7ba52",
    "#ad494a",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def colours_for(names: Sequence[str]) -> dict[str, str]:
    """A colour per optimizer name: the fixed map, else a hash of the name (moved on only on a clash)."""
    colours = {n: OPTIMIZER_COLOURS[n] for n in names if n in OPTIMIZER_COLOURS}
    for name in sorted(n for n in set(names) if n not in OPTIMIZER_COLOURS):
        start = zlib.crc32(name.encode()) % len(_SPARE)
        for offset in range(len(_SPARE)):
            candidate = _SPARE[(start + offset) % len(_SPARE)]
            if candidate not in colours.values():
                break
        colours[name] = candidate
    return colours


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both minimised), by increasing x.

    A point is on the front when every point with x <= its x has a larger y (ties in both keep the first).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best_y = [], math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


@dataclass
class ParetoPoint:
    optimizer: str
    model: str
    memory_bytes: float
    perplexity: float


def memory_unit(largest_bytes: float) -> tuple[str, float]:
    """GB for the paper's sizes; MB when everything is under 0.1 GB (tiny CPU models)."""
    return ("GB", 1e9) if largest_bytes >= 1e8 else ("MB", 1e6)


def pareto_plot(points: Sequence[ParetoPoint], path: Path, ppl_label: str, title: str) -> Path:
    """One panel per model: each optimizer's run as a point, the Pareto frontier as a dashed staircase."""
    colours = colours_for([p.optimizer for p in points])
    models = list(dict.fromkeys(p.model for p in points))
    columns = min(len(models), 2)
    rows = math.ceil(len(models) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7.5 * columns, 5.5 * rows), dpi=130, squeeze=False)
    for ax, model in zip(axes.flat, models):
        shown = [p for p in points if p.model == model]
        unit, scale = memory_unit(max(p.memory_bytes for p in shown))
        xy = [(p.memory_bytes / scale, p.perplexity) for p in shown]
        for p, (x, y) in zip(shown, xy):
            ax.scatter(
                x,
                y,
                s=80,
                color=colours[p.optimizer],
                edgecolor="black",
                linewidth=0.6,
                zorder=3,
                label=p.optimizer,
            )
        front = [xy[i] for i in pareto_front(xy)]
        # The attainable boundary: each front point's perplexity holds until more memory buys a lower one.
        xs, ys = [front[0][0]], [front[0][1]]
        for (_, y0), (x1, y1) in itertools.pairwise(front):
            xs += [x1, x1]
            ys += [y0, y1]
        span = max(x for x, _ in xy) - min(x for x, _ in xy) or abs(xs[-1]) or 1.0
        xs.append(xs[-1] + 0.04 * span)
        ys.append(ys[-1])
        ax.plot(
            xs, ys, linestyle="--", color="black", linewidth=1.2, alpha=0.7, zorder=2, label="Pareto frontier"
        )
        ax.set_xlabel(f"model + optimizer memory ({unit})")
        perplexities = [y for _, y in xy]
        if min(perplexities) > 0 and max(perplexities) / min(perplexities) > 10:
            # one diverged or untuned run (plain SGD) would otherwise flatten every other point onto a line
            ax.set_yscale("log")
            ppl_label += ", log scale"
        ax.set_ylabel(ppl_label)
        ax.set_title(model, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15, y=0.15)
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
        _place_labels(fig, ax, [p.optimizer for p in shown], xy, [colours[p.optimizer] for p in shown])
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# Label positions tried around a point, in points: right, left, above, below, then further out.
_OFFSETS = (
    (7, 4, "left"),
    (7, -11, "left"),
    (-7, 4, "right"),
    (-7, -11, "right"),
    (0, 9, "center"),
    (0, -17, "center"),
    (12, 14, "left"),
    (-12, 14, "right"),
    (12, -22, "left"),
    (-12, -22, "right"),
)


def _place_labels(
    fig, ax, labels: Sequence[str], xy: Sequence[tuple[float, float]], colours: Sequence[str]
) -> None:
    """Annotate each point where its label hides no other label, marker or the legend (first fit)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_pixels = ax.transData.transform
    taken = [_box(to_pixels(point), 7) for point in xy]
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    inside = ax.get_window_extent(renderer)
    for label, point, colour in sorted(zip(labels, xy, colours), key=lambda t: t[1]):
        own = _box(to_pixels(point), 7)
        chosen = None
        for dx, dy, align in _OFFSETS:
            text = ax.annotate(
                label,
                point,
                textcoords="offset points",
                xytext=(dx, dy),
                fontsize=8,
                color=colour,
                ha=align,
                zorder=4,
            )
            box = text.get_window_extent(renderer)
            clash = any(box.overlaps(other) for other in taken if other is not own) or not _within(
                box, inside
            )
            if not clash:
                chosen = box
                break
            text.remove()
        if chosen is None:  # crowded: the first position, with a white backing so it stays legible
            text = ax.annotate(
                label,
                point,
                textcoords="offset points",
                xytext=_OFFSETS[0][:2],
                fontsize=8,
                color=colour,
                zorder=4,
                bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "edgecolor": "none"},
            )
            chosen = text.get_window_extent(renderer)
        taken.append(chosen)


def _box(center, half: float):
    from matplotlib.transforms import Bbox

    x, y = center
    return Bbox([[x - half, y - half], [x + half, y + half]])


def _within(box, outer) -> bool:
    return box.x0 >= outer.x0 and box.x1 <= outer.x1 and box.y0 >= outer.y0 and box.y1 <= outer.y1


@dataclass
class Curve:
    optimizer: str
    model: str
    x: list[float]
    y: list[float]


def loss_curves_plot(curves: Sequence[Curve], path: Path, x_label: str, title: str) -> Path:
    colours = colours_for([c.optimizer for c in curves])
    models = list(dict.fromkeys(c.model for c in curves))
    columns = min(len(models), 3)
    rows = math.ceil(len(models) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.5 * rows), dpi=130, squeeze=False)
    for ax, model in zip(axes.flat, models):
        # legend from best to worst final loss, the order the curves end in
        shown = sorted((c for c in curves if c.model == model), key=lambda c: c.y[-1])
        for curve in shown:
            ax.plot(
                curve.x,
                curve.y,
                color=colours[curve.optimizer],
                marker="o",
                markersize=2.5,
                linewidth=1.5,
                label=curve.optimizer,
            )
        # The first evaluations (random init, warm-up) are far above the rest: keep them off the scale.
        late = [y for c in shown for x, y in zip(c.x, c.y) if x >= 0.05 * max(c.x, default=0)]
        if late:
            low, high = min(late), max(late)
            pad = 0.05 * (high - low or abs(high) or 1.0)
            ax.set_ylim(low - pad, high + pad)
        ax.set_title(model, fontsize=10)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _count(value)))
        ax.set_xlabel(x_label)
        ax.set_ylabel("validation loss (nats per token)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _count(value: float) -> str:
    """Tick labels for counts: 0, 500, 250k, 1.5M, 2B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"
