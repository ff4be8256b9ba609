"""Image-quality metrics (DESIGN section 6): numpy arrays in, floats out, each region named in the key.

Reference-based: PSNR, SSIM, MSE, NRMSE, FSIM, LPIPS (``lpips.py``), lesion contrast recovery (CRC) and proton
leakage. Reference-free: Laplacian focus, background noise sigma, tissue SNR. ``compute_metrics`` returns a
flat dict whose keys end in ``_global`` (whole array) or ``_mask`` (inside the support mask) where both make
sense; ``format_metrics_table`` prints it with a region column.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from SodiumDIPLib.errors import InputError

__all__ = ["mse", "nrmse", "psnr", "ssim", "fsim", "laplacian_focus", "background_sigma", "tissue_snr",
           "auto_background", "lesion_crc", "proton_leakage", "compute_metrics", "format_metrics_table", "REGIONS"]


# ----------------------------------------------------------------------------------------------- validation
def _image(a, name: str) -> np.ndarray:
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a numeric 2D or 3D array") from None
    if a.ndim not in (2, 3):
        raise InputError(f"{name}: expected a 2D or 3D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return a


def _pair(x, reference):
    x, ref = _image(x, "image"), _image(reference, "reference")
    if x.shape != ref.shape:
        raise InputError(f"image shape {x.shape} does not match reference shape {ref.shape}")
    return x, ref


def _mask(mask, shape, name: str = "mask", min_voxels: int = 1) -> np.ndarray:
    """Boolean mask of ``shape`` (None -> everything); empty masks are refused."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise InputError(f"{name} shape {m.shape} does not match image shape {tuple(shape)}")
    if m.dtype != bool:
        if not np.all(np.isfinite(m)):
            raise InputError(f"{name}: contains NaN or infinite values")
        m = m > 0.5
    if m.sum() < min_voxels:
        raise InputError(f"{name} is empty (needs at least {min_voxels} voxels set)")
    return m


def _squeeze(x, ref, mask):
    """A 3D array with a single slice is treated as the 2D image it is (for windowed metrics)."""
    if x.ndim == 3 and 1 in x.shape:
        axis = x.shape.index(1)
        return x.squeeze(axis), ref.squeeze(axis), None if mask is None else mask.squeeze(axis)
    return x, ref, mask


def _data_range(ref: np.ndarray, m: np.ndarray) -> float:
    r = float(ref[m].max())
    if r <= 0:
        raise InputError("reference maximum inside the region is <= 0; PSNR/SSIM need a positive data range")
    return r


# ----------------------------------------------------------------------------------------------- fidelity
def mse(x, reference, mask=None) -> float:
    """Mean squared error over ``mask`` (whole array when None)."""
    x, ref = _pair(x, reference)
    m = _mask(mask, x.shape)
    return float(np.mean((x[m] - ref[m]) ** 2))


def nrmse(x, reference, mask=None) -> float:
    """Normalised RMSE: sqrt(mean((x - ref)^2)) / sqrt(mean(ref^2)) over ``mask`` (scikit-image's 'euclidean')."""
    x, ref = _pair(x, reference)
    m = _mask(mask, x.shape)
    denom = math.sqrt(float(np.mean(ref[m] ** 2)))
    if denom == 0:
        raise InputError("reference is zero everywhere in the region; NRMSE is undefined")
    return math.sqrt(float(np.mean((x[m] - ref[m]) ** 2))) / denom


def psnr(x, reference, mask=None, data_range: float | None = None) -> float:
    """Peak SNR in dB over ``mask``: 10 log10(R^2 / MSE), inf when identical.

    R (data range) defaults to the reference maximum inside the region (magnitude images have minimum ~0).
    """
    x, ref = _pair(x, reference)
    m = _mask(mask, x.shape)
    r = _data_range(ref, m) if data_range is None else float(data_range)
    if not r > 0:
        raise InputError(f"data_range must be > 0, got {data_range!r}")
    err = float(np.mean((x[m] - ref[m]) ** 2))
    return math.inf if err == 0 else 10.0 * math.log10(r * r / err)


def ssim(x, reference, mask=None, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al. 2004, Gaussian window sigma 1.5, scikit-image), 2D or 3D.

    Global (mask None): scikit-image's mean SSIM. Inside a mask: the mean of the full SSIM map over the mask.
    ``data_range`` defaults to the reference maximum over the whole array (the same constants for both
    readings, so global and masked values are comparable).
    """
    from skimage.metrics import structural_similarity

    x, ref = _pair(x, reference)
    if mask is not None:
        mask = _mask(mask, x.shape)
    x, ref, mask = _squeeze(x, ref, mask)
    if min(x.shape) < 11:
        raise InputError(f"SSIM needs at least 11 voxels along every axis (its Gaussian window), got shape {x.shape}")
    r = _data_range(ref, np.ones(ref.shape, bool)) if data_range is None else float(data_range)
    mean, smap = structural_similarity(ref, x, data_range=r, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, full=True)
    if mask is None:
        return float(mean)
    return float(smap[mask].mean())


# ----------------------------------------------------------------------------------------------- FSIM
def _lowpass(rows, cols, cutoff=0.45, n=15):
    radius = _radius_theta(rows, cols)[0]
    return 1.0 / (1.0 + (radius / cutoff) ** (2 * n))


def _radius_theta(rows, cols):
    def rng(n):
        return (np.arange(n) - (n - 1) / 2) / (n - 1) if n % 2 else (np.arange(n) - n // 2) / n
    x, y = np.meshgrid(rng(cols), rng(rows))
    radius = np.fft.ifftshift(np.sqrt(x ** 2 + y ** 2))
    theta = np.fft.ifftshift(np.arctan2(-y, x))
    return radius, theta


def _phase_congruency(stack: np.ndarray) -> np.ndarray:
    """Kovesi phase congruency as in the FSIM reference code (phasecong2), for a stack of 2D images [n, r, c]."""
    nscale, norient, min_wave, mult, sigma_onf, dtheta_on_sigma, k, eps = 4, 4, 6, 2, 0.55, 1.2, 2.0, 1e-4
    stack = stack.astype(np.float32)  # single precision: twice as fast, ample for a similarity index
    _, rows, cols = stack.shape
    theta_sigma = np.pi / norient / dtheta_on_sigma
    imfft = np.fft.fft2(stack)
    radius, theta = _radius_theta(rows, cols)
    radius = radius.copy()
    radius[0, 0] = 1.0
    lp = _lowpass(rows, cols)
    log_gabor = []
    for s in range(nscale):
        fo = 1.0 / (min_wave * mult ** s)
        g = np.exp(-(np.log(radius / fo)) ** 2 / (2 * np.log(sigma_onf) ** 2)) * lp
        g[0, 0] = 0.0
        log_gabor.append(g.astype(np.float32))
    sin_t, cos_t = np.sin(theta), np.cos(theta)
    energy_all = np.zeros(stack.shape, np.float32)
    an_all = np.zeros(stack.shape, np.float32)
    for o in range(norient):
        angl = o * np.pi / norient
        ds = sin_t * np.cos(angl) - cos_t * np.sin(angl)
        dc = cos_t * np.cos(angl) + sin_t * np.sin(angl)
        spread = np.exp(-np.arctan2(ds, dc) ** 2 / (2 * theta_sigma ** 2)).astype(np.float32)
        sum_e = np.zeros(stack.shape, np.float32)
        sum_o = np.zeros(stack.shape, np.float32)
        sum_an = np.zeros(stack.shape, np.float32)
        eo_list, ifft_filters = [], []
        for s in range(nscale):
            filt = log_gabor[s] * spread
            ifft_filters.append(np.real(np.fft.ifft2(filt.astype(np.float64))) * math.sqrt(rows * cols))
            eo = np.fft.ifft2(imfft * filt)
            eo_list.append(eo)
            sum_an += np.abs(eo)
            sum_e += eo.real
            sum_o += eo.imag
            if s == 0:
                em_n = float(np.sum(filt.astype(np.float64) ** 2))
        x_energy = np.sqrt(sum_e ** 2 + sum_o ** 2) + eps
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = np.zeros(stack.shape, np.float32)
        for eo in eo_list:
            e, od = eo.real, eo.imag
            energy += e * mean_e + od * mean_o - np.abs(e * mean_o - od * mean_e)
        # Noise compensation, per image of the stack (the reference code works on one image).
        median_e2n = np.median((np.abs(eo_list[0]) ** 2).reshape(len(stack), -1), axis=1)
        noise_power = (-median_e2n / math.log(0.5)) / em_n
        est_sum_an2 = sum(f ** 2 for f in ifft_filters).sum()
        est_sum_aiaj = sum((ifft_filters[i] * ifft_filters[j]).sum()
                           for i in range(nscale - 1) for j in range(i + 1, nscale))
        est_noise_energy2 = 2 * noise_power * est_sum_an2 + 4 * noise_power * est_sum_aiaj
        tau = np.sqrt(est_noise_energy2 / 2)
        threshold = (tau * math.sqrt(math.pi / 2) + k * np.sqrt((2 - math.pi / 2) * tau ** 2)) / 1.7
        energy_all += np.maximum(energy - threshold[:, None, None].astype(np.float32), 0)
        an_all += sum_an
    return np.divide(energy_all, an_all, out=np.zeros_like(energy_all), where=an_all > 0).astype(np.float64)


def _fsim_stack(ref_stack: np.ndarray, x_stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FSIM's similarity x PCm and PCm maps for a stack of 2D slices (images already scaled to 0..255)."""
    t1, t2 = 0.85, 160.0
    pc = _phase_congruency(np.concatenate([ref_stack, x_stack]))
    pc1, pc2 = pc[: len(ref_stack)], pc[len(ref_stack):]
    dx = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]]) / 16.0

    def grad(st):  # conv2(..., 'same') with zero padding, as in the reference code
        return np.hypot(ndi.convolve(st, dx[None], mode="constant"), ndi.convolve(st, dx.T[None], mode="constant"))

    g1, g2 = grad(ref_stack), grad(x_stack)
    pc_sim = (2 * pc1 * pc2 + t1) / (pc1 ** 2 + pc2 ** 2 + t1)
    g_sim = (2 * g1 * g2 + t2) / (g1 ** 2 + g2 ** 2 + t2)
    pcm = np.maximum(pc1, pc2)
    return g_sim * pc_sim * pcm, pcm


def _fsim_maps(x: np.ndarray, ref: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel FSIM numerator and denominator, summed over the slice directions (see ``fsim``)."""
    xs, rs = x * (255.0 / r), ref * (255.0 / r)
    if x.ndim == 2:
        num, den = _fsim_stack(rs[None], xs[None])
        return num[0], den[0]
    num, den = np.zeros(x.shape), np.zeros(x.shape)
    for axis in range(3):
        n_, d_ = _fsim_stack(np.moveaxis(rs, axis, 0), np.moveaxis(xs, axis, 0))
        num += np.moveaxis(n_, 0, axis)
        den += np.moveaxis(d_, 0, axis)
    return num, den


def _pool_fsim(num, den, m, x, ref) -> float:
    d = float(den[m].sum())
    if d <= 0:  # no features at all: identical -> 1, else nothing to compare -> 0
        return 1.0 if np.array_equal(x[m], ref[m]) else 0.0
    return float(num[m].sum()) / d


def fsim(x, reference, mask=None, data_range: float | None = None) -> float:
    """Feature similarity FSIM (Zhang et al. 2011, grey-level; phase congruency + gradient magnitude).

    Follows the authors' reference code (4 scales, 4 orientations, T1 = 0.85, T2 = 160) with both images
    scaled so that 0..data_range maps to 0..255 (data_range: reference maximum over the whole array by
    default), no downsampling (sodium images are far below 256 px). 2D: one image. 3D: every slice along
    each of the three axes, numerators and denominators pooled (sum of similarity x PCm over all slices /
    sum of PCm), so featureless slices weigh nothing. With a mask, only voxels inside it are pooled.
    """
    x, ref = _pair(x, reference)
    x, ref, m = _squeeze(x, ref, _mask(mask, x.shape))
    r = _data_range(ref, np.ones(ref.shape, bool)) if data_range is None else float(data_range)
    if min(x.shape) < 8:
        raise InputError(f"FSIM needs at least 8 voxels along every axis, got shape {x.shape}")
    num, den = _fsim_maps(x, ref, r)
    return _pool_fsim(num, den, m, x, ref)


# ----------------------------------------------------------------------------------------------- no reference
def laplacian_focus(x, mask=None) -> float:
    """Variance of the discrete Laplacian (ndimage.laplace, voxel units) over ``mask``; higher = sharper.

    Not scale-free (intensity^2): compare images in the same units only.
    """
    x = _image(x, "image")
    m = _mask(mask, x.shape)
    return float(np.var(ndi.laplace(x, mode="nearest")[m]))


def background_sigma(x, background, n_channels: int = 1) -> float:
    """Noise sigma (per real channel) from a background region of a magnitude image.

    Where the background holds noise only, the magnitude of ``n_channels`` complex Gaussian channels combined
    by sum of squares (n_channels = 1: Rayleigh) has E[m^2] = 2 n sigma^2, so sigma = sqrt(mean(m^2) / (2 n)).
    A denoiser that zeroes the background reports ~0 here: read it with the image.
    """
    x = _image(x, "image")
    m = _mask(background, x.shape, name="background mask", min_voxels=16)
    if int(n_channels) != n_channels or n_channels < 1:
        raise InputError(f"n_channels must be an integer >= 1, got {n_channels!r}")
    return math.sqrt(float(np.mean(x[m] ** 2)) / (2.0 * n_channels))


def tissue_snr(x, tissue, background=None, sigma: float | None = None, n_channels: int = 1) -> float:
    """Mean of ``x`` in the ``tissue`` mask divided by the noise sigma (given, or from ``background``)."""
    x = _image(x, "image")
    t = _mask(tissue, x.shape, name="tissue mask")
    if sigma is None:
        if background is None:
            raise InputError("tissue_snr needs either a background mask or a noise sigma")
        sigma = background_sigma(x, background, n_channels)
    mean = float(x[t].mean())
    if sigma <= 0:
        return math.inf if mean > 0 else 0.0
    return mean / float(sigma)


def auto_background(x, margin_vox: int = 3) -> np.ndarray:
    """Background mask: outside the object found by ``support.head_mask``, dilated by ``margin_vox``."""
    from SodiumDIPLib.data.support import head_mask

    x = _image(x, "image")
    head = head_mask(x)
    return ~ndi.binary_dilation(head, iterations=margin_vox) if margin_vox > 0 else ~head


# ----------------------------------------------------------------------------------------------- sodium-specific
def lesion_crc(x, truth, lesion, mask=None, ring_width: int = 2) -> float:
    """Contrast recovery coefficient of a lesion against a ring of surrounding tissue.

    CRC = (mean_x(lesion) / mean_x(ring) - 1) / (mean_t(lesion) / mean_t(ring) - 1), where the ring is the
    lesion dilated by ``ring_width`` voxels, minus the lesion, inside ``mask`` (e.g. the brain). 1 = contrast
    fully kept, 0 = lesion gone, > 1 = exaggerated.
    """
    x, t = _pair(x, truth)
    les = _mask(lesion, x.shape, name="lesion mask")
    m = _mask(mask, x.shape)
    if int(ring_width) != ring_width or ring_width < 1:
        raise InputError(f"ring_width must be an integer >= 1 voxel, got {ring_width!r}")
    ring = ndi.binary_dilation(les, iterations=int(ring_width)) & ~les & m
    if ring.sum() == 0:
        raise InputError("the ring around the lesion is empty inside the mask; cannot compute CRC")
    t_ring, x_ring = float(t[ring].mean()), float(x[ring].mean())
    if t_ring <= 0 or x_ring <= 0:
        raise InputError("mean intensity in the ring around the lesion is <= 0; CRC needs positive tissue values")
    true_contrast = float(t[les].mean()) / t_ring - 1.0
    if abs(true_contrast) < 1e-6:
        raise InputError("the lesion has no contrast in the reference; CRC is undefined")
    return (float(x[les].mean()) / x_ring - 1.0) / true_contrast


def proton_leakage(x, truth, proton_only, contrast: float, mask=None, neighbourhood: int | None = 3) -> float:
    """How much of a proton-only structure leaked into the sodium result (0 = none, 1 = copied in full).

    Least-squares regression of d = truth - x on the regressor r = contrast * truth * pattern, with an
    intercept and truth itself as nuisance regressors (an offset or scale error of x is not leakage).
    ``pattern`` is the proton-only mask (binary, or a fractional 0..1 map). The fit runs over ``mask`` (e.g.
    the brain) restricted to the structure dilated by ``neighbourhood`` voxels (None: the whole mask), so
    the structure is compared with its own surroundings and a smooth residual bias elsewhere is not read
    as leakage. A full copy x = truth * (1 - contrast * pattern) gives exactly 1, x = truth gives 0.
    Sign: positive when x is darker where the proton image is darker (contrast > 0 = darker structure);
    negative = the structure appears with the opposite sign.
    """
    x, t = _pair(x, truth)
    p = np.asarray(proton_only, dtype=np.float64)
    if p.shape != x.shape:
        raise InputError(f"proton-only mask shape {p.shape} does not match image shape {x.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise InputError("proton-only pattern must hold values in [0, 1]")
    m = _mask(mask, x.shape)
    if not (contrast is not None and np.isfinite(contrast) and contrast != 0):
        raise InputError(f"proton-only contrast must be a finite non-zero number, got {contrast!r}")
    if neighbourhood is not None:
        if int(neighbourhood) != neighbourhood or neighbourhood < 1:
            raise InputError(f"neighbourhood must be an integer >= 1 voxel or None, got {neighbourhood!r}")
        m = m & ndi.binary_dilation(p > 0, iterations=int(neighbourhood))
    r = float(contrast) * t * p
    if not np.any(r[m] != 0):
        raise InputError("the proton-only structure does not overlap the mask (or the truth is zero there)")
    if np.all(r[m] != 0):
        raise InputError("the proton-only structure covers the whole region; leakage needs surroundings")
    design = np.stack([np.ones(int(m.sum())), t[m], r[m]], axis=1)
    coef, *_ = np.linalg.lstsq(design, (t - x)[m], rcond=None)
    return float(coef[2])


# ----------------------------------------------------------------------------------------------- all at once
def compute_metrics(x, reference=None, mask=None, lesion=None, proton_only=None, proton_only_contrast=None,
                    background=None, lpips_weights=None, n_channels: int = 1) -> dict:
    """All metrics that the inputs allow, as a flat dict of floats (LPIPS may be an 'unavailable: ...' string).

    Keys say the region: ``*_global`` = whole array, ``*_mask`` = inside ``mask``. Reference-based keys
    (psnr, ssim, mse, nrmse, fsim, lpips_global, lesion_crc, proton_leakage) appear only with a reference;
    lesion_crc needs ``lesion``, proton_leakage needs ``proton_only`` and ``proton_only_contrast`` (both are
    computed inside ``mask`` when given). ``background``: a mask, or "auto" (outside the detected object),
    gives background_sigma and, with ``mask``, tissue_snr_mask. ``lpips_weights``: path(s) of the LPIPS
    weights (default: the SODIUMDIP_LPIPS_WEIGHTS environment variable).
    """
    x = _image(x, "image")
    out: dict = {}
    m = None if mask is None else _mask(mask, x.shape)
    if reference is not None:
        x, ref = _pair(x, reference)
        regions = [("global", None)] + ([("mask", m)] if m is not None else [])
        fs = _fsim_for_regions(x, ref, [region for _, region in regions])
        for (name, region), f in zip(regions, fs):
            out[f"psnr_{name}"] = psnr(x, ref, region)
            out[f"ssim_{name}"] = (ssim(x, ref, region) if min(_squeeze(x, ref, None)[0].shape) >= 11
                                   else "unavailable: SSIM needs at least 11 voxels along every axis")
            out[f"mse_{name}"] = mse(x, ref, region)
            out[f"nrmse_{name}"] = nrmse(x, ref, region)
            out[f"fsim_{name}"] = f
        from SodiumDIPLib.metrics.lpips import lpips_or_reason

        out["lpips_global"] = lpips_or_reason(x, ref, weights=lpips_weights)
        # An empty lesion / proton-only mask (e.g. a phantom made without them) is reported, not fatal.
        if lesion is not None:
            les = _mask(lesion, x.shape, name="lesion mask", min_voxels=0)
            out["lesion_crc"] = lesion_crc(x, ref, les, m) if les.any() else "unavailable: empty lesion mask"
        if proton_only is not None and proton_only_contrast is not None:
            po = np.asarray(proton_only)
            out["proton_leakage"] = (proton_leakage(x, ref, po, proton_only_contrast, m) if np.any(po > 0)
                                     else "unavailable: empty proton-only mask")
    out["laplacian_focus_global"] = laplacian_focus(x)
    if m is not None:
        out["laplacian_focus_mask"] = laplacian_focus(x, m)
    if background is not None:
        bg = auto_background(x) if isinstance(background, str) and background == "auto" else background
        out["background_sigma"] = background_sigma(x, bg, n_channels)
        if m is not None:
            out["tissue_snr_mask"] = tissue_snr(x, m, sigma=out["background_sigma"])
    return out


def _fsim_for_regions(x, ref, regions) -> list:
    """FSIM for several regions from one set of phase-congruency maps (the expensive part)."""
    masks = [_mask(r, x.shape) for r in regions]
    xs, rs, _ = _squeeze(x, ref, None)
    if min(xs.shape) < 8:
        return ["unavailable: FSIM needs at least 8 voxels along every axis"] * len(regions)
    num, den = _fsim_maps(xs, rs, _data_range(ref, np.ones(ref.shape, bool)))
    return [_pool_fsim(num, den, _squeeze(x, ref, m)[2], xs, rs) for m in masks]


REGIONS = {"global": "whole image", "mask": "inside mask"}
_SPECIAL_REGIONS = {"background_sigma": "background", "lesion_crc": "lesion vs ring (in mask)",
                    "proton_leakage": "proton-only (in mask)", "tissue_snr_mask": "mask / background"}


def format_metrics_table(metrics: dict) -> str:
    """Aligned text table: metric | region | value (floats to 4 significant decimals, strings as they are)."""
    rows = []
    for key, value in metrics.items():
        if key in _SPECIAL_REGIONS:
            name, region = key.rsplit("_mask", 1)[0] if key.endswith("_mask") else key, _SPECIAL_REGIONS[key]
        elif "_" in key and key.rsplit("_", 1)[1] in REGIONS:
            name, suffix = key.rsplit("_", 1)
            region = REGIONS[suffix]
        else:
            name, region = key, "-"
        if isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool):
            v = float(value)
            text = "inf" if math.isinf(v) else (f"{v:.4g}" if abs(v) >= 1e4 or (0 < abs(v) < 1e-3) else f"{v:.4f}")
        else:
            text = str(value)
        rows.append((name, region, text))
    if not rows:
        return "(no metrics)"
    w0 = max(len("metric"), *(len(r[0]) for r in rows))
    w1 = max(len("region"), *(len(r[1]) for r in rows))
    lines = [f"{'metric':<{w0}}  {'region':<{w1}}  value", f"{'-' * w0}  {'-' * w1}  {'-' * 10}"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
