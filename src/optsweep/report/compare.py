"""``python -m optsweep.report compare``: from the runs in an MLflow store to a comparison you can trust.

Runs that differ only in their seed form a cell. Per method x model the best configuration (lowest mean final
validation loss over its seeds; ``--select``) stands for the method, with a 95% t-interval over its seeds; when
that configuration won a sweep and was replicated (the sweeper's ``replicates``), the interval comes from the
replicate seeds only. Beside it: Welch tests against ``--baseline`` (Holm-corrected; not significant is a tie),
lr sensitivity and robustness, the expected best after k trials, a fairness table, and speed to a target loss.

The report folder gets ``report.md``, one CSV per table (``cells.csv`` holds the intervals) and the PNGs; they
are logged as artifacts of a report run (tag ``optsweep.summary=true``, skipped by later reports) in the runs'
experiment, with each method's numbers as metrics, and of the sweep's parent run when every compared run is a
trial of one sweep.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from optsweep import metric_names as names
from optsweep.report import cells as cells_module
from optsweep.report import queries, tables
from optsweep.report.queries import DEFAULT_STATUSES, NoRunsError, RunRecord

SUMMARY_TAG = queries.SUMMARY_TAG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", action="append", metavar="NAME",
                        help="MLflow experiment (repeatable; default: every experiment), e.g. quickstart")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs with this tag value (repeatable, all must hold), e.g. data=sample")
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="keep only these models (tag model; repeatable), e.g. llama_tiny")
    parser.add_argument("--optimizer", "--method", action="append", metavar="NAME",
                        help="keep only these methods (tag method, else optimizer; repeatable)")
    parser.add_argument("--status", nargs="+", default=list(DEFAULT_STATUSES), metavar="STATUS",
                        help="statuses of the runs a cell's interval is made of (default FINISHED; diverged "
                        "runs are always counted as such; e.g. --status FINISHED RUNNING, or ALL)")
    parser.add_argument("--select", choices=("best", "latest", "all"), default="best",
                        help="which configuration stands for a method x model: the lowest mean final val "
                        "loss over its seeds (default), the one holding the latest run, or every one")
    parser.add_argument("--baseline", metavar="METHOD",
                        help="compare every method with this one: Welch's test (Holm-corrected), speedup to target")
    parser.add_argument("--target-loss", type=float, metavar="LOSS",
                        help="val loss the to-target table measures (default: the baseline's final mean loss, "
                        "else the worst final mean loss among the selected methods)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="lr robustness: the lr width within this relative distance of the best loss (0.02)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence of the intervals (0.95)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm (0.05)")
    parser.add_argument("--ppl", choices=("token", "paper"), default="token",
                        help="perplexity on the Pareto plot: token-weighted (val/ppl) or the paper's estimator")
    parser.add_argument("--tracking-uri",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///$PROJECT_ROOT or <repo>/outputs/mlflow.db)")
    parser.add_argument("--out", help="output folder (default: <repo>/outputs/reports/<timestamp>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no PNGs)")
    parser.add_argument("--list", action="store_true", help="list experiments and their runs, then stop")


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--tag '{pair}' is not KEY=VALUE (e.g. --tag data=sample)")
        key, value = pair.split("=", 1)
        tags[key.strip()] = value.strip()
    return tags


@dataclass
class Report:
    out: Path
    summaries: list[cells_module.Summary]
    pairwise: list[cells_module.Pairwise]
    sensitivity: list[cells_module.Sensitivity]
    budget: list[cells_module.Budget]
    fairness: list[cells_module.Fairness]
    to_target: list[cells_module.ToTarget]
    files: list[Path]
    summary_run_id: str | None
    notes: list[str]
    markdown: str


def _check_options(confidence: float, alpha: float, tolerance: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"--confidence {confidence} must lie between 0 and 1: use e.g. --confidence 0.95")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha {alpha} must lie between 0 and 1: use e.g. --alpha 0.05")
    if tolerance < 0:
        raise ValueError(f"--tolerance {tolerance} must be >= 0: use e.g. --tolerance 0.02")


def _filter(records: list[RunRecord], models, methods, tracking_uri: str) -> list[RunRecord]:
    for what, wanted, value in (("model", models, lambda r: r.model), ("method", methods, lambda r: r.method)):
        if wanted:
            kept = [r for r in records if value(r) in set(wanted)]
            if not kept:
                seen = ", ".join(sorted({value(r) for r in records}))
                raise NoRunsError(f"no matching run has {what} {' or '.join(wanted)} ({what}s seen: {seen}); "
                                  f"{queries.listing(tracking_uri)}")
            records = kept
    return records


def build_report(tracking_uri: str | None = None, experiments: Sequence[str] | None = None,
                 tags: dict[str, str] | None = None, optimizers: Sequence[str] | None = None,
                 models: Sequence[str] | None = None, statuses: Sequence[str] = DEFAULT_STATUSES,
                 select: str = "best", ppl: str = "token", out: Path | None = None, log: bool = True,
                 baseline: str | None = None, target_loss: float | None = None, tolerance: float = 0.02,
                 confidence: float = 0.95, alpha: float = 0.05, plots: bool = True) -> Report:
    _check_options(confidence, alpha, tolerance)
    tracking_uri = tracking_uri or queries.default_tracking_uri()
    client = queries.client_for(tracking_uri)
    tags = dict(tags or {})
    records, notes = queries.find_runs(client, experiments, tags, tracking_uri)
    records = _filter(records, models, optimizers, tracking_uri)

    every = any(s.upper() == "ALL" for s in statuses)
    wanted = {s.upper() for s in statuses} | {"FAILED"}  # a diverged seed is a result, not noise
    kept = records if every else [r for r in records if r.status in wanted]
    left = [r for r in records if r not in kept]
    if left:
        notes.append(f"left out {len(left)} run(s) not {'/'.join(sorted(wanted))}: "
                     f"{queries.counts(r.status for r in left)}")
    if not kept:
        raise NoRunsError(f"{len(records)} run(s) match but none is {'/'.join(sorted(wanted))} "
                          f"({queries.counts(r.status for r in records)}); pass e.g. --status FINISHED RUNNING, "
                          f"or {queries.listing(tracking_uri)}")
    all_cells = cells_module.group_cells(kept)
    chosen = cells_module.select_cells(all_cells, select)
    for cell, _ in chosen:
        for run in cell.runs:
            queries.load_history(client, run, (names.VAL_LOSS, names.TOKENS, names.THROUGHPUT))
    summaries = [cells_module.summarize(cell, configs, confidence) for cell, configs in chosen]
    summaries.sort(key=lambda s: (s.extras["params"] or 0, s.model, s.loss.mean if s.loss else math.inf))
    pairs = cells_module.pairwise(summaries, baseline, alpha) if baseline else []
    sensitivity = cells_module.sensitivity(all_cells, tolerance)
    budget = cells_module.tuning_budget(all_cells)
    fairness = cells_module.fairness(all_cells, summaries)
    target, target_source = _target(summaries, baseline, target_loss)
    to_target = cells_module.to_target(summaries, target, baseline) if target is not None else []

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out else queries.project_root() / "outputs" / "reports" / stamp
    out.mkdir(parents=True, exist_ok=True)
    experiments_seen = sorted({r.experiment for s in summaries for r in s.cell.runs})
    title = ", ".join(experiments_seen) + (f" ({', '.join(f'{k}={v}' for k, v in tags.items())})" if tags else "")
    files = [
        tables.write_csv(out / "cells.csv", tables.CELL_COLUMNS, tables.cell_rows(summaries)),
        tables.write_csv(out / "runs.csv", tables.RUN_COLUMNS, tables.run_rows(summaries)),
        tables.write_csv(out / "sensitivity.csv", tables.SENSITIVITY_COLUMNS, tables.sensitivity_rows(sensitivity)),
        tables.write_csv(out / "tuning_budget.csv", *tables.budget_rows(budget)),
        tables.write_csv(out / "fairness.csv", tables.FAIRNESS_COLUMNS, tables.fairness_rows(fairness)),
    ]
    if pairs:
        files.append(tables.write_csv(out / "pairwise.csv", tables.PAIRWISE_COLUMNS, tables.pairwise_rows(pairs)))
    if to_target:
        files.append(tables.write_csv(out / "to_target.csv", tables.TARGET_COLUMNS, tables.target_rows(to_target)))
    plot_files = []
    if plots:
        from optsweep.report.plots import write_figures

        plot_files, plot_notes = write_figures(summaries, sensitivity, out, ppl, title)
        files += plot_files
        notes += plot_notes

    text = _markdown(title, tracking_uri, experiments_seen, tags, models, optimizers, statuses, select, summaries,
                     pairs, sensitivity, budget, fairness, to_target, target_source, baseline, confidence,
                     tolerance, alpha, plot_files, notes)
    (out / "report.md").write_text(text)
    files.insert(0, out / "report.md")

    summary = None
    if log:
        from optsweep.report.publish import publish

        summary = publish(client, summaries, pairs, sensitivity, to_target, out, experiments,
                          {"tracking_uri": tracking_uri, "experiments": ",".join(experiments_seen),
                           "tags": ",".join(f"{k}={v}" for k, v in tags.items()), "select": select,
                           "baseline": baseline or "", "statuses": "/".join(statuses)})
    return Report(out, summaries, pairs, sensitivity, budget, fairness, to_target, files, summary, notes, text)


def _target(summaries, baseline, target_loss) -> tuple[float | None, str]:
    if target_loss is not None:
        return target_loss, f"the given target, {target_loss:g}"
    finished = [s for s in summaries if s.loss]
    if baseline:
        base = [s for s in finished if s.method == baseline]
        if base:
            return base[0].loss.mean, f"{baseline}'s final mean val loss, {base[0].loss.mean:.4f}"
    if finished:
        worst = max(finished, key=lambda s: s.loss.mean)
        return worst.loss.mean, (f"the worst final mean val loss among the methods ({worst.method}, "
                                 f"{worst.loss.mean:.4f}): every method reaches it")
    return None, ""


def _markdown(title, tracking_uri, experiments_seen, tags, models, optimizers, statuses, select, summaries,
              pairs, sensitivity, budget, fairness, to_target, target_source, baseline, confidence, tolerance,
              alpha, plot_files, notes) -> str:
    statuses_text = "any status" if any(s.upper() == "ALL" for s in statuses) else "/".join(statuses)
    rule = {"best": "the configuration with the lowest mean final val loss over its seeds",
            "latest": "the configuration holding the latest run", "all": "every configuration"}[select]
    lines = [
        f"# Comparison: {title}", "",
        f"- MLflow store: `{tracking_uri}`; experiment(s): {', '.join(experiments_seen)}",
        f"- filters: {', '.join(f'{k}={v}' for k, v in tags.items()) or 'none'}"
        + (f"; models {', '.join(models)}" if models else "") + (f"; methods {', '.join(optimizers)}" if optimizers else "")
        + f"; runs {statuses_text} (diverged runs counted as such)",
        "- a cell is the runs that differ only in their seed; per method x model: " + rule,
        (f"- interval: {confidence:.0%} t-interval of the mean final val loss over the cell's seeds, mean ± "
        "t(n−1)·s/√n; 'interval from' says which seeds (a sweep's winner: its replicate seeds, not the trial "
        "that won)"),
        f"- written {dt.datetime.now().isoformat(timespec='seconds')}", "",
        "## Final validation loss per method", "", tables.cells_markdown(summaries, confidence), "",
    ]
    if pairs:
        lines += [f"## Against {baseline}", "",
                  (f"Welch's t-test per pair on the seeds' final losses, Holm-corrected over the {len(pairs)} "
                  f"pair(s) at α = {alpha:g}; not significant after correction is a tie."), "",
                  tables.pairwise_markdown(pairs), ""]
    if to_target:
        lines += ["## Speed to a target loss", "",
                  f"Target: {target_source}. The val-loss curve is interpolated linearly between evaluations to "
                  "its first crossing, on the seeds' mean curve ('—': it never reaches the target; 'seeds "
                  "reaching it' counts each seed's own curve); FLOPs = 6 × parameters × tokens; seconds from the "
                  "first evaluation."
                  + (f" Speedup = {baseline}'s tokens / the method's tokens." if baseline else ""), "",
                  tables.target_markdown(to_target), ""]
    lines += ["## Learning-rate sensitivity", "",
              (f"Every finished or diverged run; per lr the best configuration's mean loss. Robustness: the width "
              f"in decades of the contiguous lr range around the best whose loss is within {tolerance:.0%} of it."),
              "", tables.sensitivity_markdown(sensitivity), "",
              "## Tuning budget", "",
              ("Expected best final loss after k trials drawn without replacement from each method's trials "
              "(exact order statistics; a diverged trial counts as +inf; replicates are not trials)."), "",
              tables.budget_markdown(budget), "",
              "## Fairness", "",
              ("Equal budgets and the lr range searched; a best lr (or another optimizer value the search varied, "
               "such as a second lr) on the edge of the range means the optimum "
              "may lie outside it."), "", tables.fairness_markdown(fairness), ""]
    for path in plot_files:
        lines += [f"![{path.stem}]({path.name})", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    tracking_uri = args.tracking_uri or queries.default_tracking_uri()
    if args.list:
        print(queries.list_store(queries.client_for(tracking_uri), tracking_uri))
        return 0
    report = build_report(
        tracking_uri=tracking_uri, experiments=args.experiment, tags=parse_tags(args.tag),
        optimizers=args.optimizer, models=args.model, statuses=args.status, select=args.select, ppl=args.ppl,
        out=Path(args.out) if args.out else None, log=not args.no_log, baseline=args.baseline,
        target_loss=args.target_loss, tolerance=args.tolerance, confidence=args.confidence, alpha=args.alpha,
        plots=not args.no_plots)
    print(tables.cells_markdown(report.summaries, args.confidence))
    if report.pairwise:
        print()
        print(tables.pairwise_markdown(report.pairwise))
    for note in report.notes:
        print(f"note: {note}")
    print(f"report: {report.out / 'report.md'}")
    for path in report.files[1:]:
        print(f"        {path}")
    if report.summary_run_id:
        print(f"logged to MLflow report run {report.summary_run_id}")
    return 0


