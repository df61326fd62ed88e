"""The comparison figures: perplexity against memory with its Pareto frontier, validation loss against tokens
(mean over seeds, the seeds' range shaded), final loss against learning rate.

Each method has its own colour (a fixed map by name, and no two alike in one figure), legends sit outside the
axes so they hide no curve, and every axis scale is fixed by what is plotted, not by the values: perplexity on
a log axis, lr on a log axis. Rendering uses matplotlib's Agg backend: no display is needed.
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

from optsweep.report.tables import memory_unit

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
    # chosen greedily, each as far as possible (>= 0.43 in RGB) from every colour above
    "lion": "#000000",
    "adafactor": "#0000ff",
    "adam_mini": "#ff00ff",
    "ademamix": "#000080",
    "soap": "#00ff00",
    "normuon": "#ff1493",
}
# For names outside the map (ablation variants, new optimizers): candidates tried from a stable hash of the
# name; one too close to a colour already in the figure is skipped, so no two methods look alike.
_SPARE = (
    "#000000", "#0000cd", "#ffd700", "#ff1493", "#00fa9a", "#8b0000", "#4b0082", "#ff4500", "#008080",
    "#7fff00", "#a0522d", "#00bfff", "#ff00ff", "#556b2f", "#000080", "#f4a460", "#dc143c", "#40e0d0",
)
MIN_COLOUR_DISTANCE = 0.25  # Euclidean, in RGB in [0, 1]^3
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def colour_distance(a: str, b: str) -> float:
    return math.dist(matplotlib.colors.to_rgb(a), matplotlib.colors.to_rgb(b))


def colours_for(names: Sequence[str]) -> dict[str, str]:
    """A colour per method: the fixed map, else the first spare (from a hash of the name) at least
    MIN_COLOUR_DISTANCE from every colour taken; the farthest spare when none is that far."""
    colours = {n: OPTIMIZER_COLOURS[n] for n in names if n in OPTIMIZER_COLOURS}
    for name in sorted(n for n in set(names) if n not in OPTIMIZER_COLOURS):
        start = zlib.crc32(name.encode()) % len(_SPARE)
        order = [_SPARE[(start + offset) % len(_SPARE)] for offset in range(len(_SPARE))]
        free = [c for c in order if c not in colours.values()]

        def nearest(colour: str) -> float:
            return min((colour_distance(colour, taken) for taken in colours.values()), default=math.inf)

        colours[name] = next((c for c in free if nearest(c) >= MIN_COLOUR_DISTANCE), None) or max(free, key=nearest)
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
    method: str
    model: str
    memory_bytes: float
    perplexity: float




def pareto_plot(points: Sequence[ParetoPoint], path: Path, ppl_label: str, title: str) -> Path:
    """One panel per model: each optimizer's run as a point, the Pareto frontier as a dashed staircase."""
    colours = colours_for([p.method for p in points])
    models = list(dict.fromkeys(p.model for p in points))
    columns = min(len(models), 2)
    rows = math.ceil(len(models) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(9.5 * columns, 5.5 * rows), dpi=130, squeeze=False)
    for ax, model in zip(axes.flat, models):
        shown = [p for p in points if p.model == model]
        unit, scale = memory_unit(max(p.memory_bytes for p in shown))
        xy = [(p.memory_bytes / scale, p.perplexity) for p in shown]
        for p, (x, y) in zip(shown, xy):
            ax.scatter(
                x,
                y,
                s=80,
                color=colours[p.method],
                edgecolor="black",
                linewidth=0.6,
                zorder=3,
                label=p.method,
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
        # always log: a ratio of perplexities reads the same anywhere, and one untuned run (plain SGD) does
        # not flatten the others; the scale never switches between reports
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 300, not 3 x 10^2
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_ylabel(ppl_label + ", log scale")
        ax.set_title(model, fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        ax.margins(x=0.15, y=0.15)
        _legend_outside(ax)
        _place_labels(fig, ax, [p.method for p in shown], xy, [colours[p.method] for p in shown])
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    return _save(fig, path, title)


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
    method: str
    model: str
    x: list[float]
    y: list[float]  # mean over the seeds
    low: list[float] | None = None  # the seeds' range, when there are several
    high: list[float] | None = None
    seeds: int = 1


def loss_curves_plot(curves: Sequence[Curve], path: Path, x_label: str, title: str) -> Path:
    """Per model two panels: the whole curve from the first evaluation (nothing clipped), and
    the second half of training on a linear axis, where the methods separate."""
    colours = colours_for([c.method for c in curves])
    models = list(dict.fromkeys(c.model for c in curves))
    fig, axes = plt.subplots(len(models), 2, figsize=(14.5, 4.6 * len(models)), dpi=130, squeeze=False)
    for (whole, late), model in zip(axes, models):
        # legend from best to worst final loss, the order the curves end in
        shown = sorted((c for c in curves if c.model == model), key=lambda c: c.y[-1])
        end = max(max(c.x) for c in shown)
        for ax in (whole, late):
            for curve in shown:
                label = curve.method + (f" (mean of {curve.seeds} seeds)" if curve.seeds > 1 else "")
                ax.plot(curve.x, curve.y, color=colours[curve.method], marker="o", markersize=2.5, linewidth=1.5,
                        label=label)
                if curve.low is not None and curve.seeds > 1:
                    ax.fill_between(curve.x, curve.low, curve.high, color=colours[curve.method], alpha=0.18,
                                    linewidth=0)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _count(value)))
            ax.set_xlabel(x_label)
            ax.grid(True, alpha=0.3, which="both")

        whole.set_ylabel("validation loss (nats per token)")
        whole.set_title(f"{model}: the whole run", fontsize=10)
        half = [(x, y) for c in shown for x, y, lo, hi in _points(c) for y in (lo, hi) if x >= end / 2]
        late.set_xlim(end / 2, end * 1.01)
        if half:
            low, high = min(y for _, y in half), max(y for _, y in half)
            pad = 0.08 * (high - low or abs(high) or 1.0)
            late.set_ylim(low - pad, high + pad)
        late.set_ylabel("validation loss (nats per token)")
        late.set_title(f"{model}: second half (seeds' range shaded)", fontsize=10)
        _legend_outside(late)
    return _save(fig, path, title)


def _points(curve: Curve):
    lows = curve.low if curve.low is not None else curve.y
    highs = curve.high if curve.high is not None else curve.y
    return zip(curve.x, curve.y, lows, highs, strict=True)


@dataclass
class LrPoint:
    method: str
    model: str
    lr: float
    loss: float  # final validation loss; inf when the run diverged
    diverged: bool


def sensitivity_plot(points: Sequence[LrPoint], profiles: dict[tuple[str, str], list[tuple[float, float]]],
                     path: Path, title: str) -> Path:
    """Final validation loss against lr (log axis), every run a dot, the best configuration per lr joined by
    a line; diverged runs are crosses on the top edge of the panel."""
    colours = colours_for([p.method for p in points])
    models = list(dict.fromkeys(p.model for p in points))
    fig, axes = plt.subplots(1, len(models), figsize=(8.5 * len(models), 5.0), dpi=130, squeeze=False)
    for ax, model in zip(axes[0], models):
        shown = [p for p in points if p.model == model]
        finite = [p.loss for p in shown if not p.diverged]
        top = max(finite) if finite else 1.0
        bottom = min(finite) if finite else 0.0
        ceiling = top + 0.06 * (top - bottom or abs(top) or 1.0)
        for method in dict.fromkeys(p.method for p in shown):
            mine = [p for p in shown if p.method == method]
            ok = [p for p in mine if not p.diverged]
            bad = [p for p in mine if p.diverged]
            colour = colours[method]
            ax.scatter([p.lr for p in ok], [p.loss for p in ok], color=colour, s=22, alpha=0.7, zorder=3)
            if bad:
                ax.scatter([p.lr for p in bad], [ceiling] * len(bad), color=colour, marker="x", s=50, zorder=3)
            profile = [(lr, v) for lr, v in profiles.get((method, model), []) if math.isfinite(v)]
            label = method + (f" ({len(bad)} diverged, x)" if bad else "")
            ax.plot([lr for lr, _ in profile], [v for _, v in profile], color=colour, linewidth=1.4,
                    marker="o", markersize=4, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate (optimizer.lr), log scale")
        ax.set_ylabel("final validation loss")
        ax.set_title(model, fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        _legend_outside(ax)
    return _save(fig, path, title)


def _legend_outside(ax) -> None:
    """The legend right of the axes, so it hides no curve."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _count(value: float) -> str:
    """Tick labels for counts: 0, 500, 250k, 1.5M, 2B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


# ----------------------------------------------------------------------------------- from a report's cells
def write_figures(summaries, sensitivity, out: Path, ppl: str, title: str) -> tuple[list[Path], list[str]]:
    """pareto.png, val_loss.png and lr_sensitivity.png for a report; notes on what could not be drawn."""
    import numpy as np

    from optsweep import metric_names as names
    from optsweep.report.cells import final_loss, tokens_at

    notes, paths = [], []
    ppl_key = names.VAL_PPL_PAPER if ppl == "paper" else names.VAL_PPL
    ppl_label = ("validation perplexity (paper's estimator)" if ppl == "paper"
                 else "validation perplexity (token-weighted)")
    points = []
    for s in summaries:
        values = s.cell.finite(ppl_key)
        memory = s.extras["model_optimizer_bytes"]
        if not values or memory is None:
            notes.append(f"{s.method} {s.model} is not on the Pareto plot: it has no finished "
                         f"{'perplexity' if not values else names.MODEL_OPTIMIZER_BYTES}")
            continue
        points.append(ParetoPoint(s.method, s.model, memory, sum(values) / len(values)))
    if points:
        paths.append(pareto_plot(points, out / "pareto.png", ppl_label + " (mean over seeds)",
                                 f"Perplexity against memory: {title}"))

    curves = []
    for s in summaries:
        runs = [r for r in s.cell.stats_runs if r.history.get(names.VAL_LOSS) and final_loss(r) < math.inf]
        if not runs:
            notes.append(f"{s.method} {s.model} has no finished run with a {names.VAL_LOSS} history: no curve")
            continue
        # the seeds' common evaluation steps (the same schedule: the same steps)
        steps = sorted(set.intersection(*({st for st, _, _ in r.history[names.VAL_LOSS]} for r in runs)))
        values = np.array([[{st: v for st, v, _ in r.history[names.VAL_LOSS]}[st] for st in steps]
                           for r in runs])
        if all(r.history.get(names.TOKENS) for r in runs):
            x = tokens_at(steps, runs[0].history[names.TOKENS])
        else:
            x = [float(st) for st in steps]
            notes.append(f"{s.method} {s.model} logged no {names.TOKENS}: its curve is against optimizer steps")
        curves.append(Curve(s.method, s.model, x, values.mean(axis=0).tolist(), values.min(axis=0).tolist(),
                            values.max(axis=0).tolist(), len(runs)))
    if curves:
        paths.append(loss_curves_plot(curves, out / "val_loss.png", "tokens seen (nominal, padding included)",
                                      f"Validation loss: {title}"))

    lr_points = [LrPoint(r.method, r.model, lr, loss, diverged)
                 for r in sensitivity for lr, loss, diverged, _ in r.points]
    if lr_points:
        profiles = {(r.method, r.model): r.profile for r in sensitivity}
        paths.append(sensitivity_plot(lr_points, profiles, out / "lr_sensitivity.png",
                                      f"Final validation loss against learning rate: {title}"))
    return paths, notes
