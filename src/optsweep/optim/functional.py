"""Update math shared by several optimizers, written once.

``adamw_`` is the AdamW step (decoupled weight decay, bias-corrected step size) that SCALE uses for its 1-D
weights and Muon for its auxiliary parameters. By default it is torch.optim.AdamW's arithmetic in foreach
form (eps added to sqrt(v_hat)), so it matches it exactly; ``eps_before_bias_correction`` gives the other
common form, eps added to the raw sqrt(v) (the SCALE authors' optimizer).
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
    eps_before_bias_correction: bool = False,
) -> None:
    """One in-place AdamW step over lists of same-device tensors; ``step`` counts from 1.

    ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` (torch), or with ``eps_before_bias_correction``
    ``p -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)``: the same step with an effective
    eps 1/sqrt(1 - beta2^t) times larger (32x at step 1 for beta2 = 0.999, 1.26x at step 1000).
    """
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
    if eps_before_bias_correction:
        torch._foreach_add_(denom, eps)
        step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    else:
        torch._foreach_div_(denom, math.sqrt(bias_correction2))
        torch._foreach_add_(denom, eps)
        step_size = lr / bias_correction1
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size)
