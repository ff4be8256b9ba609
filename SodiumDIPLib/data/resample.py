"""Putting one volume onto another's grid by physical geometry (the proton onto the sodium grid)."""

from __future__ import annotations

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.volume import Volume, as_3d, from_sitk, to_sitk

#: Below this fraction of the target's field of view covered by the moving volume, the two are refused.
MIN_OVERLAP = 0.1


def overlap_fraction(moving: Volume, target: Volume) -> float:
    """Fraction of the target's physical bounding box (LPS, mm^3) that the moving volume's box covers."""
    tmin, tmax = as_3d(target).physical_bounds()
    mmin, mmax = as_3d(moving).physical_bounds()
    inter = np.clip(np.minimum(tmax, mmax) - np.maximum(tmin, mmin), 0, None)
    extent = np.maximum(tmax - tmin, 1e-9)
    return float(np.prod(inter) / np.prod(extent))


def check_overlap(moving: Volume, target: Volume, moving_role="proton", target_role="sodium") -> float:
    """Refuse (InputError) volumes that do not share physical space; returns the overlap fraction."""
    frac = overlap_fraction(moving, target)
    if frac < MIN_OVERLAP:
        tmin, tmax = as_3d(target).physical_bounds()
        mmin, mmax = as_3d(moving).physical_bounds()
        raise InputError(
            f"{moving_role} and {target_role} volumes do not overlap in space ({100 * frac:.1f}% of the {target_role} "
            f"field of view is covered; {target_role} spans {np.round(tmin, 1).tolist()}..{np.round(tmax, 1).tolist()} mm, "
            f"{moving_role} spans {np.round(mmin, 1).tolist()}..{np.round(mmax, 1).tolist()} mm, LPS). "
            f"Expected a {moving_role} volume registered to the {target_role} volume")
    return frac


def resample_to_grid(moving: Volume, target: Volume, interpolation: str = "linear", antialias: bool = True,
                     moving_role: str = "proton", target_role: str = "sodium", default_value: float = 0.0) -> Volume:
    """Resample ``moving`` onto the grid of ``target`` through their physical geometry.

    interpolation: "linear", "bspline" (cubic) or "nearest" (for label masks).
    antialias: when the target grid is coarser along an axis, first blur ``moving`` with a Gaussian whose FWHM
    makes up the difference (sigma^2 = (s_target^2 - s_moving^2) / (8 ln 2), per axis, in mm), so fine detail
    averages into the coarse voxel instead of aliasing.
    Raises InputError when the volumes do not overlap. A 2D target gives a 2D result.
    """
    import SimpleITK as sitk

    interpolators = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}
    if interpolation not in interpolators:
        raise InputError(f"unknown interpolation {interpolation!r}; expected one of {sorted(interpolators)}")
    check_overlap(moving, target, moving_role, target_role)
    mov3, tgt3 = as_3d(moving), as_3d(target)
    image = to_sitk(mov3.with_array(mov3.array.astype(np.float32)))
    if antialias and interpolation != "nearest":
        sigma = _antialias_sigma_mm(mov3, tgt3)
        if np.any(sigma > 0):
            variance = [float(s) ** 2 for s in sigma]
            image = sitk.DiscreteGaussian(image, variance=variance, maximumKernelWidth=64, useImageSpacing=True)
    reference = to_sitk(tgt3.with_array(np.zeros(tgt3.shape, np.float32)))
    out = sitk.Resample(image, reference, sitk.Transform(), interpolators[interpolation], float(default_value),
                        sitk.sitkFloat32)
    result = from_sitk(out)
    if target.ndim == 2:
        return Volume(result.array[0], target.spacing, target.origin, target.direction)
    return result


def _antialias_sigma_mm(moving: Volume, target: Volume) -> np.ndarray:
    """Per moving-axis Gaussian sigma (mm) making up the resolution difference to the target grid."""
    # Footprint of a target voxel measured along each moving axis direction.
    proj = np.abs(moving.direction.T @ target.direction) @ np.asarray(target.spacing)
    own = np.asarray(moving.spacing)
    var = np.clip(proj ** 2 - own ** 2, 0, None) / (8 * np.log(2))
    return np.sqrt(var)


def same_grid(a: Volume, b: Volume, tol: float = 1e-4) -> bool:
    """True when two volumes share shape, spacing, origin and direction (to ``tol``)."""
    return (a.shape == b.shape and np.allclose(a.spacing, b.spacing, atol=tol)
            and np.allclose(a.origin, b.origin, atol=tol) and np.allclose(a.direction, b.direction, atol=tol))
