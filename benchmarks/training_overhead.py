"""Tokens/s of a training step through our LightningModule + Trainer, against a plain PyTorch loop.

The plain loop is the paper authors' script style (GaLore's ``torchrun_main.py``): for every micro batch a
forward with labels and ``(loss / accumulation).backward()``, then ``optimizer.step()``,
``scheduler.step()``, ``optimizer.zero_grad()``. Both sides get

- the same initial weights (one state dict, copied into each fresh model),
- the same data: pre-generated random token batches (padded at the tail, labels -100 at pad), held in a
  list and fed through a ``DataLoader`` with no workers,
- the same optimizer as a training run builds it (``conf/optimizer/<name>.yaml`` through Hydra) and the
  same warmup-cosine schedule,
- the same precision: fp32 on CPU, pure bf16 (``bf16-true``) on CUDA.

Lightning runs as ``train()`` assembles it: ``LlamaLitModule`` building the model in ``configure_model``,
our SpeedMonitor and DivergenceGuard callbacks, ``log_every_n_steps`` 10; variants add the progress bar or
a logger to show what each costs, and one drops our callbacks to show Lightning's own cost.

Each run times N optimizer steps after a few warmup steps, between two identical points of the step cycle
(after an optimizer step, with a device sync on CUDA), so per-step work done at the logging interval is
counted as often as it happens. Variants are interleaved, in a rotated order per repeat, so that a machine
whose load drifts hurts them alike; the table shows medians over repeats. Before the table, the losses of
every variant are compared with the plain loop's, micro batch by micro batch: the comparison only holds if
both do the same math.

    python benchmarks/training_overhead.py                       # small CPU default, ~1-2 min
    python benchmarks/training_overhead.py --model llama_60m --seq-len 256 --micro-batch 32 \
        --accumulate 2 --steps 50 --warmup 10 --device cuda      # on a GPU (bf16-true)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from optsweep.models.llama import ModelSpec, build_llama, count_parameters, flops_per_token
from optsweep.optim.schedules import WarmupCosine
from optsweep.report.memory import ConfigComposer, optimizer_setup, parse_model
from optsweep.training.callbacks import DivergenceGuard, SpeedMonitor, StepProgressBar, detect_peak_flops
from optsweep.training.module import LlamaLitModule

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
PAD_ID = 0
VARIANTS = {
    "plain": "plain PyTorch loop (authors' script style, without its host syncs)",
    "plain+syncs": "the same with the authors' syncs: .item() of tokens seen per micro batch, of the loss per step",
    "trainer": "Lightning Trainer + our module, no callbacks",
    "ours": "+ SpeedMonitor, DivergenceGuard (a run's callbacks, no bar, no logger)",
    "ours+bar": "+ StepProgressBar(refresh_rate=1), as conf/callbacks/default.yaml",
    "ours+csv": "+ CSVLogger",
    "ours+mlflow": "+ MLFlowLogger (sqlite, synchronous=False, as conf/logger/mlflow.yaml)",
}
PRECISION_DTYPE = {"32-true": torch.float32, "bf16-true": torch.bfloat16, "bf16-mixed": torch.float32}


@dataclass
class Setup:
    args: argparse.Namespace
    spec: ModelSpec
    device: torch.device
    precision: str
    optimizer_factory: Callable[..., torch.optim.Optimizer]
    init_state: dict
    batches: list[dict]
    flops_per_token: float
    peak_flops: float | None  # the device's dense peak FLOP/s, for MFU; None on CPU or an unknown GPU

    @property
    def total_steps(self) -> int:
        # One step after the timed ones, so the extra logging Lightning and our callbacks do at the very
        # last step (step == max_steps) stays out of the window.
        return self.args.warmup + self.args.steps + 1

    @property
    def timed_tokens(self) -> int:
        a = self.args
        return a.steps * a.accumulate * a.micro_batch * a.seq_len

    def schedule(self) -> WarmupCosine:
        # Warmup is a tenth of the run, as in the paper; the lr itself does not change the step's cost.
        return WarmupCosine(warmup_steps=max(1, self.total_steps // 10), total_steps=self.total_steps)

    def loader(self) -> DataLoader:
        return DataLoader(BatchList(self.batches), batch_size=None, shuffle=False, num_workers=0,
                          pin_memory=self.device.type == "cuda")

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class RunResult:
    seconds: float      # wall clock over the timed steps
    cpu_seconds: float  # this process's CPU time over them: on a shared CPU, the work done, less the waiting
    losses: list[torch.Tensor] = field(default_factory=list)  # per micro batch, unscaled


class BatchList(Dataset):
    """Pre-generated batches (each already a dict of [micro_batch, seq_len] tensors), served in order."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        return self.batches[index]


def make_batches(count: int, micro_batch: int, seq_len: int, vocab_size: int, padded: bool,
                 seed: int) -> list[dict]:
    """Random tokens; with ``padded``, each row keeps a random length in [seq_len/2, seq_len] and is padded
    at the tail (the paper's C4 format pads to max length), labels -100 at pad."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        input_ids = torch.randint(1, vocab_size, (micro_batch, seq_len), generator=generator)
        if padded:
            lengths = torch.randint(seq_len // 2, seq_len + 1, (micro_batch, 1), generator=generator)
        else:
            lengths = torch.full((micro_batch, 1), seq_len)
        attention_mask = (torch.arange(seq_len)[None, :] < lengths).long()
        input_ids = input_ids.masked_fill(attention_mask == 0, PAD_ID)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return batches


def fresh_compile() -> None:
    """Each run compiles its own model in its warmup steps; without a reset, the runs' fresh models would
    pile up recompilations until dynamo's cache limit makes it fall back to eager without saying so."""
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ plain loop
def run_plain(setup: Setup, authors_syncs: bool = False) -> RunResult:
    a = setup.args
    tokens_seen = 0
    model = build_llama(setup.spec, pad_token_id=PAD_ID)
    model.load_state_dict(setup.init_state)
    model.to(device=setup.device, dtype=PRECISION_DTYPE[setup.precision])
    if a.compile:
        fresh_compile()
        model = torch.compile(model)
    model.train()
    optimizer = setup.optimizer_factory(model=getattr(model, "_orig_mod", model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, setup.schedule())
    autocast = (torch.autocast(setup.device.type, dtype=torch.bfloat16) if setup.precision == "bf16-mixed"
                else contextlib.nullcontext())
    losses = []
    batches = iter(setup.loader())
    start = None
    end = None
    for step in range(setup.total_steps):
        for _ in range(a.accumulate):
            batch = {k: v.to(setup.device, non_blocking=True) for k, v in next(batches).items()}
            with autocast:
                loss = model(**batch).loss
            (loss / a.accumulate).backward()
            losses.append(loss.detach())
            if authors_syncs:  # GaLore's torchrun_main.py counts non-pad tokens this way, every micro batch
                tokens_seen += (batch["input_ids"] != PAD_ID).sum().item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if authors_syncs:  # ... and logs loss.item() to wandb after every update
            loss.item()
        if step + 1 == a.warmup:
            setup.sync()
            start = (time.perf_counter(), time.process_time())
        elif step + 1 == a.warmup + a.steps:
            setup.sync()
            end = (time.perf_counter(), time.process_time())
    return RunResult(seconds=end[0] - start[0], cpu_seconds=end[1] - start[1], losses=losses)


# ------------------------------------------------------------------------------------------- Lightning
class Stopwatch(L.Callback):
    """Clocks the timed steps at the same point of the cycle as the plain loop, and keeps every micro
    batch's loss (Lightning hands callbacks the loss already divided by the accumulation)."""

    def __init__(self, bench: Setup) -> None:
        self.bench = bench
        self.losses: list[torch.Tensor] = []
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None
        self._last_step = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        # The module built its own model in configure_model; give it the shared initial weights (in place,
        # so the optimizer already holding these parameters is unaffected; copy_ casts fp32 -> bf16 as
        # the plain loop's .to(dtype) does).
        with torch.no_grad():
            for name, tensor in pl_module.llama.state_dict().items():
                tensor.copy_(self.bench.init_state[name])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"])  # scaled back at the comparison, not here: no extra kernel
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        if step == self.bench.args.warmup:
            self.bench.sync()
            self.start = (time.perf_counter(), time.process_time())
        elif step == self.bench.args.warmup + self.bench.args.steps:
            self.bench.sync()
            self.end = (time.perf_counter(), time.process_time())


def run_lightning(setup: Setup, variant: str, workdir: Path) -> RunResult:
    a = setup.args
    module = LlamaLitModule(
        model_spec=setup.spec,
        optimizer=setup.optimizer_factory,
        scheduler=WarmupCosine,  # as a run's config gives it: completed with warmup_steps and total_steps
        max_steps=setup.total_steps,
        warmup_steps=setup.schedule().warmup_steps,
        pad_token_id=PAD_ID,
        compile=a.compile,
    )
    if a.compile:
        fresh_compile()
    stopwatch = Stopwatch(setup)
    callbacks = []
    if variant != "trainer":
        callbacks += [SpeedMonitor(seq_len=a.seq_len), DivergenceGuard(check_every_n_steps=10)]
    if variant == "ours+bar":
        callbacks.append(StepProgressBar(refresh_rate=1))
    callbacks.append(stopwatch)
    loggers = []
    if variant == "ours+csv":
        from lightning.pytorch.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=str(workdir / "csv"), name="bench"))
    if variant == "ours+mlflow":
        import mlflow  # noqa: F401 - imported here so that its logging setup runs before we quiet it
        from lightning.pytorch.loggers import MLFlowLogger

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        loggers.append(MLFlowLogger(experiment_name="bench", tracking_uri=f"sqlite:///{workdir}/mlflow.db",
                                    synchronous=False))
    trainer = L.Trainer(
        accelerator=setup.device.type, devices=1, precision=setup.precision,
        max_steps=setup.total_steps, max_epochs=-1, accumulate_grad_batches=a.accumulate,
        logger=loggers or False, callbacks=callbacks, log_every_n_steps=a.log_every,
        enable_progress_bar=variant == "ours+bar", enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=False, benchmark=False,
    )
    # The bar's cost is its formatting and the metric reads behind it, not the terminal: draw it nowhere.
    with (open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull),
          contextlib.redirect_stderr(devnull)):
        trainer.fit(module, train_dataloaders=setup.loader())
    if stopwatch.end is None:
        raise RuntimeError(f"{variant}: the run ended at step {trainer.global_step} before the timed steps")
    losses = [loss * a.accumulate for loss in stopwatch.losses]
    return RunResult(seconds=stopwatch.end[0] - stopwatch.start[0],
                     cpu_seconds=stopwatch.end[1] - stopwatch.start[1], losses=losses)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama_tiny",
                        help="conf/model name, a yaml path, or overrides: 'llama_60m,num_hidden_layers=4' "
                             "(default: llama_tiny)")
    parser.add_argument("--vocab-size", type=int, default=8192,
                        help="vocabulary for a model whose config leaves it to the tokenizer (default: 8192)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulate", type=int, default=2, help="micro batches per optimizer step")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps before them")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", default="adamw", help="any registry name (conf/optimizer/<name>.yaml)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default=None, choices=sorted(PRECISION_DTYPE),
                        help="default: bf16-true on CUDA, 32-true on CPU (a training run's choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    parser.add_argument("--no-padding", action="store_true", help="full-length rows (the packed format)")
    parser.add_argument("--log-every", type=int, default=10, help="Trainer log_every_n_steps (a run's default)")
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "plain+syncs"),
                        help=f"comma-separated, from: {', '.join(VARIANTS)} (default: all but plain+syncs, "
                             "whose syncs cost nothing on a CPU)")
    parser.add_argument("--check-steps", type=int, default=3,
                        help="optimizer steps whose losses must agree with the plain loop's")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on CPU, where a shared machine makes more threads "
                             "spin; torch's default on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-flops", type=float, default=None,
                        help="the device's dense peak FLOP/s for the MFU column (default: the H100/H200/A100 "
                             "figure a run uses; none on CPU)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "plain" not in args.variants:
        parser.error(f"--variants must include 'plain' and name only {', '.join(VARIANTS)} (got {unknown})")
    return args


def build_setup(args: argparse.Namespace) -> Setup:
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    precision = args.precision or ("bf16-true" if device.type == "cuda" else "32-true")
    choice = parse_model(args.model, CONF_DIR, vocab_size=args.vocab_size)
    spec = choice.spec
    with ConfigComposer(CONF_DIR) as composer:
        node, _ = composer.optimizer_node(args.optimizer, choice.settings_name, expect_paper=False)
    optimizer = optimizer_setup(args.optimizer, node)
    if optimizer.factory is None:
        raise SystemExit(f"optimizer {args.optimizer}: {optimizer.unavailable}")
    torch.manual_seed(args.seed)
    init_state = {k: v.clone() for k, v in build_llama(spec, pad_token_id=PAD_ID).state_dict().items()}
    count = (args.warmup + args.steps + 1) * args.accumulate
    batches = make_batches(count, args.micro_batch, args.seq_len, spec.vocab_size, not args.no_padding,
                           args.seed + 1)
    flops = flops_per_token(build_llama(spec, device="meta"), args.seq_len)
    peak = args.peak_flops or (detect_peak_flops() if device.type == "cuda" else None)
    return Setup(args, spec, device, precision, optimizer.factory, init_state, batches, flops, peak)


def quiet_libraries() -> None:
    # Lightning's banners and "few workers" hints are about the benchmark's setup, not what it measures.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
    warnings.filterwarnings("ignore", message=r".*(num_workers|log_every_n_steps|LeafSpec|MLflow).*")


def loss_agreement(setup: Setup, results: dict[str, list[RunResult]]) -> list[tuple[str, float, float]]:
    """Max |loss - plain's loss| over the first --check-steps steps and over the whole run (repeat 1)."""
    first = setup.args.check_steps * setup.args.accumulate
    reference = torch.stack(results["plain"][0].losses).float().cpu()
    rows = []
    for variant, runs in results.items():
        if variant == "plain":
            continue
        losses = torch.stack(runs[0].losses).float().cpu()
        if losses.shape != reference.shape:
            raise RuntimeError(f"{variant}: {len(losses)} micro-batch losses, the plain loop has {len(reference)}")
        diff = (losses - reference).abs()
        rows.append((variant, diff[:first].max().item(), diff.max().item()))
    return rows


def summarize(setup: Setup, results: dict[str, list[RunResult]], agreement) -> dict[str, dict]:
    """Per variant: median tokens/s and step time, their spread, the overhead against plain, MFU (where the
    device's peak is known; nominal tokens, padding included, as a run's SpeedMonitor counts them) and the
    loss agreement with plain."""
    a = setup.args
    tokens = setup.timed_tokens
    agree = {v: (f, w) for v, f, w in agreement}

    def median_rate(runs, attr):
        return statistics.median(tokens / getattr(r, attr) for r in runs)

    plain = results["plain"]
    plain_ms = 1e3 * statistics.median(r.seconds for r in plain) / a.steps
    summary = {}
    for variant, runs in results.items():
        compared = variant != "plain"
        rates = [tokens / r.seconds for r in runs]
        rate = median_rate(runs, "seconds")
        ms = 1e3 * statistics.median(r.seconds for r in runs) / a.steps
        first, whole = agree.get(variant, (None, None))
        summary[variant] = {
            "tokens_per_s": rate, "tokens_per_s_min": min(rates), "tokens_per_s_max": max(rates),
            "ms_per_step": ms,
            "overhead": median_rate(plain, "seconds") / rate - 1 if compared else None,
            "extra_ms_per_step": ms - plain_ms if compared else None,
            "cpu_ms_per_step": 1e3 * statistics.median(r.cpu_seconds for r in runs) / a.steps,
            "overhead_cpu_time": (median_rate(plain, "cpu_seconds") / median_rate(runs, "cpu_seconds") - 1
                                  if compared else None),
            "mfu": rate * setup.flops_per_token / setup.peak_flops if setup.peak_flops else None,
            "max_abs_dloss_first": first, "max_abs_dloss_all": whole,
        }
    return summary


def render(setup: Setup, summary: dict[str, dict], markdown: bool) -> str:
    a = setup.args
    on_cpu = setup.device.type == "cpu"
    header = ["variant", "tokens/s", "min..max", "ms/step", "overhead", "+ms/step"]
    if setup.peak_flops:
        header.append("MFU")
    if on_cpu:
        header += ["CPU ms/step", "overhead (CPU time)"]
    header.append(f"max abs dloss, first {a.check_steps} steps / all")
    rows = []
    for variant, s in summary.items():
        compared = variant != "plain"
        row = [variant, f"{s['tokens_per_s']:,.0f}", f"{s['tokens_per_s_min']:,.0f}..{s['tokens_per_s_max']:,.0f}",
               f"{s['ms_per_step']:.1f}",
               f"{100 * s['overhead']:+.1f}%" if compared else "-",
               f"{s['extra_ms_per_step']:+.1f}" if compared else "-"]
        if setup.peak_flops:
            row.append(f"{100 * s['mfu']:.1f}%")
        if on_cpu:
            row += [f"{s['cpu_ms_per_step']:.1f}", f"{100 * s['overhead_cpu_time']:+.1f}%" if compared else "-"]
        row.append(f"{s['max_abs_dloss_first']:.1e} / {s['max_abs_dloss_all']:.1e}" if compared else "-")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def describe(setup: Setup) -> str:
    import lightning

    a = setup.args
    model = build_llama(setup.spec, device="meta")
    if setup.device.type == "cuda":
        machine = torch.cuda.get_device_name(setup.device)
    else:
        machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    versions = f"torch {torch.__version__}, lightning {lightning.__version__}, python {platform.python_version()}"
    compiled = ", torch.compile" if a.compile else ""
    rows = "padded rows" if not a.no_padding else "full rows"
    return "\n".join([
        f"machine: {machine} (load average {load:.1f}); {versions}",
        (f"model: {setup.spec.name} ({count_parameters(model) / 1e6:.2f}M params, vocab {setup.spec.vocab_size}, "
         f"{flops_per_token(model, a.seq_len) / 1e6:.1f} MFLOP/token); precision {setup.precision}{compiled}; "
         f"optimizer {a.optimizer}"),
        (f"batch: {a.micro_batch} x {a.seq_len} tokens x {a.accumulate} accumulation ({rows}); "
         f"{a.warmup} warmup + {a.steps} timed steps, {a.repeats} repeats; log_every_n_steps {a.log_every}"),
    ])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads or not (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())):
        torch.set_num_threads(args.threads or 1)
    quiet_libraries()
    setup = build_setup(args)
    print(describe(setup), flush=True)
    results: dict[str, list[RunResult]] = {v: [] for v in args.variants}
    run_plain(setup)  # untimed: the process's first steps pay for lazy initialisation, whichever side runs
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            # rotate the order so no variant always runs first (cold caches) or last (a drifting machine)
            order = args.variants[repeat % len(args.variants):] + args.variants[:repeat % len(args.variants)]
            for variant in order:
                if variant.startswith("plain"):
                    result = run_plain(setup, authors_syncs=variant == "plain+syncs")
                else:
                    result = run_lightning(setup, variant, Path(tmp))
                results[variant].append(result)
                print(f"  repeat {repeat + 1}/{args.repeats} {variant:<12} "
                      f"{setup.timed_tokens / result.seconds:>12,.0f} tokens/s", file=sys.stderr, flush=True)
    agreement = loss_agreement(setup, results)
    summary = summarize(setup, results, agreement)
    print()
    print(render(setup, summary, args.markdown))
    print()
    for variant in args.variants:
        print(f"  {variant:<12} {VARIANTS[variant]}")
    print("  overhead = plain's tokens/s / the variant's - 1 (medians over repeats); +ms/step = median step time "
          "- plain's")
    if setup.peak_flops:
        print(f"  MFU = tokens/s x {setup.flops_per_token / 1e6:.1f} MFLOP/token / {setup.peak_flops:.3g} FLOP/s "
              "(the device's dense bf16 peak)")
    if setup.device.type == "cpu":
        print("  CPU time: this process's CPU seconds over the timed steps (1 thread, no loader workers), which a "
              "busy machine inflates less than the wall clock")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": describe(setup).splitlines()[0].removeprefix("machine: "),
            "model": setup.spec.name, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
            "accumulate": args.accumulate, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
            "precision": setup.precision, "compile": args.compile, "optimizer": args.optimizer,
            "device": setup.device.type, "flops_per_token": setup.flops_per_token, "peak_flops": setup.peak_flops,
            "variants": summary,
        }, indent=1))


if __name__ == "__main__":
    main()
