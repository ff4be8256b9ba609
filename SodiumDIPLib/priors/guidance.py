"""Anatomical guidance: finite differences, direction fields, their fusion and the directional-TV prior.

All functions are torch, work in 2D and 3D on any device, and take images whose LAST ``d`` axes are
spatial (``d`` = 2 or 3; leading axes such as a network's (batch, channel) are carried along where noted).
Gradients are forward differences with a Neumann boundary (zero difference at the far edge), divided by
the voxel size in mm when ``spacing`` is given (array axis order, same as ``Problem.spacing``).

Directional TV (Ehrhardt & Betcke 2016):  dTV(x) = sum_i sqrt(|P_i grad x_i|^2 + eps^2),
P_i = I - gamma xi_i xi_i^T, where xi is a direction field with |xi| <= 1 built from a guide image. Where
the guide has a strong edge (|xi| ~ 1), the component of grad x along xi is (almost) free when gamma -> 1,
so edges shared with the guide are kept and everything else is smoothed like TV.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.differences import check_spacing as _check_spacing, divergence, gradient  # the grid's D and D^H = -div live with the operators

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    "gradient", "divergence", "normalise_guide", "direction_field", "fuse_direction_fields",
    "apply_projection", "dtv", "pilot_estimate", "gaussian_smooth",
]


def _as_tensor(x: ArrayLike, device=None, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device or x.device, dtype=dtype if not x.is_floating_point() else x.dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def normalise_guide(img: ArrayLike, percentile: float = 99.9, mask: Optional[ArrayLike] = None,
                    device=None) -> torch.Tensor:
    """Scale a guide image so that its ``percentile`` (inside ``mask`` when given) becomes 1, clipped to [0, 1].

    Clipping the top (100 - percentile)% keeps a few bright voxels (vessels, fat) from shrinking every
    other edge. Returns a float32 tensor (on ``device``, default the input's device / CPU). Not differentiated.
    """
    if not (0 < percentile <= 100):
        raise InputError(f"percentile must be in (0, 100], got {percentile}")
    t = _as_tensor(img, device=device).detach().float()
    vals = t
    if mask is not None:
        m = _as_tensor(mask, device=t.device, dtype=torch.bool).bool()
        if m.shape != t.shape:
            raise InputError(f"mask shape {tuple(m.shape)} does not match image shape {tuple(t.shape)}")
        if m.any():
            vals = t[m]
    vals = vals.reshape(-1)
    if vals.numel() > 2_000_000:  # quantile on huge tensors is slow / limited: subsample deterministically
        vals = vals[:: vals.numel() // 2_000_000 + 1]
    scale = float(torch.quantile(vals, percentile / 100.0)) if vals.numel() else 0.0
    if not math.isfinite(scale) or scale <= 0:
        scale = float(t.abs().max()) or 1.0
    return (t / scale).clamp_(0.0, 1.0)


def direction_field(img: ArrayLike, eta: float, spacing: Optional[Sequence[float]] = None,
                    normalise: bool = False, device=None) -> torch.Tensor:
    """xi = grad p / sqrt(|grad p|^2 + eta^2), shape (d, *shape), |xi| < 1, detached.

    img: the guide p, 2D or 3D. Expected already normalised with :func:`normalise_guide` (so that eta has a
    fixed meaning); ``normalise=True`` does it here. eta > 0 is the edge threshold in normalised intensity per
    voxel (per mm when ``spacing`` is given): gradients much larger than eta give |xi| ~ 1 (an edge), much
    smaller give |xi| ~ 0 (flat: plain TV there).
    """
    if not (eta > 0):
        raise InputError(f"eta must be > 0 (edge threshold), got {eta}")
    p = normalise_guide(img, device=device) if normalise else _as_tensor(img, device=device).detach().float()
    if p.ndim not in (2, 3):
        raise InputError(f"direction_field expects a 2D or 3D image, got shape {tuple(p.shape)}")
    g = gradient(p, spacing)
    return (g / torch.sqrt((g * g).sum(0, keepdim=True) + eta * eta)).detach()


def fuse_direction_fields(xi_h: torch.Tensor, xi_na: torch.Tensor, w_h: float = 1.0, w_na: float = 1.0,
                          method: str = "tensor") -> torch.Tensor:
    """Fuse a proton and a sodium direction field into one field with |xi| <= 1 (shape (d, *shape)).

    method="tensor": the leading eigenvector v of the joint structure tensor T = w_h xi_h xi_h^T +
    w_na xi_na xi_na^T, scaled to |xi|^2 = min(1, lambda_max / max(w_h, w_na)). Normalising by the LARGER
    weight (not the sum) means an edge seen by only one contrast keeps its full strength (|xi| ~ 1 with
    equal weights), so sodium-only lesions are not smoothed across; an edge seen by both saturates at 1.
    T has rank <= 2 and its range is span(u1, u2), u = sqrt(w) xi, so the eigenproblem is solved exactly via
    the 2x2 Gram matrix [u_i . u_j] in closed form for both 2D and 3D (no batched eigh; cost ~ a few
    elementwise passes).
    method="sum": w_h xi_h + w_na s xi_na (s = sign of xi_h . xi_na, so opposite-polarity edges add up),
    divided by max(w_h, w_na) and clipped to |xi| <= 1.
    w_na = 0 returns xi_h exactly (proton-only dTV); w_h = 0 returns xi_na. Detached.
    """
    if xi_h.shape != xi_na.shape:
        raise InputError(f"direction fields differ in shape: {tuple(xi_h.shape)} vs {tuple(xi_na.shape)}")
    if w_h < 0 or w_na < 0 or (w_h == 0 and w_na == 0):
        raise InputError(f"fusion weights must be >= 0 and not both 0, got w_h={w_h}, w_na={w_na}")
    xi_h, xi_na = xi_h.detach(), xi_na.detach()
    if w_na == 0:
        return xi_h.clone()
    if w_h == 0:
        return xi_na.clone()
    wmax = float(max(w_h, w_na))
    if method == "sum":
        dot = (xi_h * xi_na).sum(0, keepdim=True)
        s = torch.where(dot < 0, -torch.ones_like(dot), torch.ones_like(dot))
        xi = (w_h * xi_h + w_na * s * xi_na) / wmax
        n = torch.sqrt((xi * xi).sum(0, keepdim=True))
        return xi / torch.clamp(n, min=1.0)
    if method != "tensor":
        raise InputError(f"unknown fusion method {method!r}; expected 'tensor' or 'sum'")
    u1 = math.sqrt(w_h) * xi_h
    u2 = math.sqrt(w_na) * xi_na
    a = (u1 * u1).sum(0)
    c = (u2 * u2).sum(0)
    b = (u1 * u2).sum(0)
    half = 0.5 * (a - c)
    lam = 0.5 * (a + c) + torch.sqrt(half * half + b * b)
    # eigenvector e of the Gram matrix for lam, written in the numerically stable form for each case
    first = a >= c
    e1 = torch.where(first, lam - c, b)
    e2 = torch.where(first, b, lam - a)
    degenerate = (e1.abs() + e2.abs()) <= 1e-12 * (lam + 1e-30)  # equal orthogonal edges, or no edge
    e1 = torch.where(degenerate, first.to(e1.dtype), e1)
    e2 = torch.where(degenerate, (~first).to(e2.dtype), e2)
    v = e1 * u1 + e2 * u2  # = U e, an eigenvector of T = U U^T
    nv = torch.sqrt((v * v).sum(0))
    scale = torch.sqrt(torch.clamp(lam / wmax, max=1.0)) / torch.clamp(nv, min=1e-12)
    return v * torch.where(nv > 1e-12, scale, torch.zeros_like(scale))


def apply_projection(g: torch.Tensor, xi: torch.Tensor, gamma: float) -> torch.Tensor:
    """P g = g - gamma xi (xi . g) for gradient fields g (*batch, d, *shape); P is symmetric (P^T = P)."""
    nb = g.ndim - xi.ndim
    dot = (g * xi).sum(dim=nb, keepdim=True)
    return g - gamma * xi * dot


def dtv(x: torch.Tensor, xi: Optional[torch.Tensor], gamma: float = 0.95, eps: float = 1e-3,
        spacing: Optional[Sequence[float]] = None, weight: Optional[torch.Tensor] = None,
        reduction: str = "sum", ndim: Optional[int] = None) -> torch.Tensor:
    """Smoothed directional total variation sum_i w_i sqrt(|P_i grad x_i|^2 + eps^2), P = I - gamma xi xi^T.

    x: (*batch, *shape) with the spatial shape equal to xi.shape[1:] (a network output (1, 1, Z, Y, X) is fine).
    xi: direction field (d, *shape) with |xi| <= 1, or None (= 0: smoothed isotropic TV). gamma in [0, 1).
    eps > 0 smooths the corner of |.| (same units as the gradient). weight: optional per-voxel weight (*shape).
    reduction: "sum" (default) or "mean" over voxels. ndim: number of spatial axes, needed only when xi is
    None and x has batch axes (default: taken from xi, else x.ndim). Differentiable in x.
    """
    if not (0.0 <= gamma <= 1.0):
        raise InputError(f"gamma must be in [0, 1], got {gamma}")
    if xi is None:
        d = int(ndim) if ndim is not None else x.ndim
    else:
        d = xi.shape[0]
        if tuple(x.shape[-d:]) != tuple(xi.shape[1:]):
            raise InputError(f"image shape {tuple(x.shape)} does not match direction field {tuple(xi.shape)}")
    g = gradient(x, spacing, ndim=d)
    if xi is not None and gamma > 0:
        g = apply_projection(g, xi.to(g.dtype), gamma)
    nb = x.ndim - d
    val = torch.sqrt((g * g).sum(dim=nb) + eps * eps)
    if weight is not None:
        val = val * weight
    if reduction == "sum":
        return val.sum()
    if reduction == "mean":
        return val.mean()
    raise InputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _gaussian_kernel(sigma: float, dtype, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_smooth(x: torch.Tensor, sigma_vox: Union[float, Sequence[float]],
                    ndim: Optional[int] = None) -> torch.Tensor:
    """Separable Gaussian smoothing over the last ``ndim`` axes (default all) of a tensor, sigma in voxels
    (one value or one per spatial axis; reflect boundary). Torch: runs on the data's device, differentiable.
    """
    d = x.ndim if ndim is None else int(ndim)
    nb = x.ndim - d
    sig = [float(sigma_vox)] * d if np.isscalar(sigma_vox) else [float(s) for s in sigma_vox]
    if len(sig) != d:
        raise InputError(f"sigma needs {d} values, got {sig}")
    out = x
    for k, s in enumerate(sig):
        ax = nb + k
        if s <= 0:
            continue
        ker = _gaussian_kernel(s, x.dtype, x.device)
        r = (ker.numel() - 1) // 2
        moved = out.movedim(ax, -1)
        shp = moved.shape
        flat = moved.reshape(-1, 1, shp[-1])
        # reflect needs r < n; fall back to replicate on tiny axes
        mode = "reflect" if r < shp[-1] else "replicate"
        flat = torch.nn.functional.pad(flat, (r, r), mode=mode)
        flat = torch.nn.functional.conv1d(flat, ker.view(1, 1, -1))
        out = flat.reshape(shp).movedim(-1, ax)
    return out


def pilot_estimate(y: ArrayLike, sigma_mm: Optional[float] = None, sigma_vox: Optional[float] = None,
                   spacing: Optional[Sequence[float]] = None, device=None) -> torch.Tensor:
    """Gaussian-smoothed measurement used as the pilot sodium image for the sodium direction field.

    Give ``sigma_mm`` (with ``spacing`` in mm, array axis order) or ``sigma_vox``; default 1 voxel. Returns a
    float32 tensor on ``device`` (default: the input's device), detached.
    """
    t = _as_tensor(y, device=device).detach()
    if t.is_complex():
        t = t.abs()
    t = t.float()
    if t.ndim not in (2, 3):
        raise InputError(f"pilot_estimate expects a 2D or 3D image, got shape {tuple(t.shape)}")
    if sigma_mm is not None:
        if spacing is None:
            raise InputError("pilot_estimate: sigma_mm needs the voxel spacing in mm")
        sp = _check_spacing(spacing, t.ndim)
        sig = [sigma_mm / s for s in sp]
    else:
        sig = 1.0 if sigma_vox is None else float(sigma_vox)
    return gaussian_smooth(t, sig)
