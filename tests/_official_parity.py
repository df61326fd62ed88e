"""Helpers for the optimizers checked against numbers their official code produced (tests/golden/*_official.json).

Each golden file says how it was made: the reference optimizer, the tiny LLaMA, the batches and the steps.
``replay`` repeats exactly that run with one of our optimizers; ``parity`` returns the largest differences.
The other helpers check the contract every optimizer keeps (closure, pure bf16, weights_only resume).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.registry import build_optimizer

GOLDEN = Path(__file__).resolve().parent / "golden"


def golden(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}_official.json").read_text())


def batch(step: int, vocab_size: int, rows: int = 4, seq_len: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab_size, (rows, seq_len), generator=torch.Generator().manual_seed(step))


def replay(name: str, reference: dict, **hyperparameters) -> tuple[list[float], torch.nn.Module]:
    """The golden file's run, with optimizer ``name`` of the registry: (per-step losses, the trained model)."""
    torch.manual_seed(0)
    spec = ModelSpec(**reference["model"])
    model = build_llama(spec)
    optimizer = build_optimizer(model, name, **hyperparameters)
    losses = []
    for step in range(reference["steps"]):
        x = batch(step, spec.vocab_size, reference["batch"], reference["seq_len"])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, model


def parity(name: str, **hyperparameters) -> dict[str, float]:
    """Largest differences from the golden run: losses (absolute), weight sums and sums of squares (relative
    to the reference's magnitude), first entries (absolute), and how far the weights moved at all."""
    reference = golden(name)
    losses, model = replay(name, reference, **hyperparameters)
    torch.manual_seed(0)
    start = dict(build_llama(ModelSpec(**reference["model"])).named_parameters())
    out = {"loss": max(abs(a - b) for a, b in zip(losses, reference["losses"], strict=True)),
           "sum": 0.0, "sum_sq": 0.0, "head": 0.0, "moved": 0.0}
    weights = dict(model.named_parameters())
    assert sorted(weights) == sorted(reference["weights"])
    for key, ref in reference["weights"].items():
        w = weights[key].detach()
        scale = w.double().abs().sum().item()
        out["sum"] = max(out["sum"], abs(w.double().sum().item() - ref["sum"]) / scale)
        out["sum_sq"] = max(out["sum_sq"], abs(w.double().square().sum().item() - ref["sum_sq"]) / ref["sum_sq"])
        out["head"] = max(out["head"], max(abs(a - b) for a, b in zip(w.flatten()[:4].tolist(), ref["head"])))
        out["moved"] = max(out["moved"], (w - start[key].detach()).abs().max().item())
    return out


def tiny_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(name="t", hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=97)
    return build_llama(spec).to(dtype)


def train(model, optimizer, steps, closure: bool = False) -> list[float]:
    losses = []
    for step in steps:
        x = batch(step, 97)

        def loss_fn(x=x):
            optimizer.zero_grad()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            return loss

        if closure:
            losses.append(optimizer.step(loss_fn).item())
        else:
            losses.append(loss_fn().item())
            optimizer.step()
    return losses


def resume_is_exact(name: str, **hyperparameters) -> float:
    """Largest weight difference between 6 uninterrupted steps and 3 steps, a weights_only state round trip
    into a fresh optimizer (on a copy of the model), 3 more steps."""
    model = tiny_model()
    optimizer = build_optimizer(model, name, **hyperparameters)
    train(model, optimizer, range(3))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, range(3, 6))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = tiny_model()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = build_optimizer(resumed, name, **hyperparameters)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    train(resumed, resumed_optimizer, range(3, 6))
    return max((p - q).abs().max().item() for p, q in zip(model.parameters(), resumed.parameters()))


def llama_60m_counts() -> dict[str, int]:
    """By hand from conf/model/llama_60m.yaml's shapes (hidden 512, MLP 1376, 8 layers, vocabulary 32000):
    the number of weights, and rows + columns of every matrix plus every vector's length (Adafactor's state)."""
    h, mlp, layers, vocab = 512, 1376, 8, 32000
    matrices = [(vocab, h), (vocab, h)] + layers * ([(h, h)] * 4 + [(mlp, h), (mlp, h), (h, mlp)])
    vectors = [h] * (2 * layers + 1)  # two RMSNorms per layer and the final one
    return {"weights": sum(r * c for r, c in matrices) + sum(vectors),
            "factored": sum(r + c for r, c in matrices) + sum(vectors)}
