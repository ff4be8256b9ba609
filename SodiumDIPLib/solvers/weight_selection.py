"""Choosing the regularisation weight of a variational problem from the data alone.

Both rules search lambda_sigma over ``centre * 2^(k/2)``: k in SEARCH_STEPS (coarse), then the two half-steps
around the coarse minimum (fine) -- 6 values, 12 solves. ``lambda_sigma`` is the weight in units of the noise
sigma (times |A| for k-space data); see ``solvers.variational``.

- ``sure_select``: Stein's unbiased risk estimate for Gaussian denoising (needs sigma).
- ``gcv_select``: generalised cross-validation for k-space data (needs no sigma).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

#: Coarse grid of the search: lambda_sigma = centre x 2^(k/2) for these k.
SEARCH_STEPS = (-4, -2, 0, 2)


def grid_search(score: Callable[[float], float], centre: float,
                check: Optional[Callable[[float, float], None]] = None) -> tuple:
    """Minimise score(lambda_sigma) over centre x 2^(k/2): k in SEARCH_STEPS, then the half-steps around the best.

    ``check(lambda_sigma, value)`` runs after each score (progress; may raise Cancelled).
    Returns (best lambda_sigma, [(lambda_sigma, score), ...] sorted by lambda_sigma)."""
    curve = {}

    def cached(k):
        if k not in curve:
            ls = centre * 2.0 ** (k / 2.0)
            curve[k] = score(ls)
            if check is not None:
                check(ls, curve[k])
        return curve[k]

    best = min(SEARCH_STEPS, key=cached)
    best = min((best - 1, best, best + 1), key=cached)
    pts = sorted((centre * 2.0 ** (k / 2.0), v) for k, v in curve.items())
    return centre * 2.0 ** (best / 2.0), pts


def sure_select(y: torch.Tensor, sigma: float, solve, mask: Optional[np.ndarray], generator: torch.Generator,
                centre: float, check=None) -> tuple:
    """Pick lambda_sigma by Monte-Carlo SURE (Ramani, Blu & Unser 2008) for Gaussian denoising.

    solve(lambda_sigma, v) -> f(v), the estimate of E[v] (a fixed, deterministic map of v; same units as y).
    SURE = |y - f(y)|^2 / n - sigma^2 + 2 sigma^2 div f / n, with div f ~ b.(f(y + e b) - f(y)) / e for one
    Gaussian probe b drawn from ``generator`` and e = 0.01 sigma, summed over ``mask`` (n voxels; the object,
    where magnitude noise is close to Gaussian; None: everywhere). sigma in the units of y.
    Returns (best lambda_sigma, [(lambda_sigma, sure), ...]).
    """
    probe = torch.randn(y.shape, generator=generator).to(y.device, y.dtype)
    e = 0.01 * sigma
    m = torch.ones(y.shape, dtype=torch.bool, device=y.device) if mask is None else torch.from_numpy(mask).to(y.device)
    n = max(int(m.sum()), 1)

    def sure(ls):
        fy = solve(ls, y)
        div = float((probe * (solve(ls, y + e * probe) - fy))[m].sum()) / e
        return float(((y - fy) ** 2)[m].sum()) / n - sigma ** 2 + 2 * sigma ** 2 * div / n

    return grid_search(sure, centre, check)


def gcv_select(y: torch.Tensor, predict, generator: torch.Generator, centre: float, step: float,
               check=None) -> tuple:
    """Pick lambda_sigma for k-space data by Monte-Carlo generalised cross-validation (Golub, Heath & Wahba 1979).

    predict(lambda_sigma, v) -> A x(v), the model's prediction of the data from data v (a fixed map of v).
    GCV = |A x(y) - y|^2 / (1 - df / m)^2 over the acquired (non-zero) samples (m real values), with
    df = div_y A x(y) ~ Re b^H (A x(y + step b) - A x(y)) / step for one complex Gaussian probe b on the
    acquired samples. ``step`` in the units of y. Returns (best lambda_sigma, [(lambda_sigma, gcv), ...]).
    """
    acquired = y != 0
    m = 2 * int(acquired.sum())
    shape = tuple(y.shape)
    probe = torch.complex(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    probe = probe.to(y.device, y.dtype) * acquired

    def gcv(ls):
        fy = predict(ls, y)
        df = float((probe.conj() * (predict(ls, y + step * probe) - fy)).real.sum()) / step
        resid = float(((fy - y).abs() ** 2)[acquired].sum())
        return resid / max(1.0 - df / m, 1e-6) ** 2

    return grid_search(gcv, centre, check)
