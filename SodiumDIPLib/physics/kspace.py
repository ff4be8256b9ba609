"""From multi-coil k-space to a reconstruction Problem, and retrospective undersampling of full data.

kspace_problem builds what every method gets (methods.base.Problem) with a k-space data term:
operator A = multi-coil Cartesian (mask * FFT * S) or radial NUFFT, measurement y, and the zero-filled /
gridding image as the initial estimate. The data are normalised here by the engine's one rule
(problem.normalised_problem: the 99.5th percentile of the zero-filled / gridding magnitude inside the object
support becomes 1) and the factor is returned: divide a reconstruction by ``scale`` to return to the data's units.

Sensitivities are given, or estimated from the calibration region (the fully sampled k-space centre;
for radial, the densely sampled centre) by Walsh's method (or as coil / sum-of-squares ratios). The
object's smooth phase is moved into the sensitivities (``absorb_phase``), so the image to reconstruct is
close to real and positive, which is what the magnitude-image priors of the methods produce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from scipy import ndimage as ndi

from SodiumDIPLib.physics.coils import combine_coils, estimate_sensitivities, sum_of_squares
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.problem import Problem, normalised_problem
from SodiumDIPLib.physics.cartesian import MultiCoilCartesian, ifftc_np
from SodiumDIPLib.physics.radial import RadialNUFFT, grid_coil_images, validate_trajectory
from SodiumDIPLib.physics.sampling import cartesian_mask, mask_acceleration, radial_spoke_subset

@dataclass
class KspaceProblem:
    """kspace_problem's result: the Problem plus what is needed to interpret it.

    problem:       methods.base.Problem (normalised units; problem.magnitude is False).
    scale:         1 / the intensity scale (problem.intensity_scale): divide a reconstruction by it for the data's units.
    sensitivities: (coils, *image_shape) used by the operator (phase of the object included when absorbed).
    combination:   how the sensitivities were obtained: "given", "walsh", "sos" or "single-coil".
    noise_sigma:   k-space noise std per real channel in the original units (given or estimated).
    noise_source:  "given" or "k-space periphery".
    kind:          "cartesian" or "radial".
    unit:          the data-units value of normalised intensity 1 (problem.intensity_scale; about 1 / scale).
    """

    problem: Problem
    scale: float
    sensitivities: np.ndarray
    combination: str
    noise_sigma: float
    noise_source: str
    kind: str
    details: dict = field(default_factory=dict)
    unit: float = 1.0


# ----------------------------------------------------------------------------------------------- checks
def _as_kspace(kspace, role="k-space") -> np.ndarray:
    k = kspace.detach().cpu().numpy() if isinstance(kspace, torch.Tensor) else np.asarray(kspace)
    if not np.issubdtype(k.dtype, np.number):
        raise InputError(f"{role} must be a numeric (complex) array, got dtype {k.dtype}")
    if k.size == 0:
        raise InputError(f"{role} is empty")
    finite = np.isfinite(k)
    if not finite.all():
        raise InputError(f"{role} contains {int((~finite).sum())} NaN or infinite sample(s); expected finite values")
    return k.astype(np.complex64)


def _cartesian_inputs(k: np.ndarray, mask):
    if k.ndim not in (3, 4):
        raise InputError(f"Cartesian k-space must have shape (coils, [z,] y, x); got shape {k.shape}")
    shape = k.shape[1:]
    if mask is None:
        m = np.abs(k).sum(0) > 0  # acquired = non-zero in some coil
    else:
        m = np.asarray(mask)
        if m.shape != shape:
            raise InputError(f"sampling mask of shape {m.shape} does not match the k-space shape {shape} "
                             f"(k-space is (coils, {', '.join(map(str, shape))}))")
        m = m.astype(bool)
    if not m.any():
        raise InputError("the sampling mask selects no k-space sample")
    return shape, m


def calibration_size(mask: np.ndarray) -> int:
    """Side (lines per phase-encode axis) of the largest fully sampled centred block of a Cartesian mask."""
    pe = np.asarray(mask, bool).any(axis=-1)
    best = 0
    for c in range(1, min(pe.shape) + 1):
        sl = tuple(slice(n // 2 - c // 2, n // 2 - c // 2 + c) for n in pe.shape)
        if pe[sl].all():
            best = c
        else:
            break
    return best


def _hann_window(shape, size_per_axis) -> np.ndarray:
    """Separable Hann taper of the given width (samples) per axis, centred at N//2, zero outside."""
    win = np.ones(shape, np.float32)
    for ax, (n, w) in enumerate(zip(shape, size_per_axis)):
        if w >= n:
            continue
        i = np.arange(n) - n // 2
        h = np.where(np.abs(i) <= w / 2, 0.5 + 0.5 * np.cos(2 * np.pi * i / max(w, 1)), 0.0)
        win = win * h.reshape([-1 if a == ax else 1 for a in range(len(shape))]).astype(np.float32)
    return win


def calibration_images(kspace: np.ndarray, mask: np.ndarray, calibration: Optional[int] = None) -> np.ndarray:
    """Low-resolution coil images from the fully sampled k-space centre (Hann-tapered), (coils, *shape).

    The Hann taper is two lines wider than the calibration block, so every calibration line keeps a non-zero
    weight (a taper of the block's own width zeroes its outer lines; docs/measurements.md).
    """
    shape = kspace.shape[1:]
    c = calibration_size(mask) if calibration is None else int(calibration)
    full_pe = mask.any(axis=-1).all()
    if full_pe:
        return ifftc_np(kspace, len(shape))
    if c < 4:
        raise InputError(f"the sampling mask has a fully sampled centre of only {c} line(s); at least 4 are needed "
                         "to estimate coil sensitivities (give sensitivities, or sample a calibration region)")
    win = _hann_window(shape, [c + 2] * (len(shape) - 1) + [shape[-1]])
    return ifftc_np(kspace * mask * win, len(shape))


def estimate_noise_sigma_kspace(kspace, mask=None, trajectory=None, fraction: float = 0.1) -> float:
    """Noise std per real channel from the k-space periphery (where the object contributes little).

    Cartesian: the acquired samples farthest from the centre (outer ``fraction`` by normalised radius);
    radial: samples with |k| in the outer ``fraction`` of 0.5. Robust (MAD) over real and imaginary parts.
    """
    k = _as_kspace(kspace)
    if trajectory is not None:
        t = validate_trajectory(trajectory)
        r = np.linalg.norm(t, axis=-1) / 0.5
        sel = np.broadcast_to(r >= np.quantile(r, 1 - fraction), k.shape[1:])
    else:
        shape = k.shape[1:]
        m = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
        grids = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for n in shape], indexing="ij")
        r = np.sqrt(sum(g ** 2 for g in grids))
        r_acq = r[m]
        sel = m & (r >= np.quantile(r_acq, 1 - fraction))
    v = k[:, sel]
    parts = np.concatenate([v.real.ravel(), v.imag.ravel()])
    if parts.size < 32:
        raise InputError("too few k-space samples in the periphery to estimate the noise level; give noise_sigma")
    return float(np.median(np.abs(parts - np.median(parts))) / 0.6745)


def least_squares_image(op, y: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Complex image from k-space and an operator with its maps: CG on A^H A x = A^H y from 0, ``iterations``
    steps (early stopping is the regularisation). Unlike the zero-filled image it unfolds the aliasing."""
    b = op.adjoint(y)
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rs = rs0 = float(torch.vdot(r.flatten(), r.flatten()).real)
    for _ in range(int(iterations)):
        if rs <= 1e-12 * rs0 or rs0 == 0:
            break
        ap = op.adjoint(op.forward(p))
        alpha = rs / float(torch.vdot(p.flatten(), ap.flatten()).real)
        x, r = x + alpha * p, r - alpha * ap
        rs_new = float(torch.vdot(r.flatten(), r.flatten()).real)
        p, rs = r + (rs_new / rs) * p, rs_new
    return x


def _sensitivities_from(coil_images: np.ndarray, how: str, kernel: int):
    if coil_images.shape[0] == 1:
        return np.ones_like(coil_images, dtype=np.complex64), "single-coil"
    if how == "walsh":
        return np.asarray(estimate_sensitivities(coil_images, kernel=kernel)), "walsh"
    if how == "sos":
        sos = np.asarray(sum_of_squares(coil_images))
        return (coil_images / np.maximum(sos, 1e-12 * sos.max())).astype(np.complex64), "sos"
    raise InputError(f"unknown coil combination {how!r}; expected 'walsh' or 'sos'")


def _array_or_none(a, shape, role):
    if a is None:
        return None
    arr = np.asarray(a)
    if arr.shape != tuple(shape):
        raise InputError(f"{role} of shape {arr.shape} does not match the image shape {tuple(shape)}")
    return arr


# ----------------------------------------------------------------------------------------------- problem
def kspace_problem(kspace, mask=None, trajectory=None, image_shape: Optional[tuple] = None, sensitivities=None,
                   proton=None, spacing: Optional[tuple] = None, noise_sigma: Optional[float] = None,
                   coil_combination: str = "walsh", kernel: int = 5, calibration: Optional[int] = None,
                   absorb_phase: bool = True, reference=None, support=None,
                   dcf=None, backend: str = "finufft") -> KspaceProblem:
    """Problem with a k-space data term from multi-coil k-space.

    kspace:        Cartesian (coils, [z,] y, x) with zeros where not acquired, or radial (coils, *traj.shape[:-1]).
    mask:          Cartesian sampling mask (image shape; default: the non-zero samples).
    trajectory:    radial trajectory (..., d) in cycles/pixel in [-0.5, 0.5); needs ``image_shape``.
    sensitivities: (coils, *image_shape) maps; default: estimated from the calibration region by
                   ``coil_combination`` ("walsh", or "sos" = coil / root-sum-of-squares ratio), Walsh box ``kernel``.
    proton, reference, support: images on the reconstruction grid (array order); the proton in any units
                   (problem.normalise_proton scales it).
                   ``reference`` is in the data's units (it is normalised here like the data).
    spacing:       voxel size in mm in array axis order ([z,] y, x) (default 1 mm).
    noise_sigma:   k-space noise std per real channel in the data's units (default: from the periphery).
    absorb_phase:  move a smooth phase reference into the sensitivities (the image becomes ~real): from the
                   calibration images (estimated maps), a CG-SENSE image (given Cartesian maps) or the gridded image.
    """
    k = _as_kspace(kspace)
    if trajectory is None:
        shape, m = _cartesian_inputs(k, mask)
        kind = "cartesian"
        if image_shape is not None and tuple(image_shape) != tuple(shape):
            raise InputError(f"image_shape {tuple(image_shape)} does not match the Cartesian k-space shape {shape}")
    else:
        if mask is not None:
            raise InputError("give either a Cartesian mask or a radial trajectory, not both")
        if image_shape is None:
            raise InputError("radial k-space needs the image_shape of the reconstruction")
        shape = tuple(int(s) for s in image_shape)
        t = validate_trajectory(trajectory, shape)
        if k.shape[1:] != t.shape[:-1] or k.ndim != t.ndim:
            raise InputError(f"radial k-space of shape {k.shape} does not match the trajectory of shape {t.shape}: "
                             f"expected (coils, {', '.join(map(str, t.shape[:-1]))})")
        kind = "radial"
    n_coils = k.shape[0]
    if sensitivities is not None:
        sens = np.asarray(sensitivities.detach().cpu().numpy() if isinstance(sensitivities, torch.Tensor) else sensitivities)
        if sens.ndim != len(shape) + 1 or sens.shape[0] != n_coils or sens.shape[1:] != tuple(shape):
            raise InputError(f"coil sensitivities of shape {sens.shape} do not match the k-space: expected "
                             f"({n_coils}, {', '.join(map(str, shape))}) for {n_coils} coil(s)")
        if not np.isfinite(sens).all():
            raise InputError("coil sensitivities contain NaN or infinite values")
        sens = sens.astype(np.complex64)
        combination = "given"
        cal = None  # given maps: the phase reference is a least-squares image (see absorb_phase below)
    else:
        if kind == "cartesian":
            cal = calibration_images(k, m, calibration)
        else:
            cal = _radial_calibration_images(k, t, shape, dcf, backend)
        sens, combination = _sensitivities_from(cal, coil_combination, kernel)
    y = torch.as_tensor(k)
    if kind == "cartesian":
        op = MultiCoilCartesian(sens, m)
    else:
        op = RadialNUFFT(t, shape, sens, backend=backend, dcf=dcf)
    init = op.zero_filled(y).numpy()
    phase = None
    if absorb_phase:
        # phase reference: the calibration images combined with the maps (the combined low-resolution image:
        # smooth phase, free of aliasing; the aliased zero-filled image's phase leaves the real image model
        # unable to fit the data). Given Cartesian maps: a least-squares (CG-SENSE) image, which the maps
        # unfold; given radial maps keep the gridded image's phase (little coherent aliasing).
        # Measurements: docs/measurements.md.
        if cal is not None:
            ref_img = (sens.conj() * cal).sum(0)
        elif kind == "cartesian":
            ref_img = least_squares_image(op, y).numpy()
        else:
            ref_img = init
        smooth = ndi.gaussian_filter(ref_img.real, 2.0) + 1j * ndi.gaussian_filter(ref_img.imag, 2.0)
        phase = np.angle(smooth).astype(np.float32)
        sens = (sens * np.exp(1j * phase)[None]).astype(np.complex64)
        dcf_now = op.dcf if kind == "radial" else None
        op = MultiCoilCartesian(sens, m) if kind == "cartesian" else RadialNUFFT(t, shape, sens, backend=backend, dcf=dcf_now)
        init = op.zero_filled(y).numpy()
    init_mag = np.abs(init).astype(np.float32)
    if noise_sigma is None:
        sigma_raw = estimate_noise_sigma_kspace(k, mask=m if kind == "cartesian" else None,
                                                trajectory=t if kind == "radial" else None)
        noise_source = "k-space periphery"
    else:
        sigma_raw = float(noise_sigma)
        if not np.isfinite(sigma_raw) or sigma_raw < 0:
            raise InputError(f"noise_sigma must be a finite number >= 0, got {noise_sigma}")
        noise_source = "given"
    sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * len(shape)
    if len(sp) != len(shape):
        raise InputError(f"spacing {spacing} must have {len(shape)} values (array axis order)")
    if support is None:
        from SodiumDIPLib.data.support import head_mask

        try:
            support = head_mask(init_mag)
        except InputError:
            support = None
    else:
        support = _array_or_none(support, shape, "support").astype(bool)
    ref = _array_or_none(reference, shape, "reference")
    problem, unit = normalised_problem(y, op, init_mag, sp, support, sigma_raw,
                                       proton=_array_or_none(proton, shape, "proton"),
                                       reference=None if ref is None else np.abs(ref).astype(np.float32),
                                       magnitude_data=False, n_channels=n_coils, role="k-space")
    scale = 1.0 / unit
    details = {"acceleration": mask_acceleration(m) if kind == "cartesian" else None}
    if phase is not None:
        details["phase"] = phase
    return KspaceProblem(problem, float(scale), sens, combination, sigma_raw, noise_source, kind, details, float(unit))


def _radial_calibration_images(k, t, shape, dcf, backend, radius: float = 0.12) -> np.ndarray:
    """Low-resolution coil images from the (densely sampled) centre of radial k-space, Hann-tapered."""
    r = np.linalg.norm(t, axis=-1)
    taper = np.where(r < radius, 0.5 + 0.5 * np.cos(np.pi * r / radius), 0.0).astype(np.float32)
    return grid_coil_images(k * taper[None], t, shape, dcf=dcf, backend=backend)


# ----------------------------------------------------------------------------------------------- undersampling
@dataclass
class UndersampledCase:
    """A retrospectively accelerated acquisition with its fully sampled reference.

    kspace:       undersampled k-space (Cartesian: zeros off the mask; radial: the kept spokes).
    mask:         Cartesian sampling mask (image shape) or None; trajectory: kept spokes' trajectory or None.
    reference:    magnitude image from the full data (coil-combined by ``combination``), float32.
    acceleration: achieved factor; requested: the factor asked for; spokes: kept spoke indices (radial).
    """

    kspace: np.ndarray
    mask: Optional[np.ndarray]
    trajectory: Optional[np.ndarray]
    reference: np.ndarray
    acceleration: float
    requested: float
    seed: int
    combination: str
    image_shape: tuple
    spokes: Optional[np.ndarray] = None


def undersample_case(kspace, acceleration: float, seed: int = 0, trajectory=None, image_shape: Optional[tuple] = None,
                     mask=None, calibration: Optional[int] = None, coil_combination: str = "walsh",
                     ordering: str = "golden") -> UndersampledCase:
    """Undersample fully sampled k-space by ``acceleration`` (R >= 1), reproducibly from ``seed``.

    Cartesian (coils, [z,] y, x): a variable-density mask with a fully sampled centre (sampling.cartesian_mask),
    combined with ``mask`` (what was acquired, default all). Radial (with ``trajectory`` (spokes, readout, d) and
    ``image_shape``): ceil(spokes / R) spokes (sampling.radial_spoke_subset, ``ordering``).
    The reference is the coil combination ("walsh" or "sos") of the full data.
    """
    k = _as_kspace(kspace)
    if trajectory is None:
        shape, acquired = _cartesian_inputs(k, mask)
        coil = ifftc_np(k * acquired, len(shape))
        ref, used, _ = combine_coils(coil, coil_combination)
        m = cartesian_mask(shape, acceleration, seed=seed, calibration=calibration) & acquired
        return UndersampledCase((k * m).astype(np.complex64), m, None, np.asarray(ref, np.float32),
                                mask_acceleration(m), float(acceleration), int(seed), used, tuple(shape))
    if image_shape is None:
        raise InputError("radial k-space needs the image_shape of the reconstruction")
    shape = tuple(int(s) for s in image_shape)
    t = validate_trajectory(trajectory, shape)
    if t.ndim != 3 or k.shape[1:] != t.shape[:-1]:
        raise InputError(f"radial k-space of shape {k.shape} does not match the trajectory of shape {t.shape} "
                         "(expected trajectory (spokes, readout, d) and k-space (coils, spokes, readout))")
    coil = grid_coil_images(k, t, shape)
    ref, used, _ = combine_coils(coil, coil_combination)
    idx = radial_spoke_subset(t.shape[0], acceleration, seed=seed, ordering=ordering)
    return UndersampledCase(k[:, idx].astype(np.complex64), None, t[idx].astype(np.float32), np.asarray(ref, np.float32),
                            t.shape[0] / len(idx), float(acceleration), int(seed), used, shape, spokes=idx)
