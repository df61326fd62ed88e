"""Matrix iterations that only multiply matrices: Muon's orthogonalisation and SWAN's inverse square root.

``orthogonalize`` is the quintic Newton-Schulz iteration of Keller Jordan's Muon (github KellerJordan/Muon):
five steps of X <- a X + (b A + c A^2) X with A = X X^T and (a, b, c) = (3.4445, -4.7750, 2.0315), run in
bfloat16 on the smaller Gram matrix. The coefficients maximise the slope at zero rather than converge, so
the result is U S' V^T with S' in about [0.68, 1.14] (measured on Gaussian matrices; singular values
below ~1e-2 of the largest stay smaller) instead of exactly U V^T; Muon relies on that. The
arithmetic is torch.optim.Muon's (normalisation by the Frobenius norm clamped at eps, fused ``addmm``), so
the two agree bit for bit.

``inverse_sqrt_newton_schulz`` is the classic coupled Newton-Schulz iteration for A^(-1/2) of a symmetric
positive semi-definite A, the form SWAN's GradWhitening uses.
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
    eigenvalues need many steps (each step multiplies their Y Z product by about 2.25), and on a singular A
    the null-space directions of Z grow by 1.5 per step: past ~15-20 steps rounding noise there is amplified
    into the result (10 steps, the SWAN default, measured at <1e-6 from the exact pseudo-inverse root).

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
