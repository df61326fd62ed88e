"""AdamW for the weights a matrix method leaves out, written once.

SCALE trains its 1-D weights with AdamW; Muon, NorMuon and SWAN train the embedding, lm_head and 1-D weights
with it. All four spell its options the same way in their yaml: ``adam_lr`` (None: the matrices' ``lr``),
``adam_betas``, ``adam_eps``; the param groups carry ``adam_betas`` and ``adam_eps``.

``adamw_`` is torch.optim.AdamW's arithmetic in foreach form (eps added to sqrt(v_hat)), so it matches it
exactly; ``eps_before_bias_correction`` gives the other common form, eps added to the raw sqrt(v) (the SCALE
authors' optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from optsweep.optim import sharding
from optsweep.optim.base import closure_loss
from optsweep.optim.groups import infer_role, role_groups, split_parameters


def adamw_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
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


def aux_adamw_step(state: dict, params: Iterable[Tensor], group: dict, eps_before_bias_correction: bool = False
                   ) -> None:
    """AdamW on ``params`` with the group's ``lr``, ``adam_betas``, ``adam_eps`` and ``weight_decay``.

    State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq`` (shaped like the parameter, so sharded
    under FSDP2). Math runs on local shards: AdamW is element-wise.
    """
    by_step: dict[int, list[Tensor]] = {}
    for p in params:
        st = state[p]
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        st["step"] += 1
        by_step.setdefault(st["step"], []).append(p)
    beta1, beta2 = group["adam_betas"]
    for step, ps in by_step.items():  # one bucket unless parameters started at different steps
        adamw_(
            [sharding.local(p) for p in ps],
            [sharding.local(p.grad) for p in ps],
            [sharding.local(state[p]["exp_avg"]) for p in ps],
            [sharding.local(state[p]["exp_avg_sq"]) for p in ps],
            step=step, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["adam_eps"],
            weight_decay=group["weight_decay"], eps_before_bias_correction=eps_before_bias_correction,
        )


def adam_lr_groups(model: nn.Module, lr: float, adam_lr: float | None, roles: Iterable[str]) -> list[dict]:
    """``model``'s parameters split by role, the groups of ``roles`` at ``adam_lr`` (None: ``lr``)."""
    adam = {"lr": lr if adam_lr is None else adam_lr}
    return role_groups(split_parameters(model), {role: adam for role in roles})


def split_by_role(group: dict, params: Iterable[Tensor], matrix_role: str = "hidden"):
    """(matrix params, other params) of a group, by its "role" or, without one, by each tensor's ndim."""
    role = group.get("role")
    matrices, others = [], []
    for p in params:
        (matrices if (role or infer_role(p)) == matrix_role else others).append(p)
    return matrices, others


def apply_update_(p: Tensor, update: Tensor, lr: float, weight_decay: float, scale: float = 1.0) -> None:
    """``p <- p (1 - lr wd) - lr scale update`` for a whole-matrix ``update``; each rank applies its own rows."""
    param = sharding.local(p)
    if weight_decay:
        param.mul_(1 - lr * weight_decay)
    param.add_(sharding.keep_local(update, p), alpha=-lr * scale)


class HiddenMatrixOptimizer(torch.optim.Optimizer):
    """Base of the methods that update hidden matrices by their own rule and everything else by AdamW
    (Muon, NorMuon, SWAN): a subclass writes ``matrix_update(p, group)``, the rest is here."""

    def matrix_update(self, p: Tensor, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            matrices, others = split_by_role(group, (p for p in group["params"] if p.grad is not None))
            for p in matrices:
                self.matrix_update(p, group)
            aux_adamw_step(self.state, others, group)
        return loss
