"""Checks shared by the tests of Adam-mini, SOAP and NorMuon: replaying a run recorded from the official code
(tests/golden/<name>_official.json), a weights_only checkpoint round trip, a pure-bf16 run.

The golden files hold numbers only: per-step losses and, after the last step, each parameter's sum, sum of
absolute values and first entries. How each was made (repository, commit, the exact call) is in its "how"
and "official_call" fields; the script ran outside this repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.registry import build_optimizer

GOLDEN = Path(__file__).resolve().parent / "golden"
SPEC = ModelSpec(name="t", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=97)


def golden_runs(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}_official.json").read_text())["runs"]


def replay(name: str, run: dict, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Train our optimizer exactly as the golden run was trained; the largest differences, by quantity."""
    spec = ModelSpec(**run["model"]) if "model" in run else SPEC
    rows, seq_len = run.get("batch", (4, 16))
    torch.manual_seed(0)
    model = build_llama(spec).to(dtype)
    initial = sum(p.double().abs().sum().item() for p in model.parameters())
    assert abs(initial - run["initial_abs_sum"]) <= 1e-9 * initial, "not the golden run's starting weights"
    optimizer = build_optimizer(model, name, **run["our_options"])
    losses = []
    for step in range(len(run["losses"])):
        x = torch.randint(0, spec.vocab_size, (rows, seq_len), generator=torch.Generator().manual_seed(1000 + step))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    assert set(params) == set(run["params"])
    worst = {"loss": max(abs(a - b) for a, b in zip(losses, run["losses"])), "entry": 0.0, "sum": 0.0,
             "moved": 0.0}
    torch.manual_seed(0)
    start = dict(build_llama(spec).to(dtype).named_parameters())
    for n, p in params.items():
        ref = run["params"][n]
        head = p.detach().double().flatten()[: len(ref["head"])]
        worst["entry"] = max(worst["entry"], (head - torch.tensor(ref["head"], dtype=torch.float64)).abs().max().item())
        worst["sum"] = max(worst["sum"], abs(p.double().abs().sum().item() - ref["abs_sum"]) / p.numel(),
                           abs(p.double().sum().item() - ref["sum"]) / p.numel())
        worst["moved"] = max(worst["moved"], (p.detach().double() - start[n].detach().double()).abs().max().item())
    return worst


def tiny_model(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return build_llama(SPEC).to(dtype)


def backward(model, step: int) -> float:
    x = torch.randint(0, SPEC.vocab_size, (4, 16), generator=torch.Generator().manual_seed(1000 + step))
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return loss.item()


def resumes_exactly(name: str, options: dict, steps: tuple[int, int] = (3, 3)) -> bool:
    """Train, save model + optimizer with torch.save, load with weights_only=True into fresh objects, go on
    with both: the weights must stay identical."""
    import io

    model = tiny_model()
    optimizer = build_optimizer(model, name, **options)
    before, after = steps
    for step in range(before):
        backward(model, step)
        optimizer.step()
        optimizer.zero_grad()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = tiny_model()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = build_optimizer(resumed, name, **options)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    for step in range(before, before + after):
        for m, o in ((model, optimizer), (resumed, resumed_optimizer)):
            backward(m, step)
            o.step()
            o.zero_grad()
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))


def bf16_state_dtypes(name: str, options: dict, steps: int = 4) -> dict[str, set]:
    """Step a bf16 model; the dtypes of the optimizer's matrix-or-vector state tensors, by state key."""
    model = tiny_model(torch.bfloat16)
    optimizer = build_optimizer(model, name, **options)
    for step in range(steps):
        backward(model, step)
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    dtypes: dict[str, set] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                dtypes.setdefault(key, set()).add(value.dtype)
    return dtypes
