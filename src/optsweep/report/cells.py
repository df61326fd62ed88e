"""From runs to conclusions: cells (runs that differ only in their seed), the configuration that stands for a
method, and the per-method numbers of a comparison (intervals, pairwise tests, lr sensitivity, tuning budget,
fairness, speed to a target). Pure: runs in, dataclasses out; MLflow and rendering live elsewhere."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from optsweep import metric_names as names
from optsweep.report import stats
from optsweep.report.queries import RunRecord

# Params that do not change what a run computes (where it writes, how it logs, which checkpoint it resumes,
# what the sweeper recorded about it): runs differing only in these and the seeds are one cell.
IGNORED_PARAM_PREFIXES = ("paths.", "callbacks.", "logger.", "hydra.", "optuna/", "throughput.")
IGNORED_PARAMS = frozenset({"seed", "task_name", "train.ckpt_path", "data.path", "data.num_workers"})
# Seeds that follow `seed` unless pinned: following is one value, a pinned seed is part of the configuration.
FOLLOWING_SEEDS = ("init_seed", "data.seed")


def config_key(run: RunRecord) -> tuple:
    """What makes a cell: method, model and every result-relevant param except the seed."""
    seed = run.params.get("seed")
    items = []
    for key, value in sorted(run.params.items()):
        if key in IGNORED_PARAMS or key in FOLLOWING_SEEDS or key.startswith(IGNORED_PARAM_PREFIXES):
            continue
        items.append((key, value))
    for key in FOLLOWING_SEEDS:
        value = run.params.get(key)
        items.append((key, "follows seed" if value is None or value == seed else value))
    return (run.method, run.model, tuple(items))


def final_loss(run: RunRecord) -> float:
    """The run's final validation loss; +inf when it diverged (FAILED, or a non-finite last value)."""
    value = run.metrics.get(names.VAL_LOSS)
    if run.status == "FAILED" or value is None or not math.isfinite(value):
        return math.inf
    return value


@dataclass
class Cell:
    method: str
    model: str
    key: tuple
    runs: list[RunRecord]  # FINISHED-or-as-filtered runs of this configuration, one per seed

    @property
    def lr(self) -> float | None:
        return self.runs[0].lr

    @property
    def search_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.is_replicate] or self.runs

    @property
    def replicate_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.is_replicate]

    @property
    def stats_runs(self) -> list[RunRecord]:
        """The runs the interval is computed from: the replicates when the configuration has any (the trial
        that won the sweep was chosen for its low loss: counting it would bias the mean down)."""
        return self.replicate_runs or self.runs

    @property
    def selection_loss(self) -> float:
        """Mean final loss over the search runs (how a configuration competes with the others)."""
        losses = [final_loss(r) for r in self.search_runs]
        return math.fsum(losses) / len(losses)

    def finite(self, metric: str = names.VAL_LOSS) -> list[float]:
        values = []
        for run in self.stats_runs:
            value = run.metrics.get(metric)
            if final_loss(run) < math.inf and value is not None and math.isfinite(value):
                values.append(value)
        return values

    @property
    def seeds(self) -> list[str]:
        return [r.seed for r in self.stats_runs]


def group_cells(runs: Sequence[RunRecord]) -> list[Cell]:
    cells: dict[tuple, Cell] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        key = config_key(run)
        cells.setdefault(key, Cell(run.method, run.model, key, [])).runs.append(run)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: (_seed_order(r.seed), r.start_time))
    return list(cells.values())


def _seed_order(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def select_cells(cells: Sequence[Cell], how: str) -> list[tuple[Cell, int]]:
    """One cell per method x model, with how many configurations competed: ``best`` (lowest mean final val
    loss over its search seeds; more seeds first on a tie), ``latest`` (holding the latest run) or ``all``."""
    if how == "all":
        counts: dict[tuple[str, str], int] = {}
        for cell in cells:
            counts[(cell.method, cell.model)] = counts.get((cell.method, cell.model), 0) + 1
        return [(c, counts[(c.method, c.model)]) for c in cells]
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.method, cell.model), []).append(cell)
    chosen = []
    for group in groups.values():
        if how == "best":
            pick = min(group, key=lambda c: (c.selection_loss, -len(c.runs)))
        elif how == "latest":
            pick = max(group, key=lambda c: max(r.start_time for r in c.runs))
        else:
            raise ValueError(f"--select {how} is not one of best, latest, all")
        chosen.append((pick, len(group)))
    return chosen


# ------------------------------------------------------------------------------------------ the main table
@dataclass
class Summary:
    cell: Cell
    configs: int  # configurations of this method x model that competed
    loss: stats.Interval | None
    ppl: stats.Interval | None
    n_diverged: int
    interval_from: str
    extras: dict[str, float | None] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.cell.method

    @property
    def model(self) -> str:
        return self.cell.model


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return math.fsum(values) / len(values) if values else None


def summarize(cell: Cell, configs: int, confidence: float = 0.95) -> Summary:
    losses, ppls = cell.finite(names.VAL_LOSS), cell.finite(names.VAL_PPL)
    n_diverged = sum(final_loss(r) == math.inf for r in cell.stats_runs)
    if cell.replicate_runs:
        source = f"{len(cell.replicate_runs)} replicate seed(s); the winning trial excluded"
    elif configs > 1 and len(losses) > 1:
        source = f"{len(losses)} seeds, the same ones this configuration was chosen on (optimistic)"
    elif configs > 1:
        source = "one trial chosen among several: no interval (replicate the winner on new seeds)"
    else:
        source = f"{len(losses)} seed(s)"
    runs = cell.stats_runs
    throughput = [statistics.median(v for _, v, _ in r.history[names.THROUGHPUT]) if r.history.get(names.THROUGHPUT)
                  else r.metrics.get(names.THROUGHPUT) for r in runs]
    val = runs[0].history.get(names.VAL_LOSS) or []
    extras = {
        "steps": float(val[-1][0]) if val else None,
        "tokens": _mean([r.metrics.get(names.TOKENS) for r in runs]),
        "tokens_nonpad": _mean([r.metrics.get(names.TOKENS_NONPAD) for r in runs]),
        "state_bytes": _mean([r.metrics.get(names.STATE_BYTES) for r in runs]),
        "model_optimizer_bytes": _mean([r.metrics.get(names.MODEL_OPTIMIZER_BYTES) for r in runs]),
        "peak_bytes": _mean([r.metrics.get(names.PEAK_BYTES) for r in runs]),
        "tokens_per_s": _mean(throughput),  # per run the median over its windows (warm-up steps aside)
        "params": _mean([r.metrics.get(names.PARAMS) for r in runs]),
        "val_ppl_paper": _mean([r.metrics.get(names.VAL_PPL_PAPER) for r in runs if final_loss(r) < math.inf]),
    }
    return Summary(
        cell=cell, configs=configs,
        loss=stats.t_interval(losses, confidence) if losses else None,
        ppl=stats.t_interval(ppls, confidence) if ppls else None,
        n_diverged=n_diverged, interval_from=source, extras=extras,
    )


# ------------------------------------------------------------------------------------- against a baseline
@dataclass
class Pairwise:
    method: str
    model: str
    baseline: str
    difference: float | None  # mean loss of the method - the baseline's (negative: the method is better)
    p: float | None
    p_holm: float | None
    verdict: str


def pairwise(summaries: Sequence[Summary], baseline: str, alpha: float = 0.05) -> list[Pairwise]:
    """Welch's test of each method against the baseline on the same model, Holm-corrected across pairs.
    Not significant after correction is a tie, whatever the sign of the difference."""
    bases = {s.model: s for s in summaries if s.method == baseline}
    if not bases:
        seen = ", ".join(sorted({s.method for s in summaries}))
        raise ValueError(f"--baseline {baseline} is not among the compared methods ({seen}): pick one of them")
    rows, tested = [], []
    for s in summaries:
        base = bases.get(s.model)
        if s.method == baseline or base is None:
            continue
        a, b = s.cell.finite(), base.cell.finite()
        if len(a) < 2 or len(b) < 2:
            diff = (s.loss.mean - base.loss.mean) if s.loss and base.loss else None
            rows.append(Pairwise(s.method, s.model, baseline, diff, None, None,
                                 f"untested: {len(a)} and {len(b)} finished seeds (Welch needs >= 2 each)"))
            continue
        result = stats.welch(a, b)
        rows.append(Pairwise(s.method, s.model, baseline, result.difference, result.p, None, ""))
        tested.append(len(rows) - 1)
    adjusted, rejected = stats.holm([rows[i].p for i in tested], alpha)
    for i, p_holm, reject in zip(tested, adjusted, rejected, strict=True):
        row = rows[i]
        row.p_holm = p_holm
        if not reject:
            row.verdict = f"tie (Holm p = {p_holm:.3g} > {alpha:g})"
        else:
            row.verdict = "better" if row.difference < 0 else "worse"
    return rows


# ---------------------------------------------------------------------------------- sensitivity and tuning
@dataclass
class Sensitivity:
    method: str
    model: str
    points: list[tuple[float, float, bool, str]]  # (lr, final loss, diverged, seed) of every run
    profile: list[tuple[float, float]]  # per lr: the best configuration's mean final loss (inf: all diverged)
    robustness_decades: float
    divergence_rate: float
    tolerance: float


def sensitivity(cells: Sequence[Cell], tolerance: float = 0.02) -> list[Sensitivity]:
    """Final loss against lr per method x model from every finished or diverged run (pruned and killed
    runs stopped early: left out)."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.method, cell.model), []).append(cell)
    found = []
    for (method, model), group in groups.items():
        points: list = []
        best_at: dict[float, float] = {}
        for cell in group:
            runs = [r for r in cell.runs if r.status in ("FINISHED", "FAILED") and r.lr is not None]
            if not runs:
                continue
            losses = [final_loss(r) for r in runs]
            points += [(r.lr, v, v == math.inf, r.seed) for r, v in zip(runs, losses, strict=True)]
            mean = math.fsum(losses) / len(losses)
            best_at[runs[0].lr] = min(best_at.get(runs[0].lr, math.inf), mean)
        if not points:
            continue
        profile = sorted(best_at.items())
        found.append(Sensitivity(
            method, model, points, profile,
            stats.lr_robustness_decades([lr for lr, _ in profile], [v for _, v in profile], tolerance),
            stats.divergence_rate([v for _, v, _, _ in points]), tolerance))
    return found


@dataclass
class Budget:
    method: str
    model: str
    losses: list[float]  # one per search trial (inf: diverged)
    expected: dict[int, float]  # k -> E[best of k trials]


def tuning_budget(cells: Sequence[Cell], ks: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> list[Budget]:
    """The expected best final loss after k trials per method x model, over its search runs (replicates
    are not trials of the search)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for cell in cells:
        for run in cell.runs:
            if not run.is_replicate and run.status in ("FINISHED", "FAILED"):
                groups.setdefault((cell.method, cell.model), []).append(final_loss(run))
    return [Budget(m, model, losses, {k: stats.expected_best_of_k(losses, k) for k in ks if k <= len(losses)})
            for (m, model), losses in groups.items()]


@dataclass
class Fairness:
    method: str
    model: str
    trials: int  # search runs (finished or diverged)
    configs: int
    lr_low: float | None
    lr_high: float | None
    distinct_lrs: int
    seeds: int  # seeds behind the reported interval
    best_lr: float | None
    best_on_edge: bool  # the chosen lr is the smallest or largest tried: the optimum may lie outside
    # every other optimizer value the search varied (a second lr, a momentum) whose best is at an end
    other_edges: tuple[str, ...] = ()


def _numeric(value: str | None) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def tuned_values(runs: Sequence[RunRecord]) -> dict[str, list[float]]:
    """Each numeric ``optimizer.*`` param other than the lr that the runs set to more than one value: the
    sorted values tried."""
    values: dict[str, set[float]] = {}
    for run in runs:
        for key, text in run.params.items():
            value = _numeric(text)
            if key.startswith("optimizer.") and key != "optimizer.lr" and value is not None:
                values.setdefault(key, set()).add(value)
    return {key: sorted(v) for key, v in values.items() if len(v) > 1}


def values_on_edge(chosen: dict[str, str], tried: dict[str, list[float]]) -> tuple[str, ...]:
    """``key=value (smallest|largest of n)`` for each tuned value the chosen configuration has at an end."""
    edges = []
    for key, values in sorted(tried.items()):
        value = _numeric(chosen.get(key))
        if value in (values[0], values[-1]):
            end = "smallest" if value == values[0] else "largest"
            edges.append(f"{key}={value:.3g} ({end} of {len(values)})")
    return tuple(edges)


def fairness(cells: Sequence[Cell], selected: Sequence[Summary]) -> list[Fairness]:
    rows = []
    for s in selected:
        group = [c for c in cells if (c.method, c.model) == (s.method, s.model)]
        runs = [r for c in group for r in c.runs if not r.is_replicate]
        lrs = sorted({r.lr for r in runs if r.lr is not None})
        best = s.cell.lr
        other_edges = values_on_edge(s.cell.runs[0].params, tuned_values(runs))
        rows.append(Fairness(
            s.method, s.model, trials=len([r for r in runs if r.status in ("FINISHED", "FAILED")]),
            configs=len(group), lr_low=lrs[0] if lrs else None, lr_high=lrs[-1] if lrs else None,
            distinct_lrs=len(lrs), seeds=s.loss.n if s.loss else 0, best_lr=best,
            best_on_edge=len(lrs) > 1 and best in (lrs[0], lrs[-1]), other_edges=other_edges))
    return rows


# ------------------------------------------------------------------------------------------------ to target
def tokens_at(steps: Sequence[int], tokens_history: Sequence[tuple]) -> list[float]:
    """Tokens seen at each step, read off the logged ``tokens/seen`` (linear in between; 0 at step 0)."""
    import numpy as np

    known = [(s, v) for s, v, *_ in tokens_history]
    if known[0][0] > 0:
        known.insert(0, (0, 0.0))
    xs = np.array([s for s, _ in known], dtype=float)
    ys = np.array([t for _, t in known], dtype=float)
    per_step = ys[-1] / xs[-1] if xs[-1] > 0 else 0.0
    return [float(np.interp(s, xs, ys)) if s <= xs[-1] else float(s * per_step) for s in steps]


@dataclass
class ToTarget:
    method: str
    model: str
    target: float
    reached: int  # seeds whose own curve reaches the target
    seeds: int
    tokens: float | None  # on the seeds' mean curve; None: the mean curve never reaches the target
    steps: float | None
    flops: float | None  # 6 x parameters x tokens (the dense-transformer rule; attention left out)
    seconds: float | None  # wall-clock from the first evaluation (step 0) to the crossing
    speedup: float | None = None  # baseline tokens / method tokens


def mean_curve(runs: Sequence[RunRecord]) -> dict[str, list[float]] | None:
    """The seeds' mean val-loss curve at the evaluation steps they share, with tokens, FLOPs and seconds
    (from each run's first evaluation, averaged) at those steps."""
    runs = [r for r in runs if r.history.get(names.VAL_LOSS)]
    if not runs:
        return None
    tables = [{s: (v, t) for s, v, t in r.history[names.VAL_LOSS]} for r in runs]
    steps = sorted(set.intersection(*(set(t) for t in tables)))
    if not steps:
        return None
    firsts = [min(t.values(), key=lambda vt: vt[1])[1] for t in tables]
    curve = {
        "steps": [float(s) for s in steps],
        "loss": [math.fsum(t[s][0] for t in tables) / len(tables) for s in steps],
        "seconds": [math.fsum((t[s][1] - first) / 1000 for t, first in zip(tables, firsts, strict=True))
                    / len(tables) for s in steps],
    }
    if all(r.history.get(names.TOKENS) for r in runs):
        curve["tokens"] = tokens_at(steps, runs[0].history[names.TOKENS])
        params = runs[0].metrics.get(names.PARAMS)
        if params:
            curve["flops"] = [6.0 * params * x for x in curve["tokens"]]
    return curve


def to_target(selected: Sequence[Summary], target: float, baseline: str | None = None) -> list[ToTarget]:
    """Where each method's mean curve (over its seeds) first reaches ``target``, linear between evaluations;
    how many seeds reach it on their own beside it."""
    rows = []
    for s in selected:
        runs = [r for r in s.cell.stats_runs if final_loss(r) < math.inf]
        reached = sum(
            stats.first_crossing([st for st, _, _ in r.history.get(names.VAL_LOSS, [])],
                                 [v for _, v, _ in r.history.get(names.VAL_LOSS, [])], target) is not None
            for r in runs)
        curve = mean_curve(runs)
        at = {}
        if curve is not None:
            at = {key: stats.first_crossing(xs, curve["loss"], target) for key, xs in curve.items() if key != "loss"}
        rows.append(ToTarget(s.method, s.model, target, reached, len(s.cell.stats_runs),
                             tokens=at.get("tokens"), steps=at.get("steps"), flops=at.get("flops"),
                             seconds=at.get("seconds")))
    if baseline:
        bases = {r.model: r for r in rows if r.method == baseline}
        for row in rows:
            base = bases.get(row.model)
            if base and base.tokens and row.tokens:
                row.speedup = base.tokens / row.tokens
    return rows
