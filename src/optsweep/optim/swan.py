"""SWAN (Ma, Gong, Scetbon, Meeds; arXiv 2412.13148) - UNOFFICIAL, written from the paper's description.

The paper says code will be released at github microsoft/msr_optim; none was reachable from here. Hidden
matrices (attention and MLP weights, G of shape m x n = out x in) get a stateless update:

1. GradNorm: standardise each row, G~ = (G - mean_row) / std_row (mean and population std over the n inputs;
   the paper's g_bar = (1/n) sum_i G[:, i]). ``gradnorm_axis="column"`` standardises columns instead.
2. GradWhitening: (G~ G~^T)^(-1/2) G~, the polar factor U V^T of G~, approximated by k Newton-Schulz steps
   started from Y = G~ G~^T / ||G~ G~^T||_F, Z = I (the paper's Algorithm 2; the normalisation and beta = 1/2
   as in the same authors' arXiv 2502.07752, App. B.7-B.8), in float32 (the paper whitens in FP32 with BF16
   weights). Row-standardised square or tall matrices are rank deficient (every row is orthogonal to the
   all-ones vector): the limit is then the polar factor on G~'s range and 0 on the rest.
   ``whiten_form`` picks how the k-step iterate Z_k G~ is computed (identical in exact arithmetic):
   - "polar" (default): X <- beta (3X - X X^T X) on G~ itself (``newton_schulz.whiten_newton_schulz``),
     re-centred along the GradNorm axis after each step (a no-op in exact arithmetic). Bounded for any
     number of steps;
   - "coupled": the literal Y/Z iteration (``newton_schulz.inverse_sqrt_newton_schulz``) on the Gram matrix
     of ``whiten_side`` ("auto" = the smaller one; "left" = (G~ G~^T)^(-1/2) G~, "right" =
     G~ (G~^T G~)^(-1/2)). On the singular Gram matrices of LLaMA's square (q/k/v/o) and tall (gate/up)
     matrices it diverges to inf/NaN after ~25-30 steps at beta = 1/2, ~12-15 at beta = 0.8 (measured, fp32).
   With 10 steps at beta = 1/2 a well-conditioned G~ is whitened to <1e-6, but an ill-conditioned one (real
   gradients: a few strong directions plus noise) is not: each step multiplies a small singular value
   s = sigma / ||G~ G~^T||_F^(1/2) by only 3 beta = 1.5, so those below ~1/57 = 1.5^-10 stay well under 1
   (measured: 0.5-0.7 relative distance from the exact polar factor for 64 x 256 and 128 x 128
   low-rank-plus-noise matrices at 10 steps; 4e-4 and 0.1 at 20).
3. Optional rescaling (``rescale``, on by default): the update is scaled to Frobenius norm sqrt(m n), i.e.
   an element RMS of 1 like the standardised gradient - public reimplementations quote this as the paper's
   final normalisation.
4. Plain SGD: p <- p (1 - lr wd) - lr * update. No optimizer state for these matrices.

Embeddings, lm_head and 1-D weights use Adam(W) (betas (0.9, 0.999), eps 1e-8) at ``adam_lr`` (default lr),
as in GaLore's benchmark that the paper follows.

Choices the paper's text (as reachable from here) does not settle, exposed as options:
- ``ns_steps`` / ``ns_beta``: public reimplementations of the paper's Algorithm 2 carry a Newton-Schulz step
  size beta. beta = 1/2 is the textbook coupled iteration, whose fixed point is the exact (G G^T)^(-1/2) G
  the paper defines (default here); two reimplementations use 10 steps with beta = 0.8, which overshoots
  into a Muon-like band of singular values (about 0.55-1.6) instead of converging. Default: 10 steps,
  beta 0.5 (not verified against the paper's experiments);
- ``whiten_form`` (above): "polar" or the literal "coupled";
- ``gradnorm_axis``: "row" (the paper's formula) or "column" (one reimplementation normalises over the
  output dimension instead);
- ``rescale``: the sqrt(m n) / ||update|| rescaling quoted from the paper by a reimplementation;
- ``eps`` floors the row std and the norms used for scaling.
The SWAN-variant with diagonal substitution (faster, "NSDS") is not implemented.

Under FSDP2 each hidden gradient is gathered once, the update computed on the full matrix identically on
every rank, and each rank keeps its rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from optsweep.optim import sharding
from optsweep.optim.aux_adam import HiddenMatrixOptimizer, adam_lr_groups, apply_update_
from optsweep.optim.base import check_options
from optsweep.optim.muon import AUX_ADAM_ROLES
from optsweep.optim.newton_schulz import inverse_sqrt_newton_schulz, whiten_newton_schulz

WHITEN_SIDES = ("auto", "left", "right")
WHITEN_FORMS = ("polar", "coupled")
GRADNORM_AXES = ("row", "column")


def grad_norm(g: Tensor, axis: str = "row", eps: float = 1e-8) -> Tensor:
    """GradNorm: subtract the mean and divide by the (population) std of each row (or column)."""
    dim = 1 if axis == "row" else 0
    centred = g - g.mean(dim=dim, keepdim=True)
    std = centred.square().mean(dim=dim, keepdim=True).sqrt()
    return centred / std.clamp(min=eps)


def grad_whitening(
    g: Tensor,
    steps: int,
    beta: float = 0.5,
    side: str = "auto",
    form: str = "polar",
    center_dim: int | None = None,
) -> Tensor:
    """GradWhitening: k Newton-Schulz steps towards (G G^T)^(-1/2) G = G (G^T G)^(-1/2).

    ``form="polar"``: ``whiten_newton_schulz`` (``side`` does not change the result; ``center_dim`` re-centres
    the rows (1) or columns (0) of a centred G after each step). ``form="coupled"``: the Y/Z iteration on the
    Gram matrix of ``side``.
    """
    if form == "polar":
        return whiten_newton_schulz(g, steps, beta, center_dim=center_dim)
    if form != "coupled":
        raise ValueError(f"form must be one of {WHITEN_FORMS}, got {form!r}")
    rows, cols = g.shape
    left = side == "left" or (side == "auto" and rows <= cols)
    if left:
        return inverse_sqrt_newton_schulz(g @ g.T, steps, beta) @ g
    return g @ inverse_sqrt_newton_schulz(g.T @ g, steps, beta)


def swan_update(
    g: Tensor,
    ns_steps: int = 10,
    ns_beta: float = 0.5,
    whiten_side: str = "auto",
    gradnorm_axis: str = "row",
    eps: float = 1e-8,
    rescale: bool = True,
    whiten_form: str = "polar",
) -> Tensor:
    """SWAN's update direction for one whole 2-D gradient, computed in float32, returned in g's dtype."""
    x = grad_norm(g.float(), gradnorm_axis, eps)
    center_dim = 1 if gradnorm_axis == "row" else 0
    update = grad_whitening(x, ns_steps, ns_beta, whiten_side, whiten_form, center_dim)
    if rescale:
        update = update * (math.sqrt(update.numel()) / update.norm().clamp(min=eps))
    return update.to(g.dtype)


class SWAN(HiddenMatrixOptimizer):
    """SWAN (unofficial): stateless GradNorm + GradWhitening SGD on hidden matrices, Adam(W) elsewhere."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        ns_steps: int = 10,
        ns_beta: float = 0.5,
        whiten_side: str = "auto",
        gradnorm_axis: str = "row",
        eps: float = 1e-8,
        rescale: bool = True,
        weight_decay: float = 0.0,
        adam_betas: Sequence[float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        whiten_form: str = "polar",
    ) -> None:
        check_options(lr, adam_betas, choices={"whiten_side": (whiten_side, WHITEN_SIDES),
                                               "whiten_form": (whiten_form, WHITEN_FORMS),
                                               "gradnorm_axis": (gradnorm_axis, GRADNORM_AXES)})
        if ns_steps < 1 or ns_beta <= 0.0:
            raise ValueError(f"need ns_steps >= 1 and ns_beta > 0, got {ns_steps}, {ns_beta}")
        defaults = {"lr": lr, "ns_steps": ns_steps, "ns_beta": ns_beta, "whiten_side": whiten_side,
                    "gradnorm_axis": gradnorm_axis, "eps": eps, "rescale": rescale,
                    "weight_decay": weight_decay, "adam_betas": tuple(adam_betas), "adam_eps": adam_eps,
                    "whiten_form": whiten_form}
        super().__init__(params, defaults)

    @classmethod
    def for_model(cls, model: nn.Module, lr: float = 1e-3, adam_lr: float | None = None, **options) -> SWAN:
        """SWAN over ``model``: hidden matrices at ``lr``, the AdamW groups at ``adam_lr`` (None: ``lr``);
        ``options``: the constructor's."""
        return cls(adam_lr_groups(model, lr, adam_lr, AUX_ADAM_ROLES), lr=lr, **options)

    def matrix_update(self, p: Tensor, group: dict) -> None:
        full = sharding.full_tensor(p.grad)  # the one all-gather of this matrix
        update = swan_update(
            full.reshape(full.size(0), -1), group["ns_steps"], group["ns_beta"], group["whiten_side"],
            group["gradnorm_axis"], group["eps"], group["rescale"], group.get("whiten_form", "polar"),
        )
        apply_update_(p, update.reshape(full.shape), group["lr"], group["weight_decay"])
