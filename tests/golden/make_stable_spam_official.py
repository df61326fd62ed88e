"""Golden Stable-SPAM trajectories from the authors' released optimizer, for tests/test_stable_spam_official.py.

The released file is not part of this repository; this script imports it from a path you give. To regenerate
(only on purpose, and say why in the commit):

    git clone https://github.com/TianjinYellow/StableSPAM /tmp/StableSPAM
    git -C /tmp/StableSPAM checkout 6a66da1ea7005f7fe7bc570b7968144b42163bed
    python tests/golden/make_stable_spam_official.py /tmp/StableSPAM/galore_torch/stablespam.py \
        > tests/golden/stable_spam_official.json

What it does: for each case below, two fp32 parameters (a 6 x 5 matrix and a 5-vector, fixed seeded values)
get 12 steps of the released ``StableSPAM`` with fixed seeded gradients. The gradients of steps 3 and 8 carry
a spike (one matrix entry x 50, the vector x 20) so that AdaClip clips; ``update_proj_gap`` 5 resets the
moments (MoRet) at steps 5 and 10; ``total_T`` 12 decays gamma1 and beta1 on the released cosine. The JSON
holds the hyperparameters, the initial values, every step's gradient and the parameters after every step,
plus the commit and SHA-256 of the file that made them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import torch
from _released import load_released

STEPS = 12
SPIKES = {3, 8}  # 1-based steps whose gradient carries a spike
SHAPES = {"weight": (6, 5), "bias": (5,)}
CASES = {
    # the released C4 script's hyperparameters (scripts_BF16/stablespam.sh), with weight decay switched on
    "script": {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "gamma1": 0.85,
               "gamma2": 0.99999, "gamma3": 0.999, "total_T": STEPS, "eta_min": 0.5, "update_proj_gap": 5},
    # faster statistics so AdaGN's second moment and AdaClip's threshold move within 12 steps
    "fast_stats": {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0, "gamma1": 0.7,
                   "gamma2": 0.9, "gamma3": 0.5, "total_T": STEPS, "eta_min": 0.3, "update_proj_gap": 5},
}


def initial_values(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in SHAPES.items()}


def gradients(seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for step in range(1, STEPS + 1):
        grads = {name: 0.1 * torch.randn(shape, generator=gen) for name, shape in SHAPES.items()}
        if step in SPIKES:
            grads["weight"][2, 3] *= 50.0
            grads["bias"] *= 20.0
        steps.append(grads)
    return steps


def run_case(module, hyperparameters: dict, seed: int) -> dict:
    start = initial_values(seed)
    params = {name: torch.nn.Parameter(value.clone()) for name, value in start.items()}
    optimizer = module.StableSPAM(list(params.values()), **hyperparameters)
    grads = gradients(seed + 1)
    after = []
    for step_grads in grads:
        for name, p in params.items():
            p.grad = step_grads[name].clone()  # the released code clips p.grad in place
        optimizer.step()
        after.append({name: p.detach().tolist() for name, p in params.items()})
    return {"hyperparameters": hyperparameters, "seed": seed,
            "initial": {name: value.tolist() for name, value in start.items()},
            "grads": [{name: g.tolist() for name, g in step.items()} for step in grads],
            "params_after_step": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stablespam_py", help="path to the released galore_torch/stablespam.py")
    args = parser.parse_args()
    module, digest = load_released(args.stablespam_py, "released_stablespam")
    torch.set_num_threads(1)
    golden = {
        "source": {"repository": "https://github.com/TianjinYellow/StableSPAM",
                   "commit": "6a66da1ea7005f7fe7bc570b7968144b42163bed",
                   "file": "galore_torch/stablespam.py", "sha256": digest},
        "made_with": {"command": "python tests/golden/make_stable_spam_official.py <StableSPAM>/galore_torch/"
                                 "stablespam.py > tests/golden/stable_spam_official.json",
                      "torch": torch.__version__, "dtype": "float32"},
        "cases": {name: run_case(module, hp, seed=10 * i) for i, (name, hp) in enumerate(CASES.items())},
    }
    text = json.dumps(golden, indent=1)
    # one line per innermost list of numbers, so the file stays readable and diffs stay local
    text = re.sub(r"\[[^\[\]{}]*\]", lambda m: " ".join(m.group(0).split()), text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
