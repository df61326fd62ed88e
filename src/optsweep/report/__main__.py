"""``python -m optsweep.report memory|compare`` (also installed as ``optsweep-report``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _memory(args: argparse.Namespace) -> int:
    from optsweep.report import memory, repo_root

    models = [token for group in (args.models or []) for token in group] or None
    optimizers = [name for group in (args.optimizers or []) for name in group] or None
    optimizers = [n.strip() for name in optimizers or [] for n in name.split(",") if n.strip()] or None
    conf_dir = Path(args.conf_dir) if args.conf_dir else repo_root() / "conf"
    rows = memory.memory_rows(
        optimizers, models, conf_dir=conf_dir, vocab_size=args.vocab_size, full_depth=args.full_depth
    )
    if args.format == "markdown":
        sys.stdout.write(memory.render_markdown(rows))
    elif args.format == "csv":
        sys.stdout.write(memory.render_csv(rows))
    else:
        memory.print_table(rows)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from optsweep.report import compare

    return compare.main(args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m optsweep.report", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True, metavar="{memory,compare}")

    mem = commands.add_parser(
        "memory",
        help="model + optimizer memory per optimizer x model, beside the paper's",
        description="Model + optimizer memory (bf16, GB = 1e9 bytes) measured from each optimizer's real "
        "state after one step on a meta-device model, beside the paper's number and the paper's "
        "own accounting rule.",
    )
    mem.add_argument(
        "--optimizers",
        "--optimizer",
        nargs="+",
        action="append",
        metavar="NAME",
        help="registry names (default: all), space or comma separated",
    )
    mem.add_argument(
        "--models",
        "--model",
        nargs="+",
        action="append",
        metavar="MODEL",
        help="conf/model names (default: llama_60m..llama_7b), a yaml path, or overrides: "
        "'llama_1b,num_hidden_layers=4' or 'name=mine,hidden_size=256,intermediate_size=688,"
        "num_hidden_layers=4,num_attention_heads=4'",
    )
    mem.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    mem.add_argument(
        "--vocab-size",
        type=int,
        default=32000,
        help="for models whose config takes the tokenizer's vocabulary (vocab_size: null)",
    )
    mem.add_argument("--conf-dir", help="the config tree (default: <repo>/conf)")
    mem.add_argument(
        "--full-depth",
        action="store_true",
        help="step the optimizer on every decoder layer instead of one layer standing for all "
        "(same numbers, minutes instead of seconds)",
    )
    mem.set_defaults(run=_memory)

    from optsweep.report.compare import add_arguments

    cmp = commands.add_parser(
        "compare",
        help="tables and plots (Pareto, loss curves) from the runs in an MLflow store",
        description="Read finished runs from MLflow, write a table (markdown, CSV), a perplexity-vs-memory "
        "Pareto plot and validation-loss curves to a folder, and log them to a summary run.",
    )
    add_arguments(cmp)
    cmp.set_defaults(run=_compare)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
