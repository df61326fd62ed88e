"""Compare training runs from the MLflow store: one table, a perplexity-vs-memory Pareto plot, loss curves.

Runs are read as training logs them (optsweep.tracking and the LightningModule): tags ``optimizer``,
``model``, ``data``, ``strategy``, ``seed``; metrics ``val/loss``, ``val/ppl`` (token-weighted),
``val/ppl_paper`` (the paper's estimator), ``tokens/seen``, ``tokens/seen_nonpad``,
``throughput/tokens_per_s``, ``optimizer/state_bytes``, ``memory/model_optimizer_bytes``,
``memory/peak_bytes``, ``model/params``, each at step = optimizer step.

One run stands for each optimizer x model: the latest FINISHED one by default (``--select best``: the one
with the lowest final validation perplexity). The report folder gets ``report.md``, ``runs.csv``,
``pareto.png`` and ``val_loss.png``; they are also logged as artifacts of a summary run (tag
``optsweep.summary=true``) in the runs' experiment, which later reports skip.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optsweep.report import repo_root

VAL_LOSS = "val/loss"
VAL_PPL = "val/ppl"
VAL_PPL_PAPER = "val/ppl_paper"
TOKENS = "tokens/seen"
TOKENS_NONPAD = "tokens/seen_nonpad"
THROUGHPUT = "throughput/tokens_per_s"
STATE_BYTES = "optimizer/state_bytes"
MODEL_OPTIMIZER_BYTES = "memory/model_optimizer_bytes"
PEAK_BYTES = "memory/peak_bytes"
PARAMS = "model/params"
SUMMARY_TAG = "optsweep.summary"
DEFAULT_STATUSES = ("FINISHED",)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the store training writes to: ``sqlite:///<repo>/outputs/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'outputs' / 'mlflow.db'}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experiment",
        action="append",
        metavar="NAME",
        help="MLflow experiment (repeatable; default: every experiment), e.g. quickstart",
    )
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs with this tag value (repeatable, all must hold), e.g. data=sample",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="keep only these models (tag model; repeatable), e.g. llama_tiny",
    )
    parser.add_argument(
        "--optimizer",
        action="append",
        metavar="NAME",
        help="keep only these optimizers (tag optimizer; repeatable)",
    )
    parser.add_argument(
        "--status",
        nargs="+",
        default=list(DEFAULT_STATUSES),
        metavar="STATUS",
        help="run statuses kept (default FINISHED; e.g. --status FINISHED RUNNING, or ALL)",
    )
    parser.add_argument(
        "--select",
        choices=("latest", "best"),
        default="latest",
        help="which run stands for an optimizer x model: the latest, or the lowest perplexity "
        "(after a sweep, 'best' picks the best trial)",
    )
    parser.add_argument(
        "--ppl",
        choices=("token", "paper"),
        default="token",
        help="perplexity shown and plotted: token-weighted (val/ppl) or the paper's estimator "
        "(val/ppl_paper)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/outputs/mlflow.db)",
    )
    parser.add_argument("--out", help="output folder (default: <repo>/outputs/reports/<timestamp>)")
    parser.add_argument("--no-log", action="store_true", help="do not log a summary run to MLflow")
    parser.add_argument("--list", action="store_true", help="list experiments and their runs, then stop")


# ----------------------------------------------------------------------------------------------- runs
@dataclass
class RunRecord:
    run_id: str
    run_name: str
    experiment_id: str
    experiment: str
    status: str
    start_time: int
    tags: dict[str, str]
    metrics: dict[str, float]  # final values (MLflow's latest: the largest step)
    lr: float | None = None  # the configured peak learning rate (param optimizer.lr)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (step, value), by step

    @property
    def optimizer(self) -> str:
        """The optimizer as the report names it: the ``method`` tag (SCALE's ablation variants each have
        their own, e.g. ``sgd+sign``), else the ``optimizer`` tag (runs logged before the method tag)."""
        return self.tags.get("method") or self.tags.get("optimizer", "?")

    @property
    def model(self) -> str:
        return self.tags.get("model", "?")


class NoRunsError(LookupError):
    pass


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():  # MLflow would silently create an empty store
            raise NoRunsError(
                f"no MLflow store at {path}: train first (python run.py experiment=quickstart) or "
                f"pass --tracking-uri"
            )
    return MlflowClient(tracking_uri=tracking_uri)


def _experiments(client, names: Sequence[str] | None, tracking_uri: str) -> list:
    if not names:
        return list(client.search_experiments())
    found = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise NoRunsError(
                f"no experiment named '{name}' in {tracking_uri} (experiments: {known}); list them "
                f"with: python -m optsweep.report compare --list --tracking-uri {tracking_uri}"
            )
        found.append(experiment)
    return found


def _all_runs(client, experiments: list) -> list:
    runs, token = [], None
    ids = [e.experiment_id for e in experiments]
    while ids:
        page = client.search_runs(ids, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [r for r in runs if r.data.tags.get(SUMMARY_TAG) != "true"]


def _record(run, experiment_names: dict[str, str]) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id[:8],
        experiment_id=run.info.experiment_id,
        experiment=experiment_names[run.info.experiment_id],
        status=run.info.status,
        start_time=run.info.start_time or 0,
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        lr=_number(run.data.params.get("optimizer.lr")),
    )


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def find_runs(
    client,
    experiment_names: Sequence[str] | None,
    tags: dict[str, str],
    statuses: Sequence[str],
    tracking_uri: str,
) -> tuple[list[RunRecord], list[str]]:
    """Runs passing every filter, and notes on what the filters left out.

    Raises NoRunsError naming the first filter that left nothing.
    """
    experiments = _experiments(client, experiment_names, tracking_uri)
    where = ", ".join(f"'{e.name}'" for e in experiments)
    names = {e.experiment_id: e.name for e in experiments}
    listing = (
        f"list experiments and runs with: python -m optsweep.report compare --list "
        f"--tracking-uri {tracking_uri}"
    )
    runs = [_record(r, names) for r in _all_runs(client, experiments)]
    if not runs:
        raise NoRunsError(f"experiment(s) {where} hold no runs in {tracking_uri}; {listing}")
    for key, value in tags.items():
        kept = [r for r in runs if r.tags.get(key) == value]
        if not kept:
            seen = ", ".join(sorted({r.tags[key] for r in runs if key in r.tags})) or "none"
            raise NoRunsError(f"no run in {where} has tag {key}={value} (values seen: {seen}); {listing}")
        runs = kept
    notes = []
    if not any(s.upper() == "ALL" for s in statuses):
        wanted = {s.upper() for s in statuses}
        left = [r for r in runs if r.status not in wanted]
        runs = [r for r in runs if r.status in wanted]
        if left:
            counts = _counts(r.status for r in left)
            notes.append(f"skipped {len(left)} run(s) not {'/'.join(sorted(wanted))}: {counts}")
        if not runs:
            raise NoRunsError(
                f"{len(left)} run(s) match in {where} but none is {'/'.join(sorted(wanted))} "
                f"({_counts(r.status for r in left)}); pass e.g. --status FINISHED RUNNING, "
                f"or {listing}"
            )
    untagged = [r for r in runs if "optimizer" not in r.tags or "model" not in r.tags]
    if untagged:  # e.g. the parent run of a sweep: its trials are the runs to compare
        runs = [r for r in runs if r not in untagged]
        notes.append(
            f"skipped {len(untagged)} run(s) without optimizer/model tags (sweep parents?): "
            + ", ".join(r.run_name for r in untagged[:5])
            + (" ..." if len(untagged) > 5 else "")
        )
        if not runs:
            raise NoRunsError(
                f"the runs matching in {where} carry no optimizer/model tags (not training runs of "
                f"this project?); {listing}"
            )
    return runs, notes


def _counts(values) -> str:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))


def load_history(client, record: RunRecord, keys: Sequence[str]) -> None:
    for key in keys:
        if key in record.metrics:
            points = client.get_metric_history(record.run_id, key)
            record.history[key] = sorted((m.step, m.value) for m in points)


def select_runs(records: Sequence[RunRecord], how: str, ppl_key: str) -> list[tuple[RunRecord, int]]:
    """One run per optimizer x model: the latest started, or the lowest final perplexity; with its count."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.optimizer, record.model), []).append(record)
    chosen = []
    for group in groups.values():
        if how == "best":
            scored = [r for r in group if ppl_key in r.metrics] or group
            pick = min(scored, key=lambda r: (r.metrics.get(ppl_key, float("inf")), -r.start_time))
        else:
            pick = max(group, key=lambda r: r.start_time)
        chosen.append((pick, len(group)))
    return chosen


# ---------------------------------------------------------------------------------------------- table
@dataclass
class Row:
    optimizer: str
    model: str
    lr: float | None
    val_ppl: float | None
    val_ppl_paper: float | None
    val_loss: float | None
    steps: int | None
    tokens: float | None
    tokens_nonpad: float | None
    state_bytes: float | None
    model_optimizer_bytes: float | None
    peak_bytes: float | None
    tokens_per_s: float | None
    params: float | None
    runs: int
    run_id: str
    run_name: str
    experiment: str


def table_rows(selected: Sequence[tuple[RunRecord, int]]) -> list[Row]:
    rows = []
    for record, count in selected:
        m = record.metrics
        throughput = [v for _, v in record.history.get(THROUGHPUT, [])]
        val = record.history.get(VAL_LOSS, [])
        rows.append(
            Row(
                optimizer=record.optimizer,
                model=record.model,
                lr=record.lr,
                val_ppl=m.get(VAL_PPL),
                val_ppl_paper=m.get(VAL_PPL_PAPER),
                val_loss=m.get(VAL_LOSS),
                steps=val[-1][0] if val else None,
                tokens=m.get(TOKENS),
                tokens_nonpad=m.get(TOKENS_NONPAD),
                state_bytes=m.get(STATE_BYTES),
                model_optimizer_bytes=m.get(MODEL_OPTIMIZER_BYTES),
                peak_bytes=m.get(PEAK_BYTES),
                # the median over the run: the first steps (compilation, warm caches) do not drag it down
                tokens_per_s=statistics.median(throughput) if throughput else m.get(THROUGHPUT),
                params=m.get(PARAMS),
                runs=count,
                run_id=record.run_id,
                run_name=record.run_name,
                experiment=record.experiment,
            )
        )
    rows.sort(key=lambda r: (r.params or 0, r.model, _or_inf(r.val_ppl)))
    return rows


def _or_inf(value: float | None) -> float:
    return float("inf") if value is None else value


def memory_unit(rows: Sequence[Row]) -> tuple[str, float]:
    from optsweep.report.plots import memory_unit as unit_for

    return unit_for(max((r.model_optimizer_bytes or 0) for r in rows) if rows else 0)


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _tokens(value: float | None) -> str:
    if value is None:
        return "—"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def render_markdown_table(rows: Sequence[Row], ppl_key: str) -> str:
    unit, scale = memory_unit(rows)
    main_ppl = "val ppl (paper est.)" if ppl_key == VAL_PPL_PAPER else "val ppl"
    other_ppl = "val ppl" if ppl_key == VAL_PPL_PAPER else "val ppl (paper est.)"
    header = [
        "optimizer",
        "model",
        "lr",
        main_ppl,
        other_ppl,
        "val loss",
        "steps",
        "tokens",
        "non-pad tokens",
        f"optimizer state ({unit})",
        f"model + optimizer ({unit})",
        f"peak ({unit})",
        "tokens/s",
        "runs",
        "run",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        main, other = (
            (r.val_ppl_paper, r.val_ppl) if ppl_key == VAL_PPL_PAPER else (r.val_ppl, r.val_ppl_paper)
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r.optimizer,
                    r.model,
                    _fmt(r.lr, ".3g"),
                    _fmt(main, ".2f"),
                    _fmt(other, ".2f"),
                    _fmt(r.val_loss, ".4f"),
                    _fmt(r.steps, "d"),
                    _tokens(r.tokens),
                    _tokens(r.tokens_nonpad),
                    _fmt(None if r.state_bytes is None else r.state_bytes / scale, ".3f"),
                    _fmt(None if r.model_optimizer_bytes is None else r.model_optimizer_bytes / scale, ".3f"),
                    _fmt(None if r.peak_bytes is None else r.peak_bytes / scale, ".3f"),
                    _fmt(r.tokens_per_s, ",.0f"),
                    str(r.runs),
                    f"{r.run_name} ({r.run_id[:8]})",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "optimizer",
    "model",
    "lr",
    "val_ppl",
    "val_ppl_paper",
    "val_loss",
    "steps",
    "tokens",
    "tokens_nonpad",
    "optimizer_state_gb",
    "model_optimizer_gb",
    "peak_gb",
    "tokens_per_s",
    "params",
    "runs",
    "run_id",
    "run_name",
    "experiment",
)


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "optimizer": r.optimizer,
                    "model": r.model,
                    "lr": r.lr,
                    "val_ppl": r.val_ppl,
                    "val_ppl_paper": r.val_ppl_paper,
                    "val_loss": r.val_loss,
                    "steps": r.steps,
                    "tokens": r.tokens,
                    "tokens_nonpad": r.tokens_nonpad,
                    "optimizer_state_gb": _gb(r.state_bytes),
                    "model_optimizer_gb": _gb(r.model_optimizer_bytes),
                    "peak_gb": _gb(r.peak_bytes),
                    "tokens_per_s": r.tokens_per_s,
                    "params": r.params,
                    "runs": r.runs,
                    "run_id": r.run_id,
                    "run_name": r.run_name,
                    "experiment": r.experiment,
                }
            )
    return path


def _gb(value: float | None) -> float | None:
    return None if value is None else value / 1e9


# ---------------------------------------------------------------------------------------------- plots
def tokens_at(steps: Sequence[int], tokens_history: Sequence[tuple[int, float]]) -> list[float]:
    """Tokens seen at each step, read off the logged ``tokens/seen`` (linear in between; 0 at step 0)."""
    import numpy as np

    known = list(tokens_history)
    if known[0][0] > 0:
        known.insert(0, (0, 0.0))
    xs = np.array([s for s, _ in known], dtype=float)
    ys = np.array([t for _, t in known], dtype=float)
    per_step = ys[-1] / xs[-1] if xs[-1] > 0 else 0.0
    return [float(np.interp(s, xs, ys)) if s <= xs[-1] else float(s * per_step) for s in steps]


def write_plots(
    rows: Sequence[Row], selected: Sequence[tuple[RunRecord, int]], out: Path, ppl_key: str, title: str
) -> tuple[list[Path], list[str]]:
    from optsweep.report import plots

    notes, paths = [], []
    ppl_label = (
        "validation perplexity (paper's estimator)"
        if ppl_key == VAL_PPL_PAPER
        else "validation perplexity (token-weighted)"
    )
    points = []
    for r in rows:
        value = r.val_ppl_paper if ppl_key == VAL_PPL_PAPER else r.val_ppl
        if value is None or r.model_optimizer_bytes is None:
            notes.append(
                f"{r.optimizer} {r.model} ({r.run_id[:8]}) is not on the Pareto plot: it logged no "
                f"{'perplexity' if value is None else MODEL_OPTIMIZER_BYTES}"
            )
            continue
        points.append(plots.ParetoPoint(r.optimizer, r.model, r.model_optimizer_bytes, value))
    if points:
        paths.append(
            plots.pareto_plot(points, out / "pareto.png", ppl_label, f"Perplexity against memory: {title}")
        )
    curves, have_tokens = [], all(TOKENS in rec.history for rec, _ in selected)
    for record, _ in selected:
        val = record.history.get(VAL_LOSS)
        if not val:
            notes.append(
                f"{record.optimizer} {record.model} ({record.run_id[:8]}) logged no {VAL_LOSS} history"
            )
            continue
        steps = [s for s, _ in val]
        x = tokens_at(steps, record.history[TOKENS]) if have_tokens else [float(s) for s in steps]
        curves.append(plots.Curve(record.optimizer, record.model, x, [v for _, v in val]))
    if curves:
        x_label = "tokens seen (nominal, padding included)" if have_tokens else "optimizer step"
        if not have_tokens:
            notes.append(f"some runs logged no {TOKENS}: loss curves are drawn against optimizer steps")
        paths.append(
            plots.loss_curves_plot(curves, out / "val_loss.png", x_label, f"Validation loss: {title}")
        )
    return paths, notes


# ---------------------------------------------------------------------------------------------- MLflow
def log_summary(client, experiment_id: str, out: Path, params: dict[str, str]) -> str:
    """A run (tag optsweep.summary=true) holding the report's files as artifacts; returns its id."""
    run = client.create_run(experiment_id, run_name=f"summary-{out.name}", tags={SUMMARY_TAG: "true"})
    run_id = run.info.run_id
    try:
        for key, value in params.items():
            client.log_param(run_id, key, value[:6000])
        for path in sorted(out.iterdir()):
            if path.is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def list_store(client, tracking_uri: str) -> str:
    lines = [f"MLflow store: {tracking_uri}"]
    for experiment in client.search_experiments():
        runs = [
            _record(r, {experiment.experiment_id: experiment.name}) for r in _all_runs(client, [experiment])
        ]
        pairs = sorted({f"{r.optimizer}/{r.model}" for r in runs})
        lines.append(
            f"- {experiment.name}: {len(runs)} run(s) ({_counts(r.status for r in runs) or 'none'})"
            + (f"; optimizer/model: {', '.join(pairs)}" if pairs else "")
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
@dataclass
class Report:
    out: Path
    rows: list[Row]
    files: list[Path]
    summary_run_id: str | None
    notes: list[str]


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--tag '{pair}' is not KEY=VALUE (e.g. --tag data=sample)")
        key, value = pair.split("=", 1)
        tags[key.strip()] = value.strip()
    return tags


def build_report(
    tracking_uri: str | None = None,
    experiments: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    optimizers: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    statuses: Sequence[str] = DEFAULT_STATUSES,
    select: str = "latest",
    ppl: str = "token",
    out: Path | None = None,
    log: bool = True,
) -> Report:
    tracking_uri = tracking_uri or default_tracking_uri()
    client = _client(tracking_uri)
    tags = dict(tags or {})
    ppl_key = VAL_PPL_PAPER if ppl == "paper" else VAL_PPL
    records, notes = find_runs(client, experiments, tags, statuses, tracking_uri)
    for tag, wanted in (("model", models), ("optimizer", optimizers)):
        if wanted:
            kept = [r for r in records if r.tags.get(tag) in set(wanted)]
            if not kept:
                seen = ", ".join(sorted({r.tags.get(tag, "?") for r in records}))
                raise NoRunsError(
                    f"no matching run has {tag} {' or '.join(wanted)} ({tag}s seen: {seen}); list "
                    f"runs with: python -m optsweep.report compare --list --tracking-uri {tracking_uri}"
                )
            records = kept
    selected = select_runs(records, select, ppl_key)
    for record, _ in selected:
        load_history(client, record, (VAL_LOSS, TOKENS, THROUGHPUT))
    rows = table_rows(selected)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out else repo_root() / "outputs" / "reports" / stamp
    out.mkdir(parents=True, exist_ok=True)
    experiments_seen = sorted({r.experiment for r, _ in selected})
    title = ", ".join(experiments_seen) + (
        f" ({', '.join(f'{k}={v}' for k, v in tags.items())})" if tags else ""
    )
    write_csv(rows, out / "runs.csv")
    plot_files, plot_notes = write_plots(rows, selected, out, ppl_key, title)
    notes += plot_notes
    rule = "the latest started" if select == "latest" else f"the one with the lowest final {ppl_key}"
    main_ppl = "val ppl (paper est.)" if ppl_key == VAL_PPL_PAPER else "val ppl"
    statuses_text = "any status" if any(s.upper() == "ALL" for s in statuses) else "/".join(statuses)
    lines = [
        f"# Run comparison: {title}",
        "",
        f"- MLflow store: `{tracking_uri}`; experiment(s): {', '.join(experiments_seen)}",
        f"- filters: {', '.join(f'{k}={v}' for k, v in tags.items()) or 'none'}"
        + (f"; models {', '.join(models)}" if models else "")
        + (f"; optimizers {', '.join(optimizers)}" if optimizers else "")
        + f"; status {statuses_text}",
        f"- one run per optimizer x model: {rule} of the {statuses_text} runs ('runs' counts the candidates)",
        (
            f"- perplexities are final values; '{main_ppl}' (the plotted one) beside the other estimator "
            "(token-weighted: exp of the mean loss over non-pad tokens; the paper's: mean of batch losses "
            "over (batches + 1))"
        ),
        (
            "- memory as each run measured it, at the dtypes it trained in (fp32 on CPU, bf16 for the "
            "paper's runs); GB = 1e9 bytes, MB = 1e6 bytes; tokens/s: median over the run"
        ),
        f"- written {dt.datetime.now().isoformat(timespec='seconds')}",
        "",
        render_markdown_table(rows, ppl_key),
    ]
    for path in plot_files:
        lines += [f"![{path.stem}]({path.name})", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    (out / "report.md").write_text("\n".join(lines))
    files = [out / "report.md", out / "runs.csv", *plot_files]

    summary = None
    if log:
        experiment_id = _summary_experiment(selected, experiments)
        summary = log_summary(
            client,
            experiment_id,
            out,
            {
                "tracking_uri": tracking_uri,
                "experiments": ",".join(experiments_seen),
                "tags": ",".join(f"{k}={v}" for k, v in tags.items()),
                "select": select,
                "ppl": ppl_key,
                "statuses": statuses_text,
                "runs": ",".join(r.run_id for r, _ in selected),
            },
        )
    return Report(out=out, rows=rows, files=files, summary_run_id=summary, notes=notes)


def _summary_experiment(selected: Sequence[tuple[RunRecord, int]], named: Sequence[str] | None) -> str:
    """The experiment the summary goes to: the first one named, else the one most compared runs are in."""
    if named:
        for record, _ in selected:
            if record.experiment == named[0]:
                return record.experiment_id
    counts: dict[str, int] = {}
    for record, _ in selected:
        counts[record.experiment_id] = counts.get(record.experiment_id, 0) + 1
    return max(counts, key=counts.get)


def main(args: argparse.Namespace) -> int:
    tracking_uri = args.tracking_uri or default_tracking_uri()
    if args.list:
        print(list_store(_client(tracking_uri), tracking_uri))
        return 0
    report = build_report(
        tracking_uri=tracking_uri,
        experiments=args.experiment,
        tags=parse_tags(args.tag),
        optimizers=args.optimizer,
        models=args.model,
        statuses=args.status,
        select=args.select,
        ppl=args.ppl,
        out=Path(args.out) if args.out else None,
        log=not args.no_log,
    )
    print(render_markdown_table(report.rows, VAL_PPL_PAPER if args.ppl == "paper" else VAL_PPL))
    for note in report.notes:
        print(f"note: {note}")
    print(f"report: {report.out / 'report.md'}")
    for path in report.files[1:]:
        print(f"        {path}")
    if report.summary_run_id:
        print(f"logged to MLflow summary run {report.summary_run_id}")
    return 0
