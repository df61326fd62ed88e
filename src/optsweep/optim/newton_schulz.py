"""Matrix iterations that only multiply matrices: Muon's orthogonalisation and SWAN's inverse square root.

``orthogonalize`` is the quintic Newton-Schulz iteration of Keller Jordan's Muon (github KellerJordan/Muon):
five steps of X <- a X + (b A + c A^2) X with A = X X^T and (a, b, c) = (3.4445, -4.7750, 2.0315), run in
bfloat16 on the smaller Gram matrix. The coefficients maximise the slope at zero rather than converge, so
the result is U S' V^T with S' in about [0.68, 1.14] (measured on Gaussian matrices; singular values
below ~1e-2 of the largest stay smaller) instead of exactly U V^T; Muon relies on that. The
arithmetic is torch.optim.Muon's (normalisation by the Frobenius norm clamped at eps, fused ``addmm``), so
the two agree bit for bit.

``inverse_sqrt_newton_schulz`` is the classic coupled Newton-Schulz iteration for A^(-1/2) of a symmetric
positive semi-definite A, the form in which SWAN's GradWhitening (A = G G^T, result A^(-1/2) G) is written.
``whiten_newton_schulz`` computes the same k-step iterate Z_k G directly as the cubic polar iteration
X <- beta X (3I - X^T X) (identical in exact arithmetic, see its docstring), which stays bounded where the
coupled form diverges: on singular Gram matrices, which row-standardised square or tall gradients always give.
"""

from __future__ import annotations

import torch
from torch import Tensor

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(
    g: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Approximately U V^T for the 2-D matrix ``g`` = U S V^T, returned in ``g``'s dtype.

    ``dtype`` is the working precision: bfloat16 as in Muon (the iteration tolerates it and it is what the
    published runs used); float32 makes exactness tests possible.
    """
    if g.ndim != 2:
        raise ValueError(f"orthogonalize takes a 2-D matrix, got shape {tuple(g.shape)}")
    a, b, c = MUON_COEFFICIENTS
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    # Frobenius norm >= spectral norm, so every singular value starts in [0, 1].
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    if tall:
        x = x.T
    return x.to(g.dtype)


def inverse_sqrt_newton_schulz(a: Tensor, steps: int, beta: float = 0.5, eps: float = 1e-12) -> Tensor:
    """Approximately A^(-1/2) for a symmetric positive semi-definite matrix ``a``, computed in its dtype.

    Coupled iteration started from Y = A / ||A||_F (so every eigenvalue lies in [0, 1]) and Z = I:
    T = 3I - Z Y, Y <- beta Y T, Z <- beta T Z. With beta = 1/2, Z converges to (A / ||A||_F)^(-1/2) on
    every eigenvalue in (0, 1], quadratically once close, so A^(-1/2) = Z / sqrt(||A||_F). Small
    eigenvalues need many steps: each step multiplies their Y Z product by about (3 beta)^2 = 2.25, so in 10
    steps only eigenvalues above ~3e-4 ||A||_F reach 1. Well-conditioned A (a Gaussian 24 x 40 G) is then
    exact to <1e-6; an ill-conditioned one (a real gradient: a few large directions plus noise) is not
    (measured: relative error 0.5-0.7 against the exact root at 10 steps, 4e-4 at 20, for 64 x 256).

    Unstable on a singular A: rounding leaves tiny (also negative) eigenvalues, and along a negative one
    Y Z is multiplied by (3 beta)^2 every step and then diverges cubically. In float32 this produces inf/NaN
    after ~25-30 steps at beta = 1/2 and ~12-15 steps at beta = 0.8 (measured on row-standardised square
    matrices); ``whiten_newton_schulz`` computes the same iterate without this failure.

    A beta above 1/2 grows small eigenvalues faster but overshoots: for beta = 0.8 the product Y Z
    bounces in about [0.3, 2.6] instead of settling at 1 (a Muon-like band rather than the exact root).
    """
    n = a.size(0)
    norm = a.norm().clamp(min=eps)
    y = a / norm
    identity = torch.eye(n, dtype=a.dtype, device=a.device)
    z = identity
    for _ in range(steps):
        t = 3.0 * identity - z @ y
        y = beta * (y @ t)
        z = beta * (t @ z)
    return z / norm.sqrt()


def whiten_newton_schulz(
    g: Tensor,
    steps: int,
    beta: float = 0.5,
    center_dim: int | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """The k-step Newton-Schulz whitening of ``g``, Z_k g / sqrt(||g g^T||_F), as a polar iteration.

    With A = g g^T, the coupled iteration of ``inverse_sqrt_newton_schulz`` keeps Y_k = Y_0 Z_k (all iterates
    are polynomials in A), and substituting gives, for X_k = Z_k g / sqrt(||A||_F) and every beta,

        X_0 = g / sqrt(||g g^T||_F),    X_{k+1} = beta (3 X_k - X_k X_k^T X_k),

    i.e. each singular value s of X follows s <- beta (3 s - s^3) while the singular vectors stay those of g:
    the same matrices as the coupled form (and as its right-sided version g Z'_k), hence the same limit, the
    polar factor U V^T of g on its range. Unlike the coupled form, X never contains a growing inverse root,
    so the iterate stays bounded (for 0 < beta <= 0.86 the singular values stay in [0, max(1, 2 beta)]) for
    any number of steps and any Gram matrix, singular or not. Cost per step: two products with the smaller
    Gram matrix (2 m^2 n for m <= n) against three m x m x m products for the coupled form.

    ``center_dim``: for a g whose rows (1) or columns (0) have zero mean, as after SWAN's GradNorm, the
    iteration preserves that exactly (the all-ones vector stays in the null space), so re-centering after
    each step changes nothing in exact arithmetic; it removes the rounding noise that the iteration would
    otherwise grow by 3 beta per step along that null direction (a spurious singular value after ~40 steps).
    """
    if g.ndim != 2:
        raise ValueError(f"whiten_newton_schulz takes a 2-D matrix, got shape {tuple(g.shape)}")
    wide = g.size(0) <= g.size(1)
    x = g if wide else g.T  # work with rows <= cols: the Gram matrix x x^T is the smaller one
    dim = None if center_dim is None else (center_dim if wide else 1 - center_dim)
    gram = x @ x.T
    norm = gram.norm().clamp(min=eps)
    x = x / norm.sqrt()
    gram = gram / norm  # = x x^T for the scaled x
    for step in range(steps):
        if step:
            gram = x @ x.T
        x = beta * (3.0 * x - gram @ x)
        if dim is not None:
            x = x - x.mean(dim=dim, keepdim=True)
    return x if wide else x.T
