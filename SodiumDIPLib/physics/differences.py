"""Finite differences on the voxel grid as operators: the gradient D (forward differences, Neumann boundary,
divided by the voxel size in mm when a spacing is given) with D^H = -div, and the pointwise directional
projection P_xi = I - gamma xi xi^T of directional TV. dTV's analysis operator is ``P_xi @ D``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.base import LinearOperator


def check_spacing(spacing: Optional[Sequence[float]], d: int) -> Optional[tuple]:
    if spacing is None:
        return None
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != d or any(not (s > 0) for s in spacing):
        raise InputError(f"spacing must be {d} positive voxel sizes in mm (array axis order), got {spacing}")
    return spacing


def gradient(x: torch.Tensor, spacing: Optional[Sequence[float]] = None, ndim: Optional[int] = None) -> torch.Tensor:
    """Forward-difference gradient with Neumann boundary.

    x: tensor (*batch, *shape) with ``ndim`` spatial axes last (default: all axes of x, which must be 2 or 3).
    Returns (*batch, d, *shape); component k is the difference along spatial axis k divided by spacing[k].
    Differentiable.
    """
    d = x.ndim if ndim is None else int(ndim)
    if d not in (1, 2, 3) or d > x.ndim:
        raise InputError(f"gradient expects 2D or 3D spatial data, got shape {tuple(x.shape)} with ndim={ndim}")
    spacing = check_spacing(spacing, d)
    nb = x.ndim - d
    parts = []
    for k in range(d):
        ax = nb + k
        diff = torch.diff(x, dim=ax)
        pad_shape = list(x.shape)
        pad_shape[ax] = 1
        g = torch.cat([diff, diff.new_zeros(pad_shape)], dim=ax)
        if spacing is not None:
            g = g / spacing[k]
        parts.append(g)
    return torch.stack(parts, dim=nb)


def divergence(g: torch.Tensor, spacing: Optional[Sequence[float]] = None, ndim: Optional[int] = None) -> torch.Tensor:
    """Divergence = minus the adjoint of :func:`gradient`: <gradient(x), g> = -<x, divergence(g)>.

    g: (*batch, d, *shape) with d = 2 or 3 (the component axis is the one before the d spatial axes);
    ``ndim`` = d when batch axes make that ambiguous. Returns (*batch, *shape). Differentiable.
    """
    # the component axis sits at position g.ndim - d - 1 and has length d
    d = int(ndim) if ndim is not None else None
    for cand in (() if d is not None else (3, 2, 1)):
        if g.ndim >= cand + 1 and g.shape[g.ndim - cand - 1] == cand:
            d = cand
            break
    if d is None:
        raise InputError(f"divergence expects (*batch, d, *shape) with d = 2 or 3, got {tuple(g.shape)}")
    spacing = check_spacing(spacing, d)
    nb = g.ndim - d - 1
    out = None
    for k in range(d):
        gk = g.select(nb, k)
        ax = nb + k
        n = gk.shape[ax]
        head = gk.narrow(ax, 0, n - 1)  # the last entry of a forward difference is 0 by construction
        pad_shape = list(gk.shape)
        pad_shape[ax] = 1
        z = gk.new_zeros(pad_shape)
        dk = torch.cat([head, z], dim=ax) - torch.cat([z, head], dim=ax)
        if spacing is not None:
            dk = dk / spacing[k]
        out = dk if out is None else out + dk
    return out


class FiniteDifference(LinearOperator):
    """D: image (*shape) -> gradient field (d, *shape), forward differences divided by ``spacing`` (mm, array
    axis order; None = 1). D^H = -divergence. |D| <= sqrt(4 sum_k 1/h_k^2)."""

    def __init__(self, shape: Sequence[int], spacing: Optional[Sequence[float]] = None):
        self.ishape = tuple(int(n) for n in shape)
        self.oshape = (len(self.ishape),) + self.ishape
        self.spacing = check_spacing(spacing, len(self.ishape))

    def forward(self, x):
        return gradient(x, self.spacing, ndim=len(self.ishape))

    def adjoint(self, g):
        return -divergence(g, self.spacing, ndim=len(self.ishape))


class DirectionalProjection(LinearOperator):
    """P_xi g = g - gamma xi (xi . g) on gradient fields (d, *shape); self-adjoint. With |xi| <= 1 and
    0 <= gamma <= 1, |P_xi| <= 1. ``xi``: direction field (d, *shape)."""

    def __init__(self, xi: torch.Tensor, gamma: float):
        if not 0.0 <= float(gamma) <= 1.0:
            raise InputError(f"gamma must be in [0, 1], got {gamma}")
        self.xi, self.gamma = xi, float(gamma)
        self.ishape = self.oshape = tuple(xi.shape)

    def forward(self, g):
        xi = self.xi.to(device=g.device, dtype=g.dtype)
        return g - self.gamma * xi * (g * xi).sum(dim=g.ndim - xi.ndim, keepdim=True)

    def adjoint(self, g):
        return self.forward(g)

    def to(self, device):
        self.xi = self.xi.to(device)
        return self
