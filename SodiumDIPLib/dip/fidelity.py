"""Data-fidelity terms D(A(b x), y), as mean per-voxel negative log-likelihoods in noise units.

All terms are scaled so that the Gaussian one is ``0.5 * mean(((A(bx) - y) / sigma)^2)``: prior weights
therefore mean the same thing at every noise level (the DIP loop multiplies priors by 1/sigma).

Magnitude data (coil-combined images) are not Gaussian: one coil gives Rician noise, a sum of squares of L
coils gives noncentral-chi noise with 2L degrees of freedom, whose floor (mean about sqrt(2L) sigma where the
signal is 0: ~8 sigma for the 32-channel 7 T array) a least-squares fit mistakes for signal.

- ``gaussian``:  least squares (complex k-space data included).
- ``rician``:    exact negative Rician log-likelihood, log I0 computed stably as z + log(i0e(z)).
- ``chi``:       negative noncentral-chi log-likelihood for L channels; for L = 1 it is the Rician one, for
                 L > 1 log I_{L-1} uses the uniform (Debye) asymptotic expansion with two correction terms
                 (error of log I below 1e-4 for L-1 >= 4, ~1.5e-2 for L-1 = 1; measured against scipy.special.ive), written so that the
                 x -> 0 limit is finite and smooth.
- ``corrected_ls``: least squares against the first-moment-corrected magnitude sqrt(x^2 + c sigma^2), with c
                 making it exact at x = 0 (c = pi/2 for L = 1; (sqrt(2) Gamma(L+1/2)/Gamma(L))^2 ~ 2L - 1/2).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from SodiumDIPLib.errors import InputError

KINDS = ("auto", "gaussian", "rician", "chi", "corrected_ls")


def floor_constant(n_channels: int) -> float:
    """c with E[y | x=0] = sqrt(c) * sigma for a sum-of-squares magnitude of ``n_channels`` channels."""
    L = int(n_channels)
    return 2.0 * math.exp(2 * (math.lgamma(L + 0.5) - math.lgamma(L)))


def expected_magnitude(x: torch.Tensor, sigma: float, n_channels: int = 1) -> torch.Tensor:
    """Approximate E[y | x] of a magnitude measurement: sqrt(x^2 + c sigma^2) (exact at x = 0 and x >> sigma)."""
    return torch.sqrt(x * x + floor_constant(n_channels) * sigma * sigma)


def _log_bessel_minus_power(v: int, t: torch.Tensor) -> torch.Tensor:
    """log I_v(v t) - v log t  (v >= 1), by the Debye expansion; finite and smooth at t = 0."""
    sq = torch.sqrt(1 + t * t)
    p = 1.0 / sq
    u1 = (3 * p - 5 * p ** 3) / 24
    u2 = (81 * p ** 2 - 462 * p ** 4 + 385 * p ** 6) / 1152
    # v*eta - v log t = v*(sq - log(1 + sq))
    return (v * (sq - torch.log1p(sq)) - 0.5 * math.log(2 * math.pi * v) - 0.5 * torch.log(sq)
            + torch.log1p(u1 / v + u2 / (v * v)))


def negative_log_likelihood(pred: torch.Tensor, y: torch.Tensor, sigma: float, kind: str = "gaussian",
                            n_channels: int = 1, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean per-voxel data term (scalar tensor), up to constants independent of ``pred``.

    pred:   the model of the data, A(b x) (non-negative magnitude for the magnitude kinds).
    y:      the measurement, same shape (complex allowed for "gaussian").
    sigma:  noise standard deviation per real channel (> 0), same units as y.
    kind:   "gaussian", "rician", "chi" or "corrected_ls" (see the module docstring).
    weight: optional non-negative per-voxel weights broadcastable to ``pred`` (0 leaves a voxel out, e.g. the
            held-out voxels of a safeguard); the result is then the weighted mean.
    """
    if not sigma or sigma <= 0 or not math.isfinite(sigma):
        raise InputError(f"the data fidelity needs a positive noise sigma, got {sigma}")
    s2 = float(sigma) ** 2

    def reduce(term):
        if weight is None:
            return term.mean()
        w = weight.expand_as(term)
        return (term * w).sum() / w.sum().clamp_min(1e-12)

    if kind == "gaussian":
        r = pred - y
        r2 = (r.real ** 2 + r.imag ** 2) if torch.is_complex(r) else r * r
        return 0.5 * reduce(r2) / s2
    if torch.is_complex(pred) or torch.is_complex(y):
        raise InputError(f"fidelity {kind!r} is for magnitude images; complex data need 'gaussian'")
    L = int(n_channels)
    if L < 1:
        raise InputError(f"n_channels must be >= 1, got {n_channels}")
    if kind == "corrected_ls":
        r = expected_magnitude(pred, sigma, L) - y
        return 0.5 * reduce(r * r) / s2
    x = pred.clamp_min(0)
    yy = y.clamp_min(0)
    if kind == "rician" or (kind == "chi" and L == 1):
        z = x * yy / s2
        log_i0 = z + torch.log(torch.special.i0e(z))
        return reduce(x * x / (2 * s2) - log_i0)
    if kind == "chi":
        v = L - 1
        t = x * yy / (s2 * v)
        # -log p = x^2/(2 s^2) + (L-1) log x - log I_{L-1}(x y / s^2) + const(y);
        # (L-1) log x - log I_v(v t) = -(log I_v(v t) - v log t) - v log(y / (s^2 v)), the last term is const.
        return reduce(x * x / (2 * s2) - _log_bessel_minus_power(v, t))
    raise InputError(f"unknown fidelity {kind!r}; expected one of {KINDS}")


def resolve_kind(kind: str, magnitude: bool, is_identity: bool, n_channels: int = 1) -> str:
    """'auto': Gaussian for k-space / complex data, the (noncentral-chi / Rician) likelihood for magnitudes."""
    if kind not in KINDS:
        raise InputError(f"unknown fidelity {kind!r}; expected one of {KINDS}")
    if kind == "auto":
        if not is_identity or not magnitude:
            return "gaussian"
        return "rician" if int(n_channels) == 1 else "chi"
    if kind != "gaussian" and not is_identity:
        raise InputError(f"fidelity {kind!r} applies to magnitude images; k-space data use 'gaussian'")
    return kind


def estimate_channels(y, support, sigma: float, max_channels: int = 64) -> int:
    """Effective number of sum-of-squares channels L from the background noise floor of a magnitude image.

    The background (outside the support dilated by 2 voxels, exact zeros excluded: outside the scanner's
    field of view) has mean sqrt(c(L)) sigma with c from :func:`floor_constant`; L is the integer that
    matches best. Returns 1 (Rician) when there is too little background to tell.
    """
    import numpy as np
    from scipy import ndimage as ndi

    y = np.asarray(y, dtype=np.float64)
    support = np.asarray(support, bool)
    bg = ~ndi.binary_dilation(support, iterations=2)
    vals = y[bg & (y > 0)]
    if vals.size < 64 or not sigma or sigma <= 0:
        return 1
    ratio2 = (float(np.median(vals)) / sigma) ** 2  # median: robust to ghosts / residual signal in the background
    candidates = np.arange(1, max_channels + 1)
    consts = np.array([floor_constant(L) for L in candidates])
    return int(candidates[np.argmin(np.abs(consts - ratio2))])
