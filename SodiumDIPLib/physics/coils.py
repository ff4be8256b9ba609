"""Coil combination: sum-of-squares and Walsh adaptive combine (with coil sensitivity estimates), 2D and 3D.

Inputs are coil images of shape (coils, [z,] y, x), numpy or torch (torch in -> torch out, same device).
Walsh et al. 2000 (MRM 43:682): at every voxel the coil weights are the dominant eigenvector of the local
signal covariance (box-smoothed outer product of the coil images); eigenvectors have an arbitrary phase per
voxel, so each is rotated to the phase of its projection on the first principal component of all coils
(the global dominant eigenvector), which makes the sensitivity phase, and so the combined image, smooth.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from SodiumDIPLib.errors import InputError

COMBINATIONS = ("walsh", "sos")


def _to_numpy(coil_images, role="coil images"):
    torch_in = None
    try:
        import torch

        if isinstance(coil_images, torch.Tensor):
            torch_in = coil_images.device
            coil_images = coil_images.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(coil_images)
    if a.ndim not in (3, 4):
        raise InputError(f"{role} must have shape (coils, [z,] y, x); got shape {a.shape}")
    if a.shape[0] < 1 or min(a.shape[1:]) < 2:
        raise InputError(f"{role} of shape {a.shape} is too small; expected (coils, [z,] y, x) with y, x >= 2")
    if not np.isfinite(a).all():
        raise InputError(f"{role} contain NaN or infinite values")
    return a, torch_in


def _back(a: np.ndarray, device):
    if device is None:
        return a
    import torch

    return torch.as_tensor(np.ascontiguousarray(a)).to(device)


def sum_of_squares(coil_images):
    """Root sum of squares over coils: sqrt(sum_c |m_c|^2), float32 image of shape [z,] y, x."""
    a, dev = _to_numpy(coil_images)
    return _back(np.sqrt((np.abs(a) ** 2).sum(0)).astype(np.float32), dev)


def _principal_component(a: np.ndarray) -> np.ndarray:
    """Dominant eigenvector of the coil covariance summed over the whole image (phase reference)."""
    flat = a.reshape(a.shape[0], -1)
    cov = flat @ flat.conj().T
    _, vecs = np.linalg.eigh(cov)
    return vecs[:, -1]


def estimate_sensitivities(coil_images, kernel: int = 5, noise_covariance=None, power_iterations: int = 20):
    """Walsh coil sensitivities (coils, [z,] y, x), complex64, unit norm over coils at every voxel.

    kernel:           side of the box (voxels) over which the signal covariance is averaged (odd, >= 1);
                      larger = smoother maps and more noise averaging, smaller = follows sharper coil profiles.
    noise_covariance: optional (coils, coils) noise covariance Psi = L L^H; the estimate is made on prewhitened
                      coils (L^-1 m) and mapped back (S = L S_white), so S is in the original coil space, the
                      model m = S x holds; S is rescaled to unit norm over coils either way, so x is on the
                      scale of the sum-of-squares image.
    power_iterations: steps of the power iteration for the dominant eigenvector (>= 1).
    """
    a, dev = _to_numpy(coil_images)
    if isinstance(noise_covariance, str):
        noise_covariance = _auto_covariance(a, noise_covariance)
    kernel = int(kernel)
    if kernel < 1:
        raise InputError(f"Walsh kernel must be >= 1 voxel, got {kernel}")
    if noise_covariance is not None:
        a = prewhiten(a, noise_covariance)
    a = a.astype(np.complex64)
    chol = None if noise_covariance is None else np.linalg.cholesky(np.asarray(noise_covariance)).astype(np.complex64)
    n_coils = a.shape[0]
    spatial = a.shape[1:]
    sens = np.empty_like(a)
    u = _principal_component(a)
    size = (kernel,) * len(spatial)
    # Covariance per voxel is coils^2 values: process slabs along the first spatial axis to bound memory.
    budget = 64 * 2 ** 20  # complex64 elements of the covariance per slab (~512 MB)
    per_row = n_coils * n_coils * int(np.prod(spatial[1:]))
    slab = max(1, budget // max(per_row, 1))
    half = kernel // 2
    for start in range(0, spatial[0], slab):
        stop = min(spatial[0], start + slab)
        lo, hi = max(0, start - half), min(spatial[0], stop + half)
        part = a[:, lo:hi]
        cov = np.empty((n_coils, n_coils) + part.shape[1:], dtype=np.complex64)
        for c in range(n_coils):
            for d in range(c, n_coils):
                prod = part[c] * part[d].conj()
                sm = ndi.uniform_filter(prod.real, size, mode="nearest") + 1j * ndi.uniform_filter(prod.imag, size, mode="nearest")
                cov[c, d] = sm
                if d != c:
                    cov[d, c] = sm.conj()
        cov = cov[:, :, start - lo:stop - lo]
        mats = np.moveaxis(cov.reshape(n_coils, n_coils, -1), -1, 0)  # (voxels, C, C)
        # Dominant eigenvector by power iteration from the global principal component (C^2 per step instead of
        # the C^3 of a full eigendecomposition; the signal covariance is close to rank one, so it converges fast).
        v = np.broadcast_to(u.astype(np.complex64), (mats.shape[0], n_coils)).copy()
        for _ in range(power_iterations):
            v = np.matmul(mats, v[:, :, None])[:, :, 0]
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
        ref = v @ u.conj()  # u^H v per voxel: phase of the projection on the first principal component
        v = v * np.exp(-1j * np.angle(ref))[:, None]
        sens[:, start:stop] = v.T.reshape((n_coils, stop - start) + spatial[1:])
    if chol is not None:
        sens = np.tensordot(chol, sens, axes=(1, 0))
        sens /= np.maximum(np.sqrt((np.abs(sens) ** 2).sum(0, keepdims=True)), 1e-30)
    return _back(sens.astype(np.complex64), dev)


def noise_covariance_from_background(coil_images, support: Optional[np.ndarray] = None, margin: Optional[int] = None):
    """Coil noise covariance (coils, coils) from the image background (outside the dilated object support).

    support: object mask (default: head_mask of the sum-of-squares image); margin: dilation in voxels.
    """
    from SodiumDIPLib.data.support import head_mask

    a, _ = _to_numpy(coil_images)
    if support is None:
        support = head_mask(np.sqrt((np.abs(a) ** 2).sum(0)))
    margin = max(2, min(a.shape[1:]) // 16) if margin is None else int(margin)
    outside = ~ndi.binary_dilation(support, iterations=margin)
    if outside.sum() < 4 * a.shape[0]:
        raise InputError("not enough background outside the object to estimate the coil noise covariance")
    bg = a[:, outside]
    return (bg @ bg.conj().T / bg.shape[1]).astype(np.complex128)


def _auto_covariance(a: np.ndarray, how: str):
    """noise_covariance="auto": measured from the background, or None when the object fills the field of view."""
    if how != "auto":
        raise InputError(f"noise_covariance must be None, 'auto' or a (coils, coils) matrix; got {how!r}")
    try:
        psi = noise_covariance_from_background(a)
        np.linalg.cholesky(psi)
        return psi
    except (InputError, np.linalg.LinAlgError):
        return None


def prewhiten(coil_data, noise_covariance) -> np.ndarray:
    """Coil data (coils, ...) multiplied by L^-1 where noise_covariance = L L^H: white, unit-variance coil noise."""
    a = np.asarray(coil_data)
    psi = np.asarray(noise_covariance)
    if psi.shape != (a.shape[0], a.shape[0]):
        raise InputError(f"noise covariance of shape {psi.shape} does not match {a.shape[0]} coils")
    try:
        chol = np.linalg.cholesky(psi)
    except np.linalg.LinAlgError:
        raise InputError("the noise covariance is not positive definite") from None
    w = np.linalg.inv(chol)
    return np.tensordot(w, a, axes=(1, 0)).astype(a.dtype if np.iscomplexobj(a) else np.complex64)


def walsh_combine(coil_images, kernel: int = 5, noise_covariance=None):
    """Walsh adaptive combination: (image, sensitivities).

    image: complex combined image S^H m (S unit norm over coils, so the noise is not amplified and |image| is on
           the scale of the sum-of-squares image), or with a noise covariance Psi the optimal-SNR combination
           S^H Psi^-1 m / (S^H Psi^-1 S) (same scale); its phase is smooth (see module doc).
    sensitivities: (coils, [z,] y, x) complex64 (see estimate_sensitivities for ``kernel``, ``noise_covariance``).
    """
    a, dev = _to_numpy(coil_images)
    if isinstance(noise_covariance, str):
        noise_covariance = _auto_covariance(a, noise_covariance)
    sens = estimate_sensitivities(a, kernel=kernel, noise_covariance=noise_covariance)
    weights = combination_weights(sens, noise_covariance)
    image = (weights.conj() * a).sum(0).astype(np.complex64)
    return _back(image, dev), _back(sens, dev)


def combination_weights(sensitivities: np.ndarray, noise_covariance=None) -> np.ndarray:
    """Weights w with image = sum_c conj(w_c) m_c and w^H S = 1 (unbiased for m = S x): S / |S|^2, or with a
    noise covariance Psi the optimal-SNR weights Psi^-1 S / (S^H Psi^-1 S)."""
    s = np.asarray(sensitivities)
    if noise_covariance is None:
        return s / np.maximum((np.abs(s) ** 2).sum(0, keepdims=True), 1e-30)
    inv = np.linalg.inv(np.asarray(noise_covariance)).astype(np.complex64)
    w = np.tensordot(inv, s, axes=(1, 0))
    return w / np.maximum(np.real((s.conj() * w).sum(0, keepdims=True)), 1e-30)


def combine_coils(coil_images, method: str = "walsh", kernel: int = 5, noise_covariance="auto"):
    """Magnitude coil combination by name: returns (magnitude float32 image, method used, sensitivities or None).

    method: "walsh" (adaptive; with noise_covariance "auto" the coil noise covariance is measured outside the
    object and used for optimal-SNR weights when there is enough background) or "sos" (sum of squares).
    The method string returned says what was done: "walsh", "walsh+prewhitened", "sos" or "single-coil".
    """
    if method not in COMBINATIONS:
        raise InputError(f"unknown coil combination {method!r}; expected one of {COMBINATIONS}")
    a, dev = _to_numpy(coil_images)
    if a.shape[0] == 1:
        return _back(np.abs(a[0]).astype(np.float32), dev), "single-coil", None
    if method == "sos":
        return _back(sum_of_squares(a), dev), "sos", None
    if isinstance(noise_covariance, str):
        noise_covariance = _auto_covariance(a, noise_covariance)
    image, sens = walsh_combine(a, kernel=kernel, noise_covariance=noise_covariance)
    used = "walsh" if noise_covariance is None else "walsh+prewhitened"
    return _back(np.abs(image).astype(np.float32), dev), used, _back(sens, dev)


def centre_snr(coil_images, combined, weights, support: Optional[np.ndarray] = None,
               centre_fraction: float = 0.15, noise_covariance=None) -> float:
    """SNR in the object's centre of a coil combination image = sum_c conj(w_c) m_c (|image| for magnitude).

    Signal: mean |combined| in a central box (``centre_fraction`` of the object's extent per axis). Noise: the
    coil noise covariance Psi measured outside the object (noise_covariance_from_background unless given),
    propagated through the weights of each centre voxel: sigma^2 = w^H Psi w / 2 per real channel, which is
    the magnitude noise at high SNR. Sum-of-squares is the combination with w = m / |m| (pass
    ``weights=coil_images / sum_of_squares(coil_images)``).
    """
    from SodiumDIPLib.data.support import head_mask

    a, _ = _to_numpy(coil_images)
    m = np.abs(np.asarray(combined, dtype=np.complex128))
    if support is None:
        support = head_mask(np.sqrt((np.abs(a) ** 2).sum(0)))
    psi = noise_covariance_from_background(a, support) if noise_covariance is None else np.asarray(noise_covariance)
    idx = np.argwhere(support)
    c = idx.mean(0)
    ext = np.maximum((idx.max(0) - idx.min(0) + 1) * centre_fraction / 2, 1)
    sl = tuple(slice(int(round(ci - e)), int(round(ci + e)) + 1) for ci, e in zip(c, ext))
    w = np.asarray(weights)[(slice(None),) + sl].reshape(a.shape[0], -1)
    var = np.real(np.einsum("cv,cd,dv->v", w.conj(), psi, w)) / 2
    return float(m[sl].mean() / np.sqrt(var).mean())
