"""Golden per-step losses of every optimizer config, for tests/test_golden_losses.py.

Regenerate with

    PYTHONPATH=src python tests/golden/make_golden_losses.py > tests/golden/losses.json

only on purpose (an optimizer's arithmetic or its conf/optimizer defaults changed deliberately), and say
why in the commit: the test exists to catch the changes nobody meant.

For each conf/optimizer/<name>.yaml: a fixed tiny LLaMA (seed 0, fp32, CPU, one thread, deterministic
algorithms) and a fixed stream of random token batches; the optimizer is the yaml's partial, built by the
real ``build_optimizer`` with the yaml's defaults plus the few overrides in ``OVERRIDES`` (larger lrs so that
ten steps move the loss, ranks and refresh gaps the tiny matrices can show). No scheduler: constant lr.
``losses[t]`` is the loss of batch t under the weights after t optimizer steps, t = 0..STEPS.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.registry import optimizer_factory

CONF = Path(__file__).resolve().parents[2] / "conf" / "optimizer"
STEPS = 10
BATCH, SEQ_LEN = 4, 16
SPEC = ModelSpec(name="golden", hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=128)
COMMAND = "PYTHONPATH=src python tests/golden/make_golden_losses.py > tests/golden/losses.json"

# Only what ten steps on a 32-wide model need; every other hyperparameter is the yaml's default.
OVERRIDES: dict[str, dict] = {
    "adam": {"lr": 3e-3},
    "adamw": {"lr": 3e-3, "weight_decay": 0.1},  # a non-zero decay, or AdamW would repeat Adam
    "sgd": {"lr": 0.5},
    "scale": {"lr": 1e-2},
    "stable_spam": {"lr": 3e-3, "update_proj_gap": 4},  # MoRet resets on steps 4 and 8
    "muon": {"adam_lr": 3e-3},
    # SVD / random-projection refreshes on steps 1, 5, 9; a non-zero decay so a dropped decay shows
    "galore": {"rank": 8, "update_proj_gap": 4, "weight_decay": 0.1},
    "fira": {"rank": 8, "update_proj_gap": 4, "weight_decay": 0.1},
    "swan": {"lr": 3e-3},
    "apollo": {"rank": 8, "update_proj_gap": 4, "weight_decay": 0.1},
    "apollo_mini": {"update_proj_gap": 4, "weight_decay": 0.1},
    "lion": {"lr": 3e-3, "weight_decay": 0.1},
    "ademamix": {"lr": 3e-3},
    "adafactor": {"lr": 0.1, "weight_decay": 0.1},  # rho = min(lr, 1/sqrt(t)) times the weights' RMS (0.02)
    "adam_mini": {"lr": 3e-3},
    # eigenbasis refreshes within the ten steps; only the 32-wide sides rotated: their factors are full rank,
    # while a 128-token side fed 64 tokens a batch has a null space whose eigenbasis differs between CPUs
    "soap": {"precondition_frequency": 3, "max_precond_dim": 32},
    "normuon": {"adam_lr": 3e-3},
}


def optimizer_names() -> list[str]:
    return sorted(path.stem for path in CONF.glob("*.yaml"))


def optimizer_config(name: str):
    """The yaml's partial with ``OVERRIDES`` applied; ``${train.max_steps}`` resolves to ``STEPS``."""
    root = OmegaConf.create({"train": {"max_steps": STEPS}, "optimizer": OmegaConf.load(CONF / f"{name}.yaml")})
    for key, value in OVERRIDES.get(name, {}).items():
        root.optimizer[key] = value
    return root.optimizer


def batches() -> list[torch.Tensor]:
    """Rows counting up mod the vocabulary from a random start with a random stride in 1..3: a stream a
    model learns within a few steps (random tokens would leave nothing to learn but noise)."""
    generator = torch.Generator().manual_seed(1234)
    stream = []
    for _ in range(STEPS + 1):
        start = torch.randint(0, SPEC.vocab_size, (BATCH, 1), generator=generator)
        stride = torch.randint(1, 4, (BATCH, 1), generator=generator)
        stream.append((start + stride * torch.arange(SEQ_LEN)) % SPEC.vocab_size)
    return stream


def golden_losses(name: str) -> list[float]:
    """The loss of each batch, before the first step and after each of ``STEPS`` steps."""
    torch.manual_seed(0)
    model = build_llama(SPEC)
    optimizer = optimizer_factory(optimizer_config(name))(model)
    losses = []
    for step, batch in enumerate(batches()):
        loss = model(input_ids=batch, labels=batch).loss
        losses.append(loss.item())
        if step == STEPS:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses


def deterministic() -> None:
    """Float sums depend on the thread count; one thread and deterministic kernels make runs repeatable."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def main() -> None:
    deterministic()
    golden = {
        "made_with": {"command": COMMAND, "torch": torch.__version__, "transformers": transformers.__version__,
                      "threads": 1, "dtype": "float32", "steps": STEPS, "batch": [BATCH, SEQ_LEN]},
        "overrides": OVERRIDES,
        "losses": {name: golden_losses(name) for name in optimizer_names()},
    }
    text = json.dumps(golden, indent=1)
    # one line per innermost list or dict (one optimizer's losses or overrides): readable, local diffs
    text = re.sub(r"[\[{][^\[\]{}]*[\]}]", lambda m: " ".join(m.group(0).split()), text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
