"""AdEMAMix (Pagliardini, Ablin, Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", arXiv 2409.03137).

Adam whose numerator mixes two EMAs of the gradient: the usual fast one (beta1, bias-corrected) and a slow one
(beta3 ~ 0.9999, not bias-corrected) weighted by alpha. Both alpha and beta3 are warmed up over the run, as
the paper does for language models (alpha linearly from 0; beta3 from beta1, linearly in half-life), else the
slow EMA's early values destabilise training.

Source of truth: the authors' PyTorch optimizer, github apple/ml-ademamix ``pytorch/ademamix.py`` (MIT);
tests/test_optim_ademamix.py checks this file against per-step losses and weights that code produced
(tests/golden/ademamix_official.json). The code here is the project's own; the beta3 schedule is the paper's
closed form (the released code adds 1e-8 to beta inside a logarithm, which moves beta3(t) by ~1e-8).

The authors train every parameter with AdEMAMix (no AdamW part): ``for_model`` groups by role for logs only.
State per parameter: three tensors shaped like it (m1, m2, nu; m1 is not kept when beta1 = 0), 1.5x AdamW's.
Element-wise, so under FSDP2 each rank steps its own shard as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from optsweep.optim import sharding
from optsweep.optim.base import ForModel, PerParameter, check_options


def alpha_schedule(step: int, alpha: float, warmup: int | None) -> float:
    """alpha(t) = min(t alpha / T_alpha, alpha) (the paper's linear warmup from 0)."""
    if not warmup:
        return alpha
    return min(step * alpha / warmup, alpha)


def _half_life(beta: float) -> float:
    return 0.0 if beta == 0.0 else math.log(0.5) / math.log(beta)


def beta3_schedule(step: int, beta3: float, beta_start: float, warmup: int | None) -> float:
    """beta3(t): the half-life ln(0.5)/ln(beta) moves linearly from beta_start's to beta3's over T_beta3 steps.

    Equal to the paper's exp(ln(b_s) ln(b3) / ((1 - t/T) ln(b3) + (t/T) ln(b_s))), capped at beta3.
    """
    if not warmup or step >= warmup:
        return beta3
    a = step / warmup
    half_life = (1 - a) * _half_life(beta_start) + a * _half_life(beta3)
    return 0.0 if half_life == 0.0 else min(0.5 ** (1 / half_life), beta3)


def ademamix_direction(
    grad: Tensor,
    m1: Tensor | None,
    m2: Tensor,
    nu: Tensor,
    step: int,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
) -> Tensor:
    """The paper's Algorithm 1, one step without the weight decay: moves the EMAs in place, returns

        m1 = beta1 m1 + (1 - beta1) g,   m2 = beta3 m2 + (1 - beta3) g,   nu = beta2 nu + (1 - beta2) g^2
        (m1 / (1 - beta1^t) + alpha m2) / (sqrt(nu / (1 - beta2^t)) + eps)

    (``m1 is None``: beta1 = 0, the fast EMA is the gradient itself.)
    """
    if m1 is None:
        fast = grad
    else:
        fast = m1.mul_(beta1).add_(grad, alpha=1 - beta1)
    m2.mul_(beta3).add_(grad, alpha=1 - beta3)
    nu.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    # two temporaries the size of the weight (the numerator and the denominator), none more
    denom = nu.sqrt().div_(math.sqrt(1 - beta2**step)).add_(eps)
    return fast.div(1 - beta1**step).add_(m2, alpha=alpha).div_(denom)


class AdEMAMix(ForModel, PerParameter, torch.optim.Optimizer):
    """AdEMAMix with the paper's alpha and beta3 warmups. ``p <- p - lr (direction + wd p)``."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        beta3: float = 0.9999,
        alpha: float = 8.0,
        beta3_warmup: int | None = None,
        alpha_warmup: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if len(betas) != 2:
            raise ValueError(f"betas must be two numbers (beta1, beta2), got {tuple(betas)}")
        check_options(lr, betas, unit={"beta3": beta3},
                      non_negative={"alpha": alpha, "eps": eps, "weight_decay": weight_decay})
        for name, value in (("beta3_warmup", beta3_warmup), ("alpha_warmup", alpha_warmup)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be a step count >= 0 or None, got {value}")
        defaults = {"lr": lr, "betas": tuple(betas), "beta3": beta3, "alpha": alpha, "beta3_warmup": beta3_warmup,
                    "alpha_warmup": alpha_warmup, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def update(self, p: Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            if beta1 != 0.0:
                state["exp_avg_fast"] = torch.zeros_like(p)
            state["exp_avg_slow"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        fast = state.get("exp_avg_fast")
        direction = ademamix_direction(
            sharding.local(p.grad), None if fast is None else sharding.local(fast),
            sharding.local(state["exp_avg_slow"]), sharding.local(state["exp_avg_sq"]), t,
            beta1=beta1, beta2=beta2,
            beta3=beta3_schedule(t, group["beta3"], beta1, group["beta3_warmup"]),
            alpha=alpha_schedule(t, group["alpha"], group["alpha_warmup"]), eps=group["eps"],
        )
        param = sharding.local(p)
        param.add_(direction.add_(param, alpha=group["weight_decay"]), alpha=-group["lr"])
