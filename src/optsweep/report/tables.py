"""The report's tables, as markdown (report.md, the terminal) and as CSV files (one per table)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from optsweep import metric_names
from optsweep.report.cells import Budget, Fairness, Pairwise, Sensitivity, Summary, ToTarget, final_loss


def fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "diverged"
    return format(value, spec)


def count(value: float | None) -> str:
    """250k, 1.50M, 2.00B."""
    if value is None:
        return "—"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def memory_unit(largest_bytes: float) -> tuple[str, float]:
    """GB for the paper's sizes; MB when everything is under 0.1 GB (tiny CPU models)."""
    return ("GB", 1e9) if largest_bytes >= 1e8 else ("MB", 1e6)


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    return path


# ------------------------------------------------------------------------------------------------ cells
CELL_COLUMNS = (
    "method", "model", "n_seeds", "val_loss_mean", "val_loss_ci_low", "val_loss_ci_high", "val_loss_std",
    "val_ppl_mean", "val_ppl_ci_low", "val_ppl_ci_high", "val_ppl_paper_mean", "n_diverged", "interval_from",
    "lr", "configs_tried", "seeds", "steps", "tokens", "tokens_nonpad", "optimizer_state_bytes",
    "model_optimizer_bytes", "peak_bytes", "tokens_per_s", "params", "run_ids",
)


def cell_rows(summaries: Sequence[Summary]) -> list[list[object]]:
    rows = []
    for s in summaries:
        loss, ppl, x = s.loss, s.ppl, s.extras
        rows.append([
            s.method, s.model, loss.n if loss else 0, loss.mean if loss else None, loss and loss.low,
            loss and loss.high, loss and loss.std, ppl.mean if ppl else None, ppl and ppl.low, ppl and ppl.high,
            x["val_ppl_paper"], s.n_diverged, s.interval_from, s.cell.lr, s.configs, " ".join(s.cell.seeds),
            x["steps"], x["tokens"], x["tokens_nonpad"], x["state_bytes"], x["model_optimizer_bytes"],
            x["peak_bytes"], x["tokens_per_s"], x["params"], " ".join(r.run_id for r in s.cell.stats_runs),
        ])
    return rows


def cells_markdown(summaries: Sequence[Summary], confidence: float = 0.95) -> str:
    unit, scale = memory_unit(max((s.extras["model_optimizer_bytes"] or 0) for s in summaries) if summaries else 0)
    pct = f"{confidence:.0%}"
    header = ["method", "model", "lr", "seeds", "val loss (mean)", f"{pct} CI", "val ppl (mean)", f"ppl {pct} CI",
              "diverged", "interval from", "configs tried", "tokens", f"model + optimizer ({unit})", "tokens/s"]
    rows = []
    for s in summaries:
        loss, ppl = s.loss, s.ppl
        rows.append([
            s.method, s.model, fmt(s.cell.lr, ".3g"), str(loss.n if loss else 0), fmt(loss and loss.mean, ".4f"),
            "—" if not loss or loss.low is None else f"[{loss.low:.4f}, {loss.high:.4f}]",
            fmt(ppl and ppl.mean, ".2f"),
            "—" if not ppl or ppl.low is None else f"[{ppl.low:.2f}, {ppl.high:.2f}]",
            str(s.n_diverged), s.interval_from, str(s.configs), count(s.extras["tokens"]),
            fmt(None if s.extras["model_optimizer_bytes"] is None else s.extras["model_optimizer_bytes"] / scale,
                ".3f"),
            fmt(s.extras["tokens_per_s"], ",.0f"),
        ])
    return markdown(header, rows)


RUN_COLUMNS = ("method", "model", "seed", "status", "replicate", "lr", "val_loss", "val_ppl", "val_ppl_paper",
               "run_id", "run_name", "experiment")


def run_rows(summaries: Sequence[Summary]) -> list[list[object]]:
    """Every run behind the selected cells, one per seed (the numbers the intervals are made of)."""
    rows = []
    for s in summaries:
        for r in s.cell.runs:
            loss = final_loss(r)
            rows.append([s.method, s.model, r.seed, r.status, r.is_replicate, r.lr,
                         r.metrics.get(metric_names.VAL_LOSS) if loss < math.inf else "inf",
                         r.metrics.get(metric_names.VAL_PPL), r.metrics.get(metric_names.VAL_PPL_PAPER), r.run_id,
                         r.run_name, r.experiment])
    return rows


# ------------------------------------------------------------------------------------------ the other tables
PAIRWISE_COLUMNS = ("method", "model", "baseline", "loss_difference", "p_welch", "p_holm", "verdict")


def pairwise_rows(rows: Sequence[Pairwise]) -> list[list[object]]:
    return [[r.method, r.model, r.baseline, r.difference, r.p, r.p_holm, r.verdict] for r in rows]


def pairwise_markdown(rows: Sequence[Pairwise]) -> str:
    return markdown(
        ["method", "model", "baseline", "Δ val loss (method − baseline)", "Welch p", "Holm p", "verdict"],
        [[r.method, r.model, r.baseline, fmt(r.difference, "+.4f"), fmt(r.p, ".3g"), fmt(r.p_holm, ".3g"),
          r.verdict] for r in rows])


SENSITIVITY_COLUMNS = ("method", "model", "runs", "distinct_lrs", "robustness_decades", "tolerance",
                       "divergence_rate", "best_lr", "best_mean_loss")


def sensitivity_rows(rows: Sequence[Sensitivity]) -> list[list[object]]:
    out = []
    for r in rows:
        best_lr, best = min(r.profile, key=lambda t: t[1])
        out.append([r.method, r.model, len(r.points), len(r.profile), r.robustness_decades, r.tolerance,
                    r.divergence_rate, best_lr, best if math.isfinite(best) else "inf"])
    return out


def sensitivity_markdown(rows: Sequence[Sensitivity]) -> str:
    table = []
    for r in rows:
        best_lr, best = min(r.profile, key=lambda t: t[1])
        table.append([r.method, r.model, str(len(r.points)), str(len(r.profile)), fmt(best_lr, ".3g"),
                      fmt(best, ".4f"), f"{r.robustness_decades:.2f}", f"{r.divergence_rate:.0%}"])
    tol = f"{rows[0].tolerance:.0%}" if rows else "2%"
    return markdown(["method", "model", "runs", "lrs tried", "best lr", "best mean loss",
                     f"decades of lr within {tol} of best", "diverged"], table)


def budget_ks(rows: Sequence[Budget]) -> list[int]:
    return sorted({k for r in rows for k in r.expected})


def budget_rows(rows: Sequence[Budget]) -> tuple[list[str], list[list[object]]]:
    ks = budget_ks(rows)
    header = ["method", "model", "trials", *(f"expected_best_of_{k}" for k in ks)]
    return header, [[r.method, r.model, len(r.losses), *(r.expected.get(k) for k in ks)] for r in rows]


def budget_markdown(rows: Sequence[Budget]) -> str:
    ks = budget_ks(rows)
    return markdown(["method", "model", "trials", *(f"k = {k}" for k in ks)],
                    [[r.method, r.model, str(len(r.losses)), *(fmt(r.expected.get(k), ".4f") for k in ks)]
                     for r in rows])


FAIRNESS_COLUMNS = ("method", "model", "trials", "configs", "lr_low", "lr_high", "distinct_lrs", "seeds",
                    "best_lr", "best_lr_on_edge", "other_values_on_edge")


def fairness_rows(rows: Sequence[Fairness]) -> list[list[object]]:
    return [[r.method, r.model, r.trials, r.configs, r.lr_low, r.lr_high, r.distinct_lrs, r.seeds, r.best_lr,
             r.best_on_edge, "; ".join(r.other_edges)] for r in rows]


def fairness_markdown(rows: Sequence[Fairness]) -> str:
    def edge(r: Fairness) -> str:
        if r.distinct_lrs <= 1:
            return "not tuned (one lr)"
        return "**yes: undertuned?** widen the range" if r.best_on_edge else "no"

    return markdown(
        ["method", "model", "trials", "configs", "lr searched", "lrs", "seeds behind the CI", "best lr",
         "best lr on the edge", "other tuned values on the edge"],
        [[r.method, r.model, str(r.trials), str(r.configs),
          "—" if r.lr_low is None else f"[{r.lr_low:.3g}, {r.lr_high:.3g}]", str(r.distinct_lrs), str(r.seeds),
          fmt(r.best_lr, ".3g"), edge(r),
          "**" + "; ".join(r.other_edges) + "**: widen" if r.other_edges else "no"] for r in rows])


TARGET_COLUMNS = ("method", "model", "target_loss", "seeds_reached", "seeds", "tokens", "steps", "flops",
                  "seconds", "speedup_tokens")


def target_rows(rows: Sequence[ToTarget]) -> list[list[object]]:
    return [[r.method, r.model, r.target, r.reached, r.seeds, r.tokens, r.steps, r.flops, r.seconds, r.speedup]
            for r in rows]


def target_markdown(rows: Sequence[ToTarget]) -> str:
    return markdown(
        ["method", "model", "target val loss", "seeds reaching it", "tokens", "steps", "FLOPs (6ND)",
         "seconds", "speedup (baseline tokens / tokens)"],
        [[r.method, r.model, f"{r.target:.4f}", f"{r.reached}/{r.seeds}", count(r.tokens), fmt(r.steps, ".0f"),
          fmt(r.flops, ".3g"), fmt(r.seconds, ".1f"), fmt(r.speedup, ".2f")] for r in rows])
