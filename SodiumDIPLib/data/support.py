"""Object support (head / breast mask) and noise level, estimated from the image alone."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from SodiumDIPLib.errors import InputError


def head_mask(image: np.ndarray, smoothing_vox: float = 1.5, threshold_scale: float = 1.0) -> np.ndarray:
    """Boolean mask of the object in a magnitude image (2D or 3D).

    Gaussian smoothing (``smoothing_vox`` voxels), the triangle threshold (robust where the background is a
    noise floor rather than zero, as in coil-combined sodium magnitudes) times ``threshold_scale``, closing,
    hole filling, and the largest connected component.
    """
    from skimage.filters import threshold_triangle

    a = np.asarray(image, dtype=np.float32)
    if a.ndim not in (2, 3):
        raise InputError(f"head_mask expects a 2D or 3D image, got shape {a.shape}")
    smooth = ndi.gaussian_filter(a, smoothing_vox) if smoothing_vox > 0 else a
    if np.ptp(smooth) <= 0:
        raise InputError("head_mask: the image is constant; expected an object on a background")
    mask = smooth > threshold_triangle(smooth) * threshold_scale
    mask = ndi.binary_closing(mask, iterations=2, border_value=0)
    mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return mask


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Standard deviation of the Gaussian noise of an image (same units as the image).

    Donoho's robust MAD of the finest diagonal db2 wavelet sub-band (``skimage.restoration.estimate_sigma``):
    smooth anatomy hardly reaches that sub-band, edges are outliers the median ignores (its accuracy on the real
    pair: docs/measurements.md). In a magnitude image the background
    noise floor (Rayleigh / noncentral chi) is included; it biases the estimate low by at most ~1/3 where the
    background dominates.
    """
    from skimage.restoration import estimate_sigma

    a = np.asarray(image, dtype=np.float64)
    if a.size < 64 or min(a.shape) < 4:
        raise InputError(f"cannot estimate the noise level of an image of shape {a.shape}; need at least 4 voxels per axis")
    return float(estimate_sigma(a))
