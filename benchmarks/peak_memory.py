"""Measured peak memory of a training step per optimizer, against the analytic model + optimizer figure.

For every optimizer of the registry (built the way a training run builds it: ``conf/optimizer/<name>.yaml``
and, for a paper model, ``conf/paper/hparams/<name>_<model>.yaml``, composed by Hydra), a fresh model takes
a few plain training steps (forward with labels, backward, ``optimizer.step()``, ``zero_grad``) on random
tokens. Side by side:

- analytic: weights + gradients (one per weight, same dtype) + the optimizer's state, the state counted
  from the real optimizer after the steps (``optsweep.optim.groups.state_bytes``: every tensor it holds);
- resident: memory held right after the last ``optimizer.step()``, before ``zero_grad``, when weights,
  gradients and state all exist and activations are gone; it should equal the analytic figure (plus a few
  KB of buffers and the batch), and a gap means memory the state accounting misses;
- step transient: the most ``optimizer.step()`` holds above both what it started and what it ended with,
  i.e. its temporaries (foreach intermediates, SVD or Newton-Schulz workspaces, ...), not the state it
  creates at the first step;
- peak: the most memory held at any point of the training steps (activations included);
- model + optimizer: held after the last ``zero_grad`` (weights and state; gradients and activations gone),
  the figure the paper's memory column reports.

How memory is measured, honestly:

- CUDA: ``torch.cuda.max_memory_allocated`` (tensors through the caching allocator; its cached but free
  blocks are not counted), relative to what was allocated before the model was built;
- CPU: torch's own record of every CPU tensor allocation and free (``torch.profiler`` with
  ``profile_memory=True``), summed over time from before the model is built: the CPU analogue of
  ``max_memory_allocated``. It sees every torch tensor and nothing else: not the Python heap, not scratch
  buffers that oneDNN/MKL allocate themselves, not malloc's slack. ``--rss`` also runs the same steps once
  more per optimizer in a fresh process without the profiler (whose own records would count) and reports
  that process's resident-set (RSS) peak above its RSS before the model was built: it includes all of
  those, and whatever else the process touches, so it is the upper figure of the two.

    python benchmarks/peak_memory.py                        # small CPU default, a few minutes
    python benchmarks/peak_memory.py --model llama_60m --seq-len 256 --micro-batch 32 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import warnings
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch.autograd import DeviceType

from optsweep.models.llama import build_llama, count_parameters
from optsweep.optim.groups import state_bytes
from optsweep.report.memory import ConfigComposer, default_optimizers, optimizer_setup, parse_model

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MB = 1e6


# ------------------------------------------------------------------------------------------- meters
class CudaMeter:
    """Peaks from the caching allocator's counters. Regions may nest: before a region resets the peak
    counter, the peak so far is folded into every region still open, so none loses it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peaks: dict[str, int] = {}
        self.transients: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self._open: list[list] = []  # [name, allocated at entry, running peak]

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        return False

    def _fold(self) -> None:
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        for region in self._open:
            region[2] = max(region[2], peak)
        torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def region(self, name: str):
        self._fold()
        start = torch.cuda.memory_allocated(self.device)
        self._open.append([name, start, start])
        try:
            yield
        finally:
            self._fold()
            _, start, peak = self._open.pop()
            end = torch.cuda.memory_allocated(self.device)
            self.peaks[name] = max(self.peaks.get(name, 0), peak - self.base)
            self.transients[name] = max(self.transients.get(name, 0), peak - max(start, end))

    def mark(self, name: str) -> None:
        torch.cuda.synchronize(self.device)
        self.marks[name] = torch.cuda.memory_allocated(self.device) - self.base


class NullMeter:
    """No measurement (the --rss child, where the process's own RSS is what counts)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def region(self, name: str):
        return contextlib.nullcontext()

    def mark(self, name: str) -> None:
        pass


class CpuMeter:
    """Peaks from torch's record of CPU tensor allocations (the profiler's memory events), summed in time
    order from the moment the meter starts; regions and marks are profiler labels found in the same record."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.transients: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self._count = 0

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc):
        self._profile.__exit__(*exc)
        if exc[0] is None:
            self._evaluate()
        return False

    def _label(self, kind: str, name: str) -> str:
        self._count += 1
        return f"{kind}::{name}::{self._count}"

    def region(self, name: str):
        return torch.profiler.record_function(self._label("region", name))

    def mark(self, name: str) -> None:
        with torch.profiler.record_function(self._label("mark", name)):
            pass

    def _evaluate(self) -> None:
        events = self._profile.profiler.kineto_results.events()
        allocations = sorted((e.start_ns(), e.nbytes()) for e in events
                             if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
        times, totals, total = [], [], 0
        for time_ns, nbytes in allocations:
            total += nbytes
            times.append(time_ns)
            totals.append(total)

        def held_before(t: int) -> int:
            i = bisect_left(times, t)
            return totals[i - 1] if i else 0

        labels = sorted(((e.start_ns(), e.duration_ns(), e.name()) for e in events
                         if e.name().startswith(("region::", "mark::"))), key=lambda x: int(x[2].split("::")[2]))
        for start, duration, label in labels:
            kind, name, _ = label.split("::")
            at_start = held_before(start)
            if kind == "mark":
                self.marks[name] = at_start
                continue
            lo, hi = bisect_left(times, start), bisect_right(times, start + duration)
            peak = max([at_start, *totals[lo:hi]])
            at_end = totals[hi - 1] if hi else 0
            self.peaks[name] = max(self.peaks.get(name, 0), peak)
            self.transients[name] = max(self.transients.get(name, 0), peak - max(at_start, at_end))


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process, from /proc (Linux)."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_rss_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        refs.write("5")


# ----------------------------------------------------------------------------------------- one row
@dataclass
class Row:
    optimizer: str
    params: int = 0
    grads: int = 0
    state: int = 0
    resident: int = 0
    model_optimizer: int = 0  # held after zero_grad: weights + optimizer state, measured
    step_transient: int = 0
    peak: int = 0
    rss_peak: int | None = None
    lightning_peak: int | None = None
    skipped: str | None = None

    @property
    def analytic(self) -> int:
        return self.params + self.grads + self.state


def make_batch(args, vocab_size: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(1, vocab_size, (args.micro_batch, args.seq_len), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
    return {k: v.to(device) for k, v in batch.items()}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def train_steps(model, optimizer, batch: dict, args, meter) -> None:
    for _ in range(args.steps):
        with meter.region("train step"):
            for _ in range(args.accumulate):
                loss = model(**batch).loss
                (loss / args.accumulate).backward()
                del loss
            with meter.region("optimizer.step"):
                optimizer.step()
            meter.mark("after optimizer.step")
            optimizer.zero_grad(set_to_none=True)
            meter.mark("after zero_grad")


def measure(name: str, factory, spec, args, device: torch.device, rss_only: bool = False) -> Row:
    dtype = DTYPES[args.dtype]
    batch = make_batch(args, spec.vocab_size, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if rss_only:
        reset_rss_peak()
        rss_before, _ = rss_bytes()
        meter = NullMeter()
    else:
        meter = CudaMeter(device) if device.type == "cuda" else CpuMeter()
    torch.manual_seed(args.seed)
    with meter:
        with default_dtype(dtype), torch.device(device):
            model = build_llama(spec)
        model.train()
        optimizer = factory(model=model)
        train_steps(model, optimizer, batch, args, meter)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    row = Row(optimizer=name, params=params, grads=grads, state=state_bytes(optimizer))
    if rss_only:
        row.rss_peak = rss_bytes()[1] - rss_before
    else:
        row.resident = meter.marks["after optimizer.step"]
        row.model_optimizer = meter.marks["after zero_grad"]
        row.step_transient = meter.transients["optimizer.step"]
        row.peak = meter.peaks["train step"]
    del model, optimizer
    return row


class StepRegions(L.Callback):
    """Opens the meter's "train step" region at an optimizer step's first micro batch, closes it after its
    last (whose end follows the optimizer step)."""

    def __init__(self, meter, accumulate: int) -> None:
        self.meter = meter
        self.accumulate = accumulate
        self._region = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % self.accumulate == 0:
            self._region = self.meter.region("train step")
            self._region.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.accumulate == 0:
            self._region.__exit__(None, None, None)


def measure_lightning(factory, spec, args, device: torch.device) -> int:
    """The peak of the same steps through LlamaLitModule + Trainer with a run's callbacks (no logger)."""
    from torch.utils.data import DataLoader

    from optsweep.optim.schedules import WarmupConstant
    from optsweep.training.callbacks import DivergenceGuard, SpeedMonitor
    from optsweep.training.module import LlamaLitModule

    batch = make_batch(args, spec.vocab_size, torch.device("cpu"))
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    meter = CudaMeter(device) if device.type == "cuda" else CpuMeter()
    module = LlamaLitModule(spec, optimizer=factory, scheduler=WarmupConstant, max_steps=args.steps,
                            warmup_steps=0)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision="bf16-true" if args.dtype == "bf16" else "32-true",
        max_steps=args.steps, accumulate_grad_batches=args.accumulate, logger=False,
        callbacks=[SpeedMonitor(seq_len=args.seq_len), DivergenceGuard(), StepRegions(meter, args.accumulate)],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    loader = DataLoader([batch] * (args.steps * args.accumulate), batch_size=None)
    torch.manual_seed(args.seed)
    with meter:
        trainer.fit(module, train_dataloaders=loader)
    del module, trainer
    return meter.peaks["train step"]


def warm_up_device(spec, args, device: torch.device) -> None:
    """One step of a small model first, so one-time allocations (cuBLAS workspaces, kernels' scratch) land
    before any optimizer's baseline instead of in the first row."""
    if device.type != "cuda":
        return
    from optsweep.models.llama import ModelSpec

    small = ModelSpec(name="warmup", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, vocab_size=spec.vocab_size)
    with default_dtype(DTYPES[args.dtype]), torch.device(device):
        model = build_llama(small)
    model(**make_batch(args, spec.vocab_size, device)).loss.backward()
    del model
    torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ driver
def run_one(name: str, args, choice, composer: ConfigComposer, device: torch.device,
            rss_only: bool = False) -> Row:
    node, _ = composer.optimizer_node(name, choice.settings_name, expect_paper=False)
    setup = optimizer_setup(name, node)
    if setup.factory is None:
        return Row(optimizer=name, skipped=setup.unavailable)
    try:
        row = measure(name, setup.factory, choice.spec, args, device, rss_only)
        if args.lightning and not rss_only:
            row.lightning_peak = measure_lightning(setup.factory, choice.spec, args, device)
        return row
    except Exception as error:  # noqa: BLE001 - an optimizer still being written must not stop the table
        first_line = str(error).splitlines()[0] if str(error) else ""
        return Row(optimizer=name, skipped=f"failed to step: {type(error).__name__}: {first_line}"[:160])


def rss_in_fresh_process(name: str, argv: list[str]) -> Row:
    """The same steps in a fresh process without the profiler, so its RSS owes nothing to an earlier
    optimizer nor to the profiler's records."""
    command = [sys.executable, __file__, *argv, "--optimizers", name, "--rss-child"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Row(optimizer=name, skipped=f"subprocess failed: {tail}"[:160])
    fields = json.loads(lines[-1])
    return Row(**fields)


def render(rows: list[Row], markdown: bool, with_rss: bool, with_lightning: bool) -> str:
    header = ["optimizer", "params MB", "grads MB", "state MB", "state/params", "analytic MB (w+g+s)",
              "resident MB", "model+opt MB", "step transient MB", "peak MB", "peak/analytic"]
    if with_lightning:
        header += ["Lightning peak MB", "Lightning/plain"]
    if with_rss:
        header.append("RSS peak MB")
    body = []
    for row in rows:
        if row.skipped:
            continue
        cells = [row.optimizer, f"{row.params / MB:.1f}", f"{row.grads / MB:.1f}", f"{row.state / MB:.1f}",
                 f"{row.state / row.params:.2f}", f"{row.analytic / MB:.1f}", f"{row.resident / MB:.1f}",
                 f"{row.model_optimizer / MB:.1f}", f"{row.step_transient / MB:.1f}", f"{row.peak / MB:.1f}",
                 f"{row.peak / row.analytic:.2f}"]
        if with_lightning:
            cells += [f"{row.lightning_peak / MB:.1f}", f"{row.lightning_peak / row.peak:.2f}"]
        if with_rss:
            cells.append(f"{row.rss_peak / MB:.1f}" if row.rss_peak is not None else "-")
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    else:
        widths = [max(len(c) for c in column) for column in zip(header, *body)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*c) for c in body)]
    lines += [f"skipped {row.optimizer}: {row.skipped}" for row in rows if row.skipped]
    return "\n".join(lines)


def describe(args, choice, device: torch.device) -> str:
    model = build_llama(choice.spec, device="meta")
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
        method = "torch.cuda.max_memory_allocated (tensors; allocator cache excluded)"
    else:
        machine = f"{platform.machine()} CPU, {os.cpu_count()} cores"
        method = ("torch's CPU allocation record (torch.profiler, profile_memory=True): torch tensors only, "
                  "not the Python heap, oneDNN/MKL scratch or malloc slack")
        if args.rss:
            method += ("; RSS peak: the same steps in a fresh process per optimizer, no profiler, VmHWM above "
                       "VmRSS before the model was built")
    return "\n".join([
        f"machine: {machine}; torch {torch.__version__}, python {platform.python_version()}",
        (f"model: {choice.spec.name} ({count_parameters(model) / 1e6:.2f}M params, vocab {choice.spec.vocab_size}), "
         f"weights, grads and states in {args.dtype}; batch {args.micro_batch} x {args.seq_len} tokens x "
         f"{args.accumulate} accumulation; {args.steps} steps measured (the first creates the state)"),
        f"measured with: {method}; MB = 1e6 bytes",
    ])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama_60m,num_hidden_layers=2,vocab_size=8192",
                        help="conf/model name, a yaml path, or overrides of one (default: llama_60m shapes, "
                             "2 layers, vocab 8192; the paper's 60M optimizer settings apply)")
    parser.add_argument("--vocab-size", type=int, default=32000,
                        help="vocabulary for a model whose config leaves it to the tokenizer")
    parser.add_argument("--optimizers", default=None, help="comma-separated registry names (default: all)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="training steps measured (the first creates state)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="weights, grads and states (default: bf16 on CUDA as bf16-true runs, fp32 on CPU)")
    parser.add_argument("--lightning", action="store_true",
                        help="also the peak of the same steps through LlamaLitModule + Trainer")
    parser.add_argument("--rss", action="store_true",
                        help="CPU: also the process RSS peak, from the same steps in a fresh process per optimizer")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)  # one --rss process
    return parser.parse_args(argv)


def quiet_lightning() -> None:
    # Lightning's banners and hints are about this script's setup, not about what it measures.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    quiet_lightning()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    choice = parse_model(args.model, CONF_DIR, vocab_size=args.vocab_size)
    names = args.optimizers.split(",") if args.optimizers else default_optimizers()
    if args.rss_child:  # one optimizer, no profiler; the row goes back as one JSON line
        with ConfigComposer(CONF_DIR) as composer:
            row = run_one(names[0], args, choice, composer, device, rss_only=True)
        print(json.dumps(asdict(row)))
        return
    args.rss = args.rss and device.type == "cpu"
    print(describe(args, choice, device), flush=True)
    rows = []
    child_argv = _without_option([a for a in argv if a not in ("--rss", "--lightning")], "--optimizers")
    with ConfigComposer(CONF_DIR) as composer:
        warm_up_device(choice.spec, args, device)
        for name in names:
            row = run_one(name, args, choice, composer, device)
            if args.rss and not row.skipped:
                child = rss_in_fresh_process(name, child_argv)
                row.rss_peak = child.rss_peak
                if child.skipped:
                    print(f"  {name}: no RSS figure ({child.skipped})", file=sys.stderr)
            rows.append(row)
            print(f"  {name}: {'skipped' if row.skipped else 'done'}", file=sys.stderr, flush=True)
    print()
    print(render(rows, args.markdown, with_rss=args.rss, with_lightning=args.lightning))
    print()
    print("  analytic = weights + grads + optimizer state (state_bytes of the real optimizer after the steps); "
          "resident = held after the last optimizer.step(), before zero_grad; model+opt = held after zero_grad")
    print("  step transient = most optimizer.step() held above both its start and its end (temporaries); "
          "peak = most held during a training step (activations included), above what was held before the "
          "model was built")
    if args.lightning:
        print("  Lightning peak: the same steps through LlamaLitModule + Trainer (SpeedMonitor, DivergenceGuard, no "
              "logger); Lightning zeroes gradients after the next forward, not after the step")
    if args.json:
        info = describe(args, choice, device).splitlines()
        args.json.write_text(json.dumps({
            "machine": info[0].removeprefix("machine: "), "model": choice.spec.name, "dtype": args.dtype,
            "device": device.type, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
            "rows": [{**asdict(row), "analytic": row.analytic} for row in rows],
        }, indent=1))


def _without_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


if __name__ == "__main__":
    main()
