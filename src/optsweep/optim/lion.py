"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675), on every weight.

Source of truth: the authors' PyTorch optimizer, github google/automl ``lion/lion_pytorch.py`` (Apache-2.0);
tests/test_optim_lion.py checks this file against per-step losses and weights that code produced
(tests/golden/lion_official.json). The code here is the project's own.

The authors train every parameter with Lion (no AdamW part), so ``for_model`` groups parameters by role only
for logs; every role gets the same hyperparameters. State: one momentum buffer per parameter, half of
AdamW's. The update is element-wise, so under FSDP2 each rank steps its own shard as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from optsweep.optim import sharding
from optsweep.optim.base import ForModel, PerParameter, check_options


def lion_update(grad: Tensor, exp_avg: Tensor, beta1: float, beta2: float) -> Tensor:
    """The paper's Algorithm 2 (without the weight decay): returns the update, moves the momentum in place.

        c_t = beta1 m_{t-1} + (1 - beta1) g_t
        u_t = sign(c_t)
        m_t = beta2 m_{t-1} + (1 - beta2) g_t
    """
    update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()  # one temporary, the size of the weight
    exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
    return update


class Lion(ForModel, PerParameter, torch.optim.Optimizer):
    """Lion: ``p <- p (1 - lr wd) - lr sign(beta1 m + (1 - beta1) g)``, then ``m <- lerp(m, g, 1 - beta2)``."""

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        check_options(lr, betas, non_negative={"weight_decay": weight_decay})
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    def update(self, p: Tensor, group: dict) -> None:
        lr, (beta1, beta2) = group["lr"], group["betas"]
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
        param = sharding.local(p)
        param.mul_(1 - lr * group["weight_decay"])
        update = lion_update(sharding.local(p.grad), sharding.local(state["exp_avg"]), beta1, beta2)
        param.add_(update, alpha=-lr)
