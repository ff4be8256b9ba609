"""Density weighting of non-Cartesian data: fit |W^1/2 (A x - y)|, with W the density compensation weights."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from SodiumDIPLib.physics.base import Compose, Diag


def density_weights(op) -> Optional[torch.Tensor]:
    """Density compensation weights of a non-Cartesian operator (its ``dcf``, e.g. RadialNUFFT), else None."""
    w = getattr(op, "dcf", None)
    return None if w is None else torch.as_tensor(w, dtype=torch.float32)


def density_weighted(op, y: torch.Tensor, sigma: float, image_shape, device) -> tuple:
    """For non-Cartesian data: (W^1/2 A, W^1/2 y, sigma of the gridded image, True); else (op, y, sigma, False).

    Fitting the density-compensated residual |W^1/2 (A x - y)| makes W^1/2 A close to an orthonormal operator,
    so PDHG and the DIP loop converge in their preset iterations (measurements: docs/variational.md). The noise
    level becomes the gridded image's, sigma sqrt(sum w^2 / n_voxels) (orthonormal NUFFT scaling, unit
    root-sum-of-squares maps).
    """
    weights = density_weights(op)
    if weights is None:
        return op, y, sigma, False
    sw = torch.sqrt(weights.to(device))
    sigma = sigma * math.sqrt(float((weights.double() ** 2).sum()) / float(np.prod(image_shape)))
    return DensityWeighted(op, sw), sw * y, sigma, True


class DensityWeighted(Compose):
    """W^1/2 A = Diag(sqrt(w)) @ A for an operator A and per-sample weights sqrt(w) (broadcast over coils)."""

    def __init__(self, op, sqrt_weights: torch.Tensor):
        super().__init__(Diag(sqrt_weights, op.oshape), op)
