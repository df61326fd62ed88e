"""Update math shared by several optimizers, written once.

``adamw_`` is the AdamW step (decoupled weight decay, bias-corrected step size, eps added to sqrt(v)) that
SCALE uses for its 1-D weights, Muon for its auxiliary parameters and the low-rank methods for everything
they do not project. It is torch.optim.AdamW's arithmetic in foreach form, so it matches it exactly.
"""

from __future__ import annotations

import math

import torch


def adamw_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One in-place AdamW step over lists of same-device tensors; ``step`` counts from 1."""
    if not params:
        return
    if weight_decay:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(bias_correction2))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr / bias_correction1)


def adam_direction(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    beta1: float,
    beta2: float,
    eps: float,
) -> torch.Tensor:
    """Update the moments in place and return Adam's bias-corrected direction m_hat / (sqrt(v_hat) + eps).

    The low-rank methods (GaLore, Fira, APOLLO) apply Adam in a projected space and need the direction
    itself rather than an applied step.
    """
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)
    return (exp_avg / bias_correction1) / denom
