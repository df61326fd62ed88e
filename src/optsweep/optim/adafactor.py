"""Adafactor (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", arXiv 1804.04235).

Algorithms 4 (matrices: the second moment kept as a row and a column factor) and 5 (vectors: kept whole) of
the paper, with its defaults: no momentum, beta2_t = 1 - t^-0.8, eps1 = 1e-30 added to G^2, eps2 = 1e-3,
update clipping d = 1, relative step size rho_t = min(lr, 1/sqrt(t)) scaled by max(eps2, RMS(X_{t-1})).
``lr`` is the paper's cap of rho (1e-2); a scheduler moves it as it moves any lr (torch.optim.Adafactor's
reading). Weight decay, which the paper does not define, is torch's: ``p *= 1 - lr wd``.

Source of truth: tensor2tensor's ``adafactor.py`` (the authors'; TensorFlow) through its PyTorch port in
fairseq, as shipped in ``transformers.optimization.Adafactor`` (Apache-2.0); tests/test_optim_adafactor.py
checks this file against numbers that code produced (tests/golden/adafactor_official.json).

Why not ``torch.optim.Adafactor``: its eps1 is a clamp, not an addend. With the paper's eps1 = 1e-30 the clamp
of V_hat at eps1^2 underflows to 0 and an embedding row that never had a gradient becomes 0 * inf = NaN; with
its default eps1 (the dtype's machine epsilon: 1.2e-7 in fp32, 7.8e-3 in bf16) it clamps the row factor's
mean and V_hat, which changes the update of every tensor whose mean squared gradient is below that (in bf16,
gradients below 7.8e-3). It also calls ``.item()`` three times per tensor, so it cannot step on the meta
device (the memory report) and syncs with the GPU.

State: a row factor (rows) and a column factor (cols) per matrix (factored over its last two dims), a full
second moment per vector, and a step count. Under FSDP2 the factors need statistics over the whole matrix,
so each matrix's gradient is gathered, the update is computed on it identically on every rank (the factors
are replicated, not sharded) and each rank keeps its own rows; RMS(X) is an all-reduced sum of squares.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from optsweep.optim import sharding
from optsweep.optim.base import ForModel, PerParameter, check_options


def _rms(x: Tensor) -> Tensor:
    return x.norm(2) / math.sqrt(x.numel())


def adafactor_direction(
    grad: Tensor,
    row: Tensor | None,
    col: Tensor | None,
    second_moment: Tensor | None,
    beta2: float,
    eps1: float,
    d: float,
) -> Tensor:
    """The paper's Algorithms 4 and 5 up to U_hat (the step size alpha_t is applied by the caller).

    Matrix (row, col given):  R = beta2 R + (1 - beta2) mean_cols(G^2 + eps1)
                              C = beta2 C + (1 - beta2) mean_rows(G^2 + eps1)
                              V_hat = R C / mean(R)
    Vector:                   V_hat = beta2 V_hat + (1 - beta2) (G^2 + eps1)
    Both:                     U = G / sqrt(V_hat),   U_hat = U / max(1, RMS(U) / d)

    (Means instead of the paper's sums: the same V_hat, and no overflow for large matrices.)
    """
    # mean(G^2 + eps1) as a squared norm / size + eps1: no temporary the size of G
    if row is not None and col is not None:
        row_mean = torch.linalg.vector_norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)).add_(eps1)
        col_mean = torch.linalg.vector_norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)).add_(eps1)
        row.mul_(beta2).add_(row_mean, alpha=1 - beta2)
        col.mul_(beta2).add_(col_mean, alpha=1 - beta2)
        update = (row / row.mean(dim=-2, keepdim=True)).rsqrt_() * col.rsqrt()
    else:
        second_moment.mul_(beta2).addcmul_(grad, grad, value=1 - beta2).add_((1 - beta2) * eps1)
        update = second_moment.rsqrt()
    update.mul_(grad)
    return update.div_((_rms(update) / d).clamp_(min=1.0))


class Adafactor(ForModel, PerParameter, torch.optim.Optimizer):
    """Adafactor without momentum, as the paper's Algorithms 4 and 5. See the module docstring."""

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps1: float = 1e-30,
        eps2: float = 1e-3,
        d: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        check_options(lr, non_negative={"eps1": eps1, "eps2": eps2, "weight_decay": weight_decay})
        if beta2_decay > 0.0:
            raise ValueError(f"beta2_decay must be <= 0 (beta2_t = 1 - t^beta2_decay), got {beta2_decay}")
        if d < 1.0:
            raise ValueError(f"the clipping threshold d must be >= 1, got {d}")
        defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps1": eps1, "eps2": eps2, "d": d, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def update(self, p: Tensor, group: dict) -> None:
        grad = sharding.full_tensor(p.grad)  # the factors are statistics of the whole matrix
        state = self.state[p]
        if not state:
            state["step"] = 0
            if grad.ndim > 1:
                state["row"] = grad.new_zeros((*grad.shape[:-1], 1))
                state["col"] = grad.new_zeros((*grad.shape[:-2], 1, grad.shape[-1]))
            else:
                state["second_moment"] = torch.zeros_like(grad)
        state["step"] += 1
        t = state["step"]
        lr = group["lr"]
        eps1, eps2 = group["eps1"], group["eps2"]
        param = sharding.local(p)
        # alpha_t = max(eps2, RMS(X_{t-1})) rho_t, a 0-d tensor: no sync with the device
        precise = param.to(torch.promote_types(param.dtype, torch.float32))
        sum_sq = sharding.all_reduce_sharded(precise.square().sum(), p, tuple(range(p.ndim)))
        alpha = torch.sqrt(sum_sq / p.numel()).clamp_(min=eps2) * min(lr, 1.0 / math.sqrt(t))
        direction = adafactor_direction(grad, state.get("row"), state.get("col"), state.get("second_moment"),
                                        beta2=1.0 - t ** group["beta2_decay"], eps1=eps1, d=group["d"])
        if group["weight_decay"]:
            param.mul_(1.0 - lr * group["weight_decay"])
        param.sub_(sharding.keep_local(direction.mul_(alpha.to(direction.dtype)), p))
