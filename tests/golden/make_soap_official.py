"""Golden SOAP runs from the authors' released optimizer, for tests/test_optim_soap.py.

The released file is not part of this repository; this script imports it from a path you give. To regenerate
(only on purpose, and say why in the commit):

    git clone https://github.com/nikhilvyas/SOAP /tmp/SOAP
    git -C /tmp/SOAP checkout a1e553530fde97d0e6b307d7c82ac6d38b072340
    PYTHONPATH=src python tests/golden/make_soap_official.py /tmp/SOAP/soap.py > tests/golden/soap_official.json

Every factor SOAP rotates is full rank at every refresh: a factor with a null space (a 97-token vocabulary
fed 64 tokens a batch, a 64 x 32 gradient's 64 x 64 factor) has an eigenbasis there that LAPACK picks
arbitrarily, differently on another CPU, and the runs then part by ~1e-3 after the first refresh. So the
models are square where they are fully rotated (vocab = hidden = ffn = 32), every batch holds every token,
and the one-sided run leaves the 48-wide side of the MLP unrotated (max_precond_dim 40). Twelve fp32 steps of
backward + step + zero_grad on a tiny LLaMA (our ``build_llama``, seed 0), batches
``torch.randint(0, vocab, (8, 64), generator=manual_seed(1000 + step))``; losses before each step, the
parameters after the last (sum, abs_sum in float64, first 6 entries).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from _released import load_released

from optsweep.models.llama import ModelSpec, build_llama

STEPS, ROWS, SEQ_LEN = 12, 8, 64
COMMIT = "a1e553530fde97d0e6b307d7c82ac6d38b072340"
MODELS = {
    "square": {"name": "t", "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 4, "vocab_size": 32},
    "wide_mlp": {"name": "t", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "vocab_size": 32},
}
# key: (model, the official call's keyword arguments); ours take the same names
RUNS = {
    "default": ("square", {"lr": 3e-3, "betas": (0.95, 0.95), "weight_decay": 0.01, "precondition_frequency": 3}),
    "one_sided": ("wide_mlp", {"lr": 3e-3, "betas": (0.95, 0.95), "weight_decay": 0.01,
                               "precondition_frequency": 3, "max_precond_dim": 40, "shampoo_beta": 0.9}),
}


def batch(step: int, vocab_size: int) -> torch.Tensor:
    x = torch.randint(0, vocab_size, (ROWS, SEQ_LEN), generator=torch.Generator().manual_seed(1000 + step))
    assert len(x.unique()) == vocab_size, "a batch without every token leaves a null space in the embedding's factor"
    return x


def run(module, model_key: str, options: dict) -> dict:
    spec = ModelSpec(**MODELS[model_key])
    torch.manual_seed(0)
    model = build_llama(spec)
    initial = sum(p.double().abs().sum().item() for p in model.parameters())
    optimizer = module.SOAP(model.parameters(), **options)
    losses = []
    for step in range(STEPS):
        x = batch(step, spec.vocab_size)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    params = {n: {"sum": p.double().sum().item(), "abs_sum": p.double().abs().sum().item(),
                  "head": p.detach().flatten()[:6].tolist()} for n, p in model.named_parameters()}
    ours = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    return {"official_call": f"SOAP(model.parameters(), {', '.join(f'{k}={v}' for k, v in options.items())})",
            "model": MODELS[model_key], "batch": [ROWS, SEQ_LEN], "our_options": ours,
            "initial_abs_sum": initial, "losses": losses, "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("soap_py", help="path to the released soap.py")
    args = parser.parse_args()
    module, digest = load_released(args.soap_py, "released_soap")
    torch.set_num_threads(1)
    golden = {
        "how": f"github nikhilvyas/SOAP commit {COMMIT}, soap.py (MIT, SHA-256 {digest}), imported from a path "
               f"by tests/golden/make_soap_official.py (its docstring says what runs); torch {torch.__version__} "
               "CPU, fp32, one thread.",
        "runs": {key: run(module, model_key, options) for key, (model_key, options) in RUNS.items()},
    }
    sys.stdout.write(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
