"""The comparison figures: perplexity against memory with its Pareto frontier, validation loss against tokens.

Each optimizer has one colour in every report (a fixed map by name), so figures from different reports can
be read side by side. Rendering uses matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
_SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
          "#756bb1", "#636363", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8", "#e7ba52", "#ad494a")
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
    memory: float  # in the unit the axis shows
    perplexity: float


def pareto_plot(points: Sequence[ParetoPoint], path: Path, unit: str, ppl_label: str, title: str) -> Path:
    colours = colours_for([p.optimizer for p in points])
    models = list(dict.fromkeys(p.model for p in points))
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=130)
    for p in points:
        ax.scatter(p.memory, p.perplexity, s=70, color=colours[p.optimizer], marker=markers[p.model],
                   edgecolor="black", linewidth=0.6, zorder=3)
        label = p.optimizer if len(models) == 1 else f"{p.optimizer} ({p.model})"
        ax.annotate(label, (p.memory, p.perplexity), textcoords="offset points", xytext=(6, 5), fontsize=8,
                    color=colours[p.optimizer])
    front = [points[i] for i in pareto_front([(p.memory, p.perplexity) for p in points])]
    if front:
        # The attainable boundary: from each front point, the same perplexity until more memory buys less.
        xs, ys = [], []
        for i, p in enumerate(front):
            xs += [p.memory] if i == 0 else [p.memory, p.memory]
            ys += [p.perplexity] if i == 0 else [front[i - 1].perplexity, p.perplexity]
        xs.append(max(p.memory for p in points) * 1.03)
        ys.append(front[-1].perplexity)
        ax.plot(xs, ys, linestyle="--", color="black", linewidth=1.2, alpha=0.7, zorder=2)
    handles = [plt.Line2D([], [], linestyle="none", marker="o", markersize=8, color=colours[o],
                          markeredgecolor="black", label=o) for o in dict.fromkeys(p.optimizer for p in points)]
    if len(models) > 1:
        handles += [plt.Line2D([], [], linestyle="none", marker=markers[m], markersize=8, color="white",
                               markeredgecolor="black", label=m) for m in models]
    handles.append(plt.Line2D([], [], linestyle="--", color="black", label="Pareto frontier"))
    ax.legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9)
    ax.set_xlabel(f"model + optimizer memory ({unit})")
    ax.set_ylabel(ppl_label)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
        shown = [c for c in curves if c.model == model]
        for curve in shown:
            ax.plot(curve.x, curve.y, color=colours[curve.optimizer], marker="o", markersize=2.5, linewidth=1.5,
                    label=curve.optimizer)
        # The first evaluations (random init, warm-up) are far above the rest: keep them off the scale.
        late = [y for c in shown for x, y in zip(c.x, c.y) if x >= 0.05 * max(c.x, default=0)]
        if late:
            low, high = min(late), max(late)
            pad = 0.05 * (high - low or abs(high) or 1.0)
            ax.set_ylim(low - pad, high + pad)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel(x_label)
        ax.set_ylabel("validation loss (nats per token)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
