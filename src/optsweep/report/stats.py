"""The statistics of a comparison, as pure functions of numbers (no MLflow, no plotting).

- ``t_interval``: the 95% t-interval of a mean over seeds, mean +- t(0.975, n-1) * s / sqrt(n);
- ``welch``: Welch's unequal-variance t-test between two cells; ``holm``: Holm's step-down correction;
- ``expected_best_of_k``: the expected best loss of k trials drawn without replacement from a study's n
  trials (exact order statistics, no resampling);
- ``lr_robustness_decades`` and ``divergence_rate``: how forgiving an optimizer is to its learning rate;
- ``first_crossing``: where a logged curve first reaches a target, linearly interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None  # None with one value: a single seed has no spread to estimate
    high: float | None
    n: int
    std: float | None  # sample standard deviation (n - 1 in the denominator)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean +- t((1 + confidence) / 2, n - 1) * s / sqrt(n) over finite values."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("t_interval needs at least one value")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"t_interval needs finite values, got {xs}: drop diverged runs first")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(mean, None, None, 1, None)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(_scipy.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std)


@dataclass(frozen=True)
class WelchResult:
    difference: float  # mean(a) - mean(b)
    t: float
    df: float
    p: float  # two-sided


def welch(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Welch's two-sided t-test of mean(a) = mean(b); each side needs at least two values."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs >= 2 values per side (got {len(a)} and {len(b)})")
    ia, ib = t_interval(a), t_interval(b)
    va, vb = ia.std**2 / ia.n, ib.std**2 / ib.n
    difference = ia.mean - ib.mean
    if va + vb == 0:  # no spread on either side: equal means are a tie, different ones certain
        return WelchResult(difference, 0.0 if difference == 0 else math.copysign(math.inf, difference),
                           float(ia.n + ib.n - 2), 1.0 if difference == 0 else 0.0)
    t = difference / math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va**2 / (ia.n - 1) + vb**2 / (ib.n - 1))
    p = 2 * float(_scipy.t.sf(abs(t), df))
    return WelchResult(difference, t, df, min(p, 1.0))


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm's step-down correction: adjusted p-values and which hypotheses are rejected at ``alpha``.

    Sorted ascending, the i-th (1-based) of m is compared with alpha / (m - i + 1); testing stops at the first
    that fails. Adjusted p_(i) = max over j <= i of min(1, (m - j + 1) * p_(j)), in the input's order.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted, [p <= alpha for p in adjusted]


def expected_best_of_k(losses: Sequence[float], k: int) -> float:
    """E[min of k trials drawn without replacement from these n]: sum_i l_(i) C(n - i, k - 1) / C(n, k).

    A diverged trial is +inf: it is the best of a draw only when every drawn trial diverged.
    """
    n = len(losses)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of trials ({n})")
    ordered = sorted(float(v) for v in losses)
    total, draws = 0.0, math.comb(n, k)
    for i, loss in enumerate(ordered, start=1):
        weight = math.comb(n - i, k - 1)
        if weight:  # inf * 0 would poison the sum
            total += loss * weight / draws
    return total


def lr_robustness_decades(lrs: Sequence[float], losses: Sequence[float], tolerance: float = 0.02) -> float:
    """The width, in decades of lr, of the contiguous run of tried lrs around the best whose loss is within
    ``tolerance`` (relative) of the best loss. Several values at one lr (seeds) count by their mean; a
    diverged lr (non-finite loss) ends the run. 0 when only the best lr qualifies."""
    by_lr: dict[float, list[float]] = {}
    for lr, loss in zip(lrs, losses, strict=True):
        by_lr.setdefault(float(lr), []).append(float(loss))
    points = sorted((lr, math.fsum(v) / len(v)) for lr, v in by_lr.items())
    finite = [(i, loss) for i, (_, loss) in enumerate(points) if math.isfinite(loss)]
    if not finite:
        return 0.0
    best_index, best = min(finite, key=lambda t: t[1])
    limit = best + tolerance * abs(best)

    def good(i: int) -> bool:
        return math.isfinite(points[i][1]) and points[i][1] <= limit

    low = high = best_index
    while low - 1 >= 0 and good(low - 1):
        low -= 1
    while high + 1 < len(points) and good(high + 1):
        high += 1
    return math.log10(points[high][0] / points[low][0])


def divergence_rate(losses: Sequence[float]) -> float:
    """The share of runs whose final loss is not finite (NaN or inf: diverged)."""
    if not losses:
        raise ValueError("divergence_rate needs at least one run")
    return sum(not math.isfinite(v) for v in losses) / len(losses)


def first_crossing(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """The x at which the curve first reaches ``y <= target``, linear between logged points; None if never.

    xs must increase (tokens, steps, FLOPs or seconds at each evaluation)."""
    previous = None
    for x, y in zip(xs, ys, strict=True):
        if math.isfinite(y) and y <= target:
            if previous is None or not math.isfinite(previous[1]):
                return float(x)
            x0, y0 = previous
            return float(x0 + (x - x0) * (y0 - target) / (y0 - y))
        previous = (x, y)
    return None
