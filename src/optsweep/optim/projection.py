"""What GaLore, Fira and APOLLO share: the projectors and one Adam-in-a-subspace step loop.

The three official repositories (jiaweizzhao/GaLore, xichen-fy/Fira, zhuhanqing/APOLLO) grew from one file,
GaLore's ``galore_torch/adamw.py``, and keep its skeleton. This module is that skeleton, written once; each
method only says how it turns the projected Adam output into a full-size update (``LowRankAdam.update``).

The skeleton, for a hidden matrix (attention/MLP weight, role ``hidden``) with gradient G of shape (m, n):

- Side ("std" projection type in all three repos): if m >= n a *right* projector P of shape (r, n) and
  R = G P^T of shape (m, r); if m < n a *left* projector P of shape (m, r) and R = P^T G of shape (r, n).
  So the projector holds r x min(m, n) numbers and the moments r x max(m, n), as the paper's memory
  column assumes. Back-projection is R P (right) or P R (left).
- Refresh: a new projector on the step whose count of *completed* steps is a multiple of
  ``update_proj_gap``, i.e. steps 1, gap + 1, 2 gap + 1, ... (GaLore's ``project(grad, state["step"])`` is
  called before ``state["step"] += 1``). pytorch-optimizer's port refreshes one step earlier; this does not.
- Adam on R with the arithmetic of transformers' old AdamW, which the three repos copy and also use for
  every other parameter (embeddings, lm_head, norms) at the same lr:
      m = b1 m + (1 - b1) R,   v = b2 v + (1 - b2) R^2,   N = m / (sqrt(v) + eps)
      p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * update(N),   then p -= lr * wd * p
  eps (default 1e-6) sits on the *uncorrected* sqrt(v): not torch.optim.AdamW's arithmetic, so the
  non-projected parameters do not go through ``functional.adamw_``.

Numerics: the update is computed in fp32 (the gradient is upcast, the SVD runs in fp32); the state is kept
in the parameter's dtype (bf16 state for bf16 training, as the official runs do). Every floating state entry
has the parameter's dtype so that ``Optimizer.load_state_dict``, which casts floating state to it, is exact.

Under FSDP2 a hidden matrix's gradient is gathered whole (``sharding.full_tensor``); every rank computes the
same update from it (same SVD input, same seeded random matrix) and keeps its own rows. The projected
moments, the projector and the limiter's norm are therefore plain tensors identical on every rank.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch

from optsweep.optim import sharding
from optsweep.optim.base import check_options, closure_loss
from optsweep.optim.groups import infer_role

# Both Fira and APOLLO add this to the denominators of their norm ratios and limiter.
NORM_EPS = 1e-8


def projection_side(shape: torch.Size | tuple[int, ...]) -> str:
    """GaLore's "std" type: project the smaller dimension away ("right" when rows >= cols)."""
    return "right" if shape[0] >= shape[1] else "left"


def project(grad: torch.Tensor, projector: torch.Tensor, side: str) -> torch.Tensor:
    return grad @ projector.T if side == "right" else projector.T @ grad


def project_back(low_rank: torch.Tensor, projector: torch.Tensor, side: str) -> torch.Tensor:
    return low_rank @ projector if side == "right" else projector @ low_rank


def channel_dim(side: str) -> int:
    """The dim of R that is the projected (rank) one: norms over it give one number per kept channel."""
    return 1 if side == "right" else 0


def svd_projector(grad: torch.Tensor, rank: int, side: str, previous: torch.Tensor | None) -> torch.Tensor:
    """Top-``rank`` singular vectors of ``grad`` (fp32) on the side being projected away.

    SVD can fail to converge on an ill-conditioned gradient; the run then keeps the projector it has (the
    official code would crash). With none yet, it starts from the first ``rank`` coordinate axes, an
    orthonormal basis too, until the next refresh.
    """
    try:
        u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    except torch.linalg.LinAlgError as error:
        if previous is not None:
            warnings.warn(f"SVD projector: SVD did not converge ({error}); keeping the previous projector",
                          RuntimeWarning, stacklevel=3)
            return previous.float()
        warnings.warn(f"SVD projector: SVD did not converge ({error}) on the first refresh; starting from "
                      "coordinate axes until the next refresh", RuntimeWarning, stacklevel=3)
        m, n = grad.shape
        if side == "right":
            return torch.eye(min(rank, n), n, device=grad.device)
        return torch.eye(m, min(rank, m), device=grad.device)
    return vh[:rank] if side == "right" else u[:, :rank]


def random_projector(shape: torch.Size, rank: int, side: str, seed: int, device: torch.device) -> torch.Tensor:
    """APOLLO's projector: i.i.d. N(0, 1/rank) entries, shape (rank, n) or (m, rank), from a private generator.

    The generator lives on the gradient's device, as in APOLLO's ``stable_randn``, so one seed gives one
    matrix on every rank of a run. The meta device has no generator; shapes are all it needs.
    """
    rows, cols = (rank, shape[1]) if side == "right" else (shape[0], rank)
    if device.type == "meta":
        return torch.empty(rows, cols, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(rows, cols, generator=generator, device=device, dtype=torch.float32) / math.sqrt(rank)


def next_seed(seed: int) -> int:
    """APOLLO's seed chain: the 15th int64 drawn from a CPU generator seeded with the current seed.

    A pure function of the seed, so the matrix of every refresh follows from the parameter's first seed and
    the count of refreshes, whatever the device, rank or restart.
    """
    generator = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, torch.iinfo(torch.int64).max, (15,), generator=generator)[-1])


def adam_direction_(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, grad: torch.Tensor,
                    beta1: float, beta2: float, eps: float) -> torch.Tensor:
    """Update the moments in place from an fp32 ``grad`` and return N = m / (sqrt(v) + eps) in fp32.

    No bias correction here: the official code puts it in the step size (``step_size``).
    """
    m = exp_avg.float()  # the state itself when it is fp32, else an fp32 copy written back below
    v = exp_avg_sq.float()
    m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    if m is not exp_avg:
        exp_avg.copy_(m)
        exp_avg_sq.copy_(v)
    return m / (v.sqrt() + eps)


def step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    return lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)


def limit_norm_growth_(update: torch.Tensor, state: dict, gamma: float, dtype: torch.dtype) -> torch.Tensor:
    """Fira's norm-growth limiter: an update's norm may be at most ``gamma`` times the previous one's.

    The first update passes unchanged; each later one is divided by max(ratio, gamma) / gamma, and the norm
    remembered is the limited one. The previous norm is a 0-d tensor in the state (no host sync, works on
    meta), stored in ``dtype`` (the parameter's, like the rest of the state).
    """
    norm = torch.linalg.vector_norm(update)
    if "limiter_norm" in state:
        limiter = torch.clamp(norm / (state["limiter_norm"].float() + NORM_EPS), min=gamma) / gamma
        update = update / limiter
        norm = norm / limiter
    state["limiter_norm"] = norm.to(dtype)
    return update


def hidden_last(groups: list[dict]) -> list[dict]:
    """Role groups with the hidden matrices last, the order of the official scripts' two groups.

    The official scripts pass [other params, projected params]; APOLLO seeds each parameter with its 1-based
    position in that order, so this order makes every hidden matrix start from the official seed.
    """
    return [g for g in groups if g["role"] != "hidden"] + [g for g in groups if g["role"] == "hidden"]


class LowRankAdam(torch.optim.Optimizer):
    """Adam whose hidden matrices (role ``hidden``, 2-D) live in a projected space; plain Adam elsewhere.

    Subclasses choose the projector (``new_projector``) and the full-size update (``update``). A group
    with ``rank`` None or 0 is plain Adam throughout.
    """

    def __init__(self, params: Iterable, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                 rank: int | None, update_proj_gap: int, **method_defaults):
        check_options(lr, betas)
        if rank is not None and rank < 0:
            raise ValueError(f"rank must be >= 1 (or 0/None for no projection), got {rank}")
        if update_proj_gap < 1:
            raise ValueError(f"update_proj_gap must be >= 1, got {update_proj_gap}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, **method_defaults)
        super().__init__(params, defaults)

    # -- what a method defines -------------------------------------------------------------------------
    def new_projector(self, grad: torch.Tensor, side: str, group: dict, state: dict) -> torch.Tensor:
        """An fp32 projector for the full gradient ``grad`` (fp32)."""
        raise NotImplementedError

    def update(self, grad: torch.Tensor, low_rank: torch.Tensor, direction: torch.Tensor,
               projector: torch.Tensor, side: str, group: dict, state: dict) -> torch.Tensor:
        """The fp32 full-size update (before the step size) from G, R, N = Adam(R) and the projector."""
        raise NotImplementedError

    def init_projected_state(self, state: dict, group: dict, index: int) -> None:
        """Numbers a method keeps per hidden matrix from its first step (``index``: 1-based position)."""

    # -- the shared loop ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                index += 1  # counts parameters without a gradient too: APOLLO's seeds depend on it
                if p.grad is None:
                    continue
                if self._projected(p, group):
                    self._projected_step(p, group, index)
                else:
                    self._adam_step(p, group)
        return loss

    @staticmethod
    def _projected(p: torch.Tensor, group: dict) -> bool:
        role = group.get("role") or infer_role(p)
        return role == "hidden" and p.ndim == 2 and bool(group["rank"])

    def _adam_step(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            # shaped like p: under FSDP2 a DTensor holding only this rank's rows
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        direction = adam_direction_(sharding.local(state["exp_avg"]), sharding.local(state["exp_avg_sq"]),
                                    sharding.local(p.grad).float(), beta1, beta2, group["eps"])
        self._apply(sharding.local(p), direction, group, state["step"])

    def _projected_step(self, p: torch.Tensor, group: dict, index: int) -> None:
        state = self.state[p]
        grad = sharding.full_tensor(p.grad).float()
        side = projection_side(grad.shape)
        if not state:
            state["step"] = 0
            self.init_projected_state(state, group, index)
        if "projector" not in state or state["step"] % group["update_proj_gap"] == 0:
            state["projector"] = self.new_projector(grad, side, group, state).to(dtype=p.dtype, copy=True)
        projector = state["projector"].float()
        low_rank = project(grad, projector, side)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros(low_rank.shape, dtype=p.dtype, device=low_rank.device)
            state["exp_avg_sq"] = torch.zeros(low_rank.shape, dtype=p.dtype, device=low_rank.device)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        direction = adam_direction_(state["exp_avg"], state["exp_avg_sq"], low_rank, beta1, beta2, group["eps"])
        full_update = self.update(grad, low_rank, direction, projector, side, group, state)
        self._apply(sharding.local(p), sharding.keep_local(full_update, p), group, state["step"])

    @staticmethod
    def _apply(param: torch.Tensor, update: torch.Tensor, group: dict, step: int) -> None:
        beta1, beta2 = group["betas"]
        param.add_(update, alpha=-step_size(group["lr"], beta1, beta2, step))
        if group["weight_decay"]:
            # after the update and with the plain lr, as in the official code
            param.add_(param, alpha=-group["lr"] * group["weight_decay"])
