"""SOAP (Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv 2409.11321).

Adam run in the eigenbasis of Shampoo's preconditioner. Semantics of the official optimizer, github
nikhilvyas/SOAP ``soap.py`` (MIT), commit a1e5535; the code here is the project's own. For a matrix
G (m x n), each side of size <= ``max_precond_dim`` keeps a Shampoo factor and its eigenbasis:

    L <- lerp(L, G G^T, 1 - shampoo_beta),   R <- lerp(R, G^T G, 1 - shampoo_beta)
    G' = Q_L^T G Q_R                                   (a side without a factor: identity)
    m <- beta1 m + (1 - beta1) G',  v <- beta2 v + (1 - beta2) G'^2        (m and v live in the eigenbasis)
    p <- p - lr sqrt(1 - beta2^t) / (1 - beta1^t) * Q_L (m / (sqrt(v) + eps)) Q_R^T
    p <- p - lr wd p                                   (decoupled weight decay, after the step, as released)

The first call only builds L, R and their eigenbases (``torch.linalg.eigh``, eigenvalues descending) and
leaves the weights alone, so a gradient never preconditions itself. The factors are updated after every
step; every ``precondition_frequency`` steps the eigenbases are refreshed by one power iteration and a QR
decomposition (Q <- qr(L Q), columns first sorted by their estimated eigenvalue diag(Q^T L Q), and v's
entries permuted alike), and m is carried into the new basis (Q_new^T Q_old m ...).

Every parameter is SOAP's, as in the official code: 1-D weights are Adam with SOAP's betas (their factor
only with ``precondition_1d``), and a dimension above ``max_precond_dim`` (10000, "excludes most common
vocab sizes") is left unrotated, so the embedding and lm_head of the paper's models (vocab 32000) are
preconditioned on the hidden side only.

Arithmetic follows the released code operation for operation (tensordot contractions, m rotated back to
the parameter's basis before every factor update and forward again after it, the bias correction folded into
the step size): the factors of the embedding and lm_head are rank-deficient (tokens not seen yet), so the
bases of their null spaces are set by rounding, and any other summation order gives a different, equally
valid, basis and visibly different weights after a refresh. With it, a 12-step fp32 run equals the released
optimizer's bit for bit (tests/test_optim_soap.py).

Differences from the released code: tensors of more than 2 dimensions (convolutions: ``merge_dims``,
``data_format``) are not supported; state is kept as tensors under flat keys (``L``, ``R``, ``Q_L``,
``Q_R``) rather than lists mixing tensors and empty lists; bf16 gradients and moments are rotated in float32
(the released code cannot mix them with its float32 factors).

Under FSDP2 each gradient is gathered whole, every rank keeps the whole state (identical everywhere: same
gradient, same deterministic decompositions) and applies its own rows of the update. The state is therefore
not sharded: the factors and eigenbases need the whole matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from optsweep.optim import sharding
from optsweep.optim.base import ForModel, PerParameter, check_options

SIDES = ("L", "R")


def _rotate(g: Tensor, bases: Sequence[Tensor | None], contract: int) -> Tensor:
    """Contract each dim of g in turn with its basis (``contract`` = 0: Q^T x, 1: Q x), cycling the dims so
    that each comes first once; a dim without a basis is only cycled. The released code's tensordot sequence,
    kept operation for operation: the bases of rank-deficient factors (tokens absent from the batches so far)
    are fixed by rounding, so a different summation order leads to a different, equally valid, basis."""
    for q in bases:
        if q is not None:
            g = torch.tensordot(g.to(q.dtype), q, dims=[[0], [contract]])
        else:
            g = g.permute([*range(1, g.ndim), 0])
    return g


def project(g: Tensor, q_left: Tensor | None, q_right: Tensor | None) -> Tensor:
    """Q_L^T G Q_R, a missing side being the identity (a 1-D g: Q_L^T g). Computed in the bases' dtype
    (float32, as released), so bf16 moments are rotated in float32."""
    return _rotate(g, (q_left, q_right)[: g.ndim], contract=0)


def project_back(g: Tensor, q_left: Tensor | None, q_right: Tensor | None) -> Tensor:
    """Q_L G Q_R^T: the inverse of ``project`` (the Q are orthogonal)."""
    return _rotate(g, (q_left, q_right)[: g.ndim], contract=1)


def soap_direction(
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    q_left: Tensor | None,
    q_right: Tensor | None,
    beta1: float,
    beta2: float,
    eps: float,
) -> Tensor:
    """Adam in the eigenbasis: update m and v (both in the basis) in place, return m / (sqrt(v) + eps)
    back in the parameter's basis (to be multiplied by -``step_size``)."""
    rotated = project(grad, q_left, q_right)
    exp_avg.mul_(beta1).add_(rotated, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).add_(rotated.square(), alpha=1 - beta2)
    return project_back(exp_avg / exp_avg_sq.sqrt().add_(eps), q_left, q_right)


def step_size(lr: float, step: int, beta1: float, beta2: float) -> float:
    """Adam's bias correction folded into the learning rate (eps stays outside it, as released)."""
    return lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)


def eigenbasis(factor: Tensor) -> Tensor:
    """Eigenvectors of a symmetric factor, by descending eigenvalue, computed in float32 (float64 if that
    fails), returned in the factor's dtype."""
    matrix = factor.float()
    try:
        _, q = torch.linalg.eigh(matrix + 1e-30 * torch.eye(matrix.shape[0], device=matrix.device))
    except torch.linalg.LinAlgError:
        matrix = matrix.double()
        identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        _, q = torch.linalg.eigh(matrix + 1e-30 * identity)
    return torch.flip(q, [1]).to(factor.dtype)


def refresh_eigenbasis(factor: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """One power iteration and a QR step on the sorted basis: (new Q, the sort order of the old columns).

    L Q is computed once and serves both the eigenvalue estimates diag(Q^T L Q) = colsum(Q * L Q) and the
    power iteration L Q[:, order] (the released code multiplies three times: at a 4096-token vocabulary
    that is most of a step's time)."""
    matrix, basis = factor.float(), q.float()
    power = matrix @ basis
    order = torch.argsort((basis * power).sum(dim=0), descending=True)
    new_q, _ = torch.linalg.qr(power[:, order])
    return new_q.to(q.dtype), order


class SOAP(ForModel, PerParameter, torch.optim.Optimizer):
    """SOAP: Adam in the eigenbasis of Shampoo's preconditioner, on every parameter. See the module docstring."""

    def __init__(
        self,
        params,
        lr: float = 3e-3,
        betas: Sequence[float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        precondition_1d: bool = False,
        normalize_grads: bool = False,
    ) -> None:
        check_options(lr, betas)
        if precondition_frequency < 1:
            raise ValueError(f"precondition_frequency must be >= 1, got {precondition_frequency}")
        if shampoo_beta is not None and not 0.0 <= shampoo_beta < 1.0:
            raise ValueError(f"shampoo_beta must lie in [0, 1) or be null (= betas[1]), got {shampoo_beta}")
        defaults = {"lr": lr, "betas": tuple(betas), "shampoo_beta": shampoo_beta, "eps": eps,
                    "weight_decay": weight_decay, "precondition_frequency": precondition_frequency,
                    "max_precond_dim": max_precond_dim, "precondition_1d": precondition_1d,
                    "normalize_grads": normalize_grads}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim > 2:
                    raise ValueError(f"SOAP here takes 1-D and 2-D parameters, got one of shape {tuple(p.shape)}")

    def update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        grad = sharding.full_tensor(p.grad)  # the one all-gather of this parameter under FSDP2
        beta1, beta2 = group["betas"]
        shampoo_beta = beta2 if group["shampoo_beta"] is None else group["shampoo_beta"]
        if not state:  # build the factors and bases from this gradient; no step yet
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
            for side, size in self._sides(grad, group):
                state[side] = torch.zeros(size, size, dtype=torch.float32, device=grad.device)
            self._update_factors(state, grad, shampoo_beta)
            for side, _ in self._sides(grad, group):
                state[f"Q_{side}"] = eigenbasis(state[side])
            return
        state["step"] += 1
        q_left, q_right = state.get("Q_L"), state.get("Q_R")
        direction = soap_direction(grad, state["exp_avg"], state["exp_avg_sq"], q_left, q_right, beta1, beta2,
                                   group["eps"])
        if group["normalize_grads"]:
            direction = direction / (1e-30 + direction.square().mean().sqrt())
        param = sharding.local(p)
        param.add_(sharding.keep_local(direction, p), alpha=-step_size(group["lr"], state["step"], beta1, beta2))
        if group["weight_decay"] > 0.0:
            param.add_(param, alpha=-group["lr"] * group["weight_decay"])
        rotated = q_left is not None or q_right is not None
        if rotated:  # m back to the parameter's basis before the factors move, as released
            dtype = state["exp_avg"].dtype
            exp_avg = project_back(state["exp_avg"], q_left, q_right)
        self._update_factors(state, grad, shampoo_beta)
        if rotated and state["step"] % group["precondition_frequency"] == 0:
            self._refresh_bases(state)
        if rotated:
            state["exp_avg"] = project(exp_avg, state.get("Q_L"), state.get("Q_R")).to(dtype)

    @staticmethod
    def _sides(grad: Tensor, group: dict) -> list[tuple[str, int]]:
        """The sides of ``grad`` that get a Shampoo factor: ("L", rows) and/or ("R", cols)."""
        limit = group["max_precond_dim"]
        if grad.ndim == 1:
            return [("L", grad.shape[0])] if group["precondition_1d"] and grad.shape[0] <= limit else []
        return [(side, size) for side, size in zip(SIDES, grad.shape) if size <= limit]

    @staticmethod
    def _update_factors(state: dict, grad: Tensor, shampoo_beta: float) -> None:
        g = grad.float()  # the factors are float32, as released
        if g.ndim == 1:
            if "L" in state:
                state["L"].lerp_(g.unsqueeze(1) @ g.unsqueeze(0), 1 - shampoo_beta)
            return
        for dim, side in enumerate(SIDES):  # G G^T and G^T G: contract every other dim
            if side in state:
                others = [d for d in range(g.ndim) if d != dim]
                state[side].lerp_(torch.tensordot(g, g, dims=[others, others]), 1 - shampoo_beta)

    @staticmethod
    def _refresh_bases(state: dict) -> None:
        """New eigenbases by power iteration + QR; v's entries follow their sorted columns."""
        for dim, side in enumerate(SIDES):
            if side in state:
                state[f"Q_{side}"], order = refresh_eigenbasis(state[side], state[f"Q_{side}"])
                state["exp_avg_sq"] = state["exp_avg_sq"].index_select(dim, order)
