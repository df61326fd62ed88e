"""Time one optimizer step for every registered optimizer on the paper's LLaMA shapes, side by side.

    python benchmarks/optimizer_step.py --models llama_60m --repeats 5
    python benchmarks/optimizer_step.py --device cuda --dtype bf16 --markdown

Each optimizer gets the same model and the same fixed random gradients (a step's cost does not depend on
their values); its first steps allocate state (and compile, where it does) and are not timed. Reported:
the median step time, its ratio to torch's AdamW (foreach and fused), and the optimizer state in bytes
(optsweep.optim.groups.state_bytes). Optimizers whose module is not written yet are listed as skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.groups import split_parameters, state_bytes
from optsweep.optim.registry import OPTIMIZERS, build_optimizer
from optsweep.report.memory import parse_model

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class NaiveSCALE(torch.optim.Optimizer):
    """SCALE written the obvious way: one parameter at a time, every intermediate a new tensor.

    The yardstick for what vectorising and fusing buy; the same method as optsweep.optim.scale.SCALE.
    """

    def __init__(self, model: torch.nn.Module, lr: float = 1e-3, adam_lr: float = 2e-2,
                 momentum: float = 0.9):
        split = split_parameters(model)
        groups = [{"params": split.of(role), "role": role, "lr": adam_lr if role == "vector" else lr}
                  for role in ("hidden", "embedding", "output", "vector") if split.of(role)]
        super().__init__(groups, {"lr": lr})
        self.momentum = momentum

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                g, state = p.grad, self.state[p]
                if group["role"] == "vector":
                    if not state:
                        state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                    state["step"] += 1
                    state["m"].lerp_(g, 0.1)
                    state["v"].lerp_(g.square(), 0.001)
                    m_hat = state["m"] / (1 - 0.9 ** state["step"])
                    v_hat = state["v"] / (1 - 0.999 ** state["step"])
                    p.add_(m_hat / (v_hat.sqrt() + 1e-8), alpha=-group["lr"])
                    continue
                if group["role"] == "output":
                    if not state:
                        state["m"] = torch.zeros_like(p)
                    state["m"].lerp_(g, 1 - self.momentum)
                    g = state["m"]
                dim = 0 if group["role"] == "embedding" else 1
                rms = torch.sqrt(torch.mean(torch.square(g.float()), dim=dim, keepdim=True)).clamp_min(1e-8)
                p.add_((g.float() / rms).to(p.dtype), alpha=-group["lr"])


def model_spec(name: str) -> ModelSpec:
    """conf/model/<name>.yaml, or overrides of one: 'llama_tiny,vocab_size=512' (a null vocab: 32000)."""
    return parse_model(name, ROOT / "conf").spec


def candidates(model: torch.nn.Module, device: str, with_compile: bool) -> dict[str, Callable[[], object]]:
    """Name -> a function building the optimizer (called only when it is that one's turn)."""
    params = list(model.parameters())
    makers: dict[str, Callable[[], object]] = {
        "adamw (foreach)": lambda: torch.optim.AdamW(params, lr=1e-3, foreach=True),
        "adamw (fused)": lambda: torch.optim.AdamW(params, lr=1e-3, fused=True),
    }
    for name in OPTIMIZERS:
        makers[name] = lambda name=name: build_optimizer(model, name)
    if device == "cuda":
        makers["scale (eager)"] = lambda: build_optimizer(model, "scale", compile=False)
    elif with_compile:
        makers["scale (compiled)"] = lambda: build_optimizer(model, "scale", compile=True)
    makers["scale (naive loop)"] = lambda: NaiveSCALE(model)
    return makers


def timed_step(optimizer, device: str) -> float:
    """Seconds one step takes (the GPU included)."""
    if device == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - begin


def benchmark(model_name: str, device: str, dtype: torch.dtype, warmup: int, repeats: int, with_compile: bool,
              only: set[str], budget_s: float, round_robin: bool) -> tuple[list[tuple], list[str]]:
    """(name, median step ms, state bytes) per optimizer, and notes on those skipped or cut short.

    By default one optimizer is timed at a time, alone in memory as in a real run (round-robin timing lets
    the big temporaries of one, e.g. foreach AdamW's, slow the next one's step several-fold on CPU);
    ``round_robin`` interleaves their steps instead, so that a drifting machine load hits all alike.
    """
    torch.manual_seed(0)
    model = build_llama(model_spec(model_name), device=device).to(dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator, device=device, dtype=dtype)
    times: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    live: dict[str, torch.optim.Optimizer] = {}
    notes = []

    def measure(round_robin: dict[str, torch.optim.Optimizer]) -> None:
        for _ in range(repeats):
            for name, optimizer in list(round_robin.items()):
                times[name].append(timed_step(optimizer, device))
                if sum(times[name]) > budget_s:  # a very slow one stops being timed, the others go on
                    notes.append(f"{name}: median of {len(times[name])} step(s), its {budget_s:.0f} s "
                                 "budget spent")
                    del round_robin[name]

    for name, make in candidates(model, device, with_compile).items():
        if only and name not in only and name.split(" (")[0] not in only:
            continue
        try:
            optimizer = make()
        except (ImportError, AttributeError) as error:
            notes.append(f"{name}: skipped, not implemented yet ({type(error).__name__}: {error})")
            continue
        try:
            warm = []
            # the first step (state allocation, compilation) does not count against the budget
            while len(warm) < warmup and sum(warm[1:]) < budget_s:
                warm.append(timed_step(optimizer, device))
        except Exception as error:  # noqa: BLE001 - one broken optimizer must not hide the others
            notes.append(f"{name}: failed ({type(error).__name__}: {error})")
            continue
        sizes[name] = state_bytes(optimizer)
        times[name] = []
        if warm and warm[-1] * repeats > budget_s:
            times[name] = [warm[-1]]
            notes.append(f"{name}: its last warm-up step only ({warm[-1]:.1f} s a step, over its budget)")
        elif round_robin:
            live[name] = optimizer
            continue
        else:
            measure({name: optimizer})
        del optimizer
        gc.collect()
    measure(live)
    rows = [(name, statistics.median(ts) * 1e3, sizes[name]) for name, ts in times.items() if ts]
    return rows, notes


def render(model_name: str, rows: list[tuple[str, float, int]], notes: list[str], markdown: bool) -> str:
    by_name = {name: ms for name, ms, _ in rows}
    foreach, fused = by_name.get("adamw (foreach)"), by_name.get("adamw (fused)")
    header = ("optimizer", "step ms", "x AdamW foreach", "x AdamW fused", "state bytes")
    lines = []
    for name, ms, size in rows:
        lines.append((name, f"{ms:.2f}", f"{ms / foreach:.2f}" if foreach else "-",
                      f"{ms / fused:.2f}" if fused else "-", f"{size:,}"))
    if markdown:
        out = [f"**{model_name}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
    else:
        widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
        out = [model_name, "  ".join(h.ljust(w) for h, w in zip(header, widths))]
        out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    out += [f"note: {note}" for note in notes]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["llama_60m", "llama_130m"])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per optimizer (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (state, compilation)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--compile", action="store_true", help="on CPU, add a torch.compile'd SCALE row")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds of timed steps per optimizer; a slower one is timed over fewer steps")
    parser.add_argument("--round-robin", action="store_true",
                        help="interleave the optimizers' timed steps (all states in memory at once)")
    parser.add_argument("--only", nargs="+", default=[], help="these optimizers only (plus their variants)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"torch {torch.__version__}, {device_name}, {args.dtype}, median of {args.repeats} steps "
          f"after {args.warmup}\n")
    results = {}
    for model_name in args.models:
        rows, notes = benchmark(model_name, args.device, DTYPES[args.dtype], args.warmup, args.repeats,
                                args.compile, set(args.only), args.budget, args.round_robin)
        print(render(model_name, rows, notes, args.markdown))
        print()
        results[model_name] = {"rows": [{"optimizer": n, "step_ms": ms, "state_bytes": b} for n, ms, b in rows],
                               "notes": notes}
        if args.json:  # after each model, so a run stopped at a later, bigger model keeps the earlier ones
            args.json.write_text(json.dumps({"machine": device_name, "torch": torch.__version__,
                                             "dtype": args.dtype, "device": args.device, "models": results},
                                            indent=1))


if __name__ == "__main__":
    main()
