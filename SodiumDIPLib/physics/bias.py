"""Smooth multiplicative receive-bias field b = exp(B c) with its scale pinned.

B is a low-degree tensor-product Legendre polynomial basis (all monomials of total degree 1..``degree``),
on coordinates mapped to [-1, 1] over the bounding box of the support (in millimetres, so anisotropic voxels
do not bend the basis). The basis is orthonormalised over the support voxels AFTER removing its mean there, so

    mean over the support of log b = sum_k c_k mean_support(B_k) = 0   exactly, for every c

(the projection is built into the basis, not a penalty): b and the image x cannot trade a global scale.
Orthonormal columns also make the coefficients equally scaled, which Adam likes.
"""

from __future__ import annotations

from itertools import product
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from numpy.polynomial import legendre

from SodiumDIPLib.errors import InputError


def legendre_basis(shape: tuple, support: np.ndarray | None = None, degree: int = 3,
                   spacing: tuple | None = None) -> np.ndarray:
    """Zero-mean (over ``support``), orthonormal smooth basis, array (K, *shape) float32.

    shape:   image shape (2D or 3D, array axis order).
    support: boolean mask where the field is fitted and its log-mean pinned (None: whole image).
    degree:  maximum total polynomial degree, 1..6 (3D degree 3 gives 19 functions).
    spacing: voxel size per array axis in mm (None: isotropic).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3):
        raise InputError(f"bias field basis needs a 2D or 3D shape, got {shape}")
    if not 1 <= int(degree) <= 6:
        raise InputError(f"bias_degree must be between 1 and 6, got {degree}")
    support = np.ones(shape, bool) if support is None else np.asarray(support, bool)
    if support.shape != shape:
        raise InputError(f"support mask shape {support.shape} does not match image shape {shape}")
    if support.sum() < 8:
        support = np.ones(shape, bool)  # degenerate mask: pin over the whole image instead
    spacing = np.ones(len(shape)) if spacing is None else np.asarray(spacing, float)
    coords = []
    idx = np.nonzero(support)
    for axis, n in enumerate(shape):
        mm = np.arange(n) * spacing[axis]
        lo, hi = mm[idx[axis].min()], mm[idx[axis].max()]
        half = max((hi - lo) / 2, spacing[axis])
        coords.append((mm - (lo + hi) / 2) / half)
    grids = np.meshgrid(*coords, indexing="ij")
    columns = []
    for powers in product(range(int(degree) + 1), repeat=len(shape)):
        if 0 < sum(powers) <= degree:
            f = np.ones(shape)
            for g, p in zip(grids, powers):
                f = f * legendre.legval(g, [0] * p + [1])
            columns.append(f)
    basis = np.stack(columns)  # (K, *shape)
    inside = basis[:, support].T  # (N, K)
    inside = inside - inside.mean(0)
    # Orthonormalise over the support: Q = inside @ R^-1, applied to the full-grid basis too.
    _, r = np.linalg.qr(inside)
    keep = np.abs(np.diag(r)) > 1e-8 * np.abs(np.diag(r)).max()
    r_inv = np.linalg.pinv(r[np.ix_(keep, keep)])
    mean = basis[:, support].mean(1)
    centred = basis - mean.reshape((-1,) + (1,) * len(shape))
    flat = centred[keep].reshape(int(keep.sum()), -1).T @ r_inv * np.sqrt(support.sum())
    return np.ascontiguousarray(flat.T.reshape((-1,) + shape), dtype=np.float32)


class BiasField(nn.Module):
    """b = exp(log b0 + B c) on a fixed basis; ``c`` (zero at start) is the only parameter.

    ``log b0`` is a fixed starting field (zero, i.e. b = 1, unless ``set_start`` gives one, e.g. a classical
    pilot's N4 field); ``forward()`` returns b with the image's shape; ``log_field()`` returns log b.
    """

    def __init__(self, shape: tuple, support: np.ndarray | None = None, degree: int = 3,
                 spacing: tuple | None = None):
        super().__init__()
        basis = legendre_basis(shape, support, degree, spacing)
        self.register_buffer("basis", torch.from_numpy(basis))
        self.coefficients = nn.Parameter(torch.zeros(basis.shape[0]))
        self.register_buffer("start", torch.zeros(tuple(shape)))
        self.support = None if support is None else np.asarray(support, bool)
        self.shape = tuple(shape)

    @torch.no_grad()
    def set_start(self, field: np.ndarray) -> float:
        """Start from ``field`` (positive, the image's shape) rescaled to mean log b = 0 on the support.

        Returns the factor it was divided by, so that a caller can keep b * x unchanged."""
        log_b = np.log(np.clip(np.asarray(field, np.float64), 1e-3, None))
        sup = np.ones(self.shape, bool) if self.support is None else self.support
        mean = float(log_b[sup].mean())
        self.start.copy_(torch.from_numpy((log_b - mean).astype(np.float32)))
        return float(np.exp(mean))

    def log_field(self) -> torch.Tensor:
        return self.start + torch.tensordot(self.coefficients, self.basis, dims=1)

    def forward(self) -> torch.Tensor:
        return torch.exp(self.log_field())


# The evidence rule for a receive field (docs/method.md, "bias only where the data carry one"): N4's field on the
# sodium image itself has a log-std of 0.001-0.014 on every simulated case without receive bias (head, breast,
# MNI152 brains, SNR 5-10) and 0.054-0.098 with one (span 0.3), 0.071 on the 7 T array-coil scan.
BIAS_EVIDENCE_LOG_STD = 0.03


def field_log_std(field: np.ndarray, support: np.ndarray | None = None) -> float:
    """Standard deviation of log b over ``support`` (the whole array when None)."""
    lb = np.log(np.clip(np.asarray(field, np.float64), 1e-6, None))
    return float(lb[np.asarray(support, bool)].std() if support is not None else lb.std())


def evident_field(field: np.ndarray, support: np.ndarray | None,
                  threshold: float = BIAS_EVIDENCE_LOG_STD) -> tuple:
    """(field, log-std) when the field's log-std over the support reaches ``threshold``; (None, log-std) when the
    data show no receive bias (the field would be fitted anatomy or noise)."""
    sd = field_log_std(field, support)
    return (field if sd >= threshold else None), sd


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> np.ndarray:
    """Labels 0..k-1 of 1D values by k-means (Lloyd), started at the k quantile midpoints: thresholds fall in the
    gaps between tissue levels, where quantile bins would cut through a tissue (e.g. grey matter)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        label = np.argmin(np.abs(values[:, None] - centres[None]), 1)
        new = np.array([values[label == j].mean() if (label == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.argmin(np.abs(values[:, None] - centres[None]), 1)


def proton_regression_init(image: np.ndarray, proton: np.ndarray, support: np.ndarray, basis: np.ndarray,
                           bins: int = 8, smoothing_vox: float = 1.0, iterations: int = 8, classes: int = 1,
                           rounds: int = 4) -> np.ndarray:
    """Starting bias coefficients from a robust fit log(smooth(image)) ~ B c + h(class, proton) over the support.

    h is a piecewise-linear function of the proton intensity (``bins`` knots between its 1st and 99th
    percentile), one per sodium intensity class: tissue that looks alike in the proton image AND falls in the
    same sodium class is assumed to have alike sodium; what varies smoothly across the head on top of that is the
    receive bias (tissue-class-conditioned bias estimation, as in EM segmentation-based correction). ``classes``
    (1..8): sodium classes, k-means of the bias-corrected log intensity, re-drawn over ``rounds`` rounds
    (classes = 1: proton intensity alone). Huber-weighted iterative least squares, so sodium-only findings are
    outliers rather than bias. ``basis`` is :func:`legendre_basis`'s output. How well it recovers a known bias,
    against N4: docs/measurements.md.
    """
    from scipy import ndimage as ndi

    if not 1 <= int(classes) <= 8:
        raise InputError(f"bias classes must be between 1 and 8, got {classes}")
    support = np.asarray(support, bool)
    s = ndi.gaussian_filter(np.asarray(image, float), smoothing_vox) if smoothing_vox > 0 else np.asarray(image, float)
    vals = s[support]
    t = np.log(np.maximum(vals, 1e-3 * max(vals.max(), 1e-12)))
    pv = np.asarray(proton, float)[support]
    lo, hi = np.percentile(pv, [1, 99])
    if not hi > lo:
        return np.zeros(basis.shape[0], np.float32)
    u = np.clip((pv - lo) / (hi - lo) * (bins - 1), 0, bins - 1 - 1e-9)
    i0 = u.astype(int)
    f = u - i0
    rows = np.arange(pv.size)
    B = basis[:, support].T.astype(float)
    log_b = np.zeros(t.size)
    coef = np.zeros(B.shape[1])
    for _ in range(int(rounds) if classes > 1 else 1):
        label = _kmeans_1d(t - log_b, int(classes))
        phi = np.zeros((pv.size, bins * int(classes)))
        phi[rows, label * bins + i0] = 1 - f
        phi[rows, label * bins + i0 + 1] += f
        design = np.concatenate([B, phi], 1)
        w = np.ones(t.size)
        for _ in range(int(iterations)):
            sw = np.sqrt(w)
            coef = np.linalg.lstsq(design * sw[:, None], t * sw, rcond=None)[0]
            r = t - design @ coef
            scale = 1.4826 * np.median(np.abs(r)) + 1e-9
            a = np.abs(r) / (1.345 * scale)
            w = np.where(a <= 1, 1.0, 1.0 / np.maximum(a, 1e-12))
        log_b = B @ coef[: B.shape[1]]
    return coef[: B.shape[1]].astype(np.float32)


def n4_bias_field(image: np.ndarray, support: Optional[np.ndarray] = None, levels: int = 3,
                  iterations: int = 50, spacing: Optional[tuple] = None) -> np.ndarray:
    """Smooth multiplicative receive bias b of a magnitude image by N4 (SimpleITK), mean log b = 0 on support.

    The classical bias correction (Tustison et al. 2010) that a variational pipeline would run before
    denoising; ``levels`` B-spline fitting levels x ``iterations`` each. 2D or 3D.
    """
    import SimpleITK as sitk

    from SodiumDIPLib.data.support import head_mask

    a = np.asarray(image, dtype=np.float32)
    sup = head_mask(a) if support is None else np.asarray(support, bool)
    if sup.sum() < 16:
        raise InputError("bias correction needs an object support of at least 16 voxels")
    pos = a[sup]
    img = sitk.GetImageFromArray(np.maximum(a, 1e-3 * float(np.percentile(pos, 99))))  # N4 works on log(image)
    if spacing is not None:
        img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    mask = sitk.GetImageFromArray(sup.astype(np.uint8))
    mask.CopyInformation(img)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(iterations)] * int(levels))
    n4.Execute(img, mask)
    logb = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img)).astype(np.float64)
    logb -= logb[sup].mean()
    return np.exp(logb).astype(np.float32)


BIAS_MODES = ("none", "n4", "auto")


def receive_bias(image: np.ndarray, support, spacing, mode: str) -> tuple:
    """(bias field or None, diagnostics) for ``bias_correction`` = "none" | "n4" (always) | "auto" (N4, kept only
    when its log-std over the support reaches bias.BIAS_EVIDENCE_LOG_STD: no field where the data carry none)."""
    if mode not in BIAS_MODES:
        raise InputError(f"bias_correction must be one of {BIAS_MODES}, got {mode!r}")
    if mode == "none":
        return None, {"bias_decision": "off (bias_correction none)"}
    field = n4_bias_field(np.asarray(image, np.float32), support, spacing=spacing)
    sup = None if support is None else np.asarray(support, bool)
    kept, sd = evident_field(field, sup, BIAS_EVIDENCE_LOG_STD if mode == "auto" else 0.0)
    decision = ("estimated (N4)" if mode == "n4" else
                f"estimated: N4 log-std {sd:.3f} >= {BIAS_EVIDENCE_LOG_STD}" if kept is not None else
                f"none: N4 log-std {sd:.3f} < {BIAS_EVIDENCE_LOG_STD} (no receive bias in the data)")
    return kept, {"bias_decision": decision, "bias_evidence_log_std": sd}
