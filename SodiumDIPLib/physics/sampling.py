"""Retrospective undersampling patterns at acceleration R, reproducible from a seed.

Cartesian: variable-density random phase encodes with a fully sampled calibration centre; 2D images
(y, x) undersample the phase-encode axis y (1D pattern, x is the readout), 3D images (z, y, x) undersample
the (z, y) phase-encode plane (x is the readout). Radial: a subset of the spokes.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError


def _check_r(acceleration) -> float:
    try:
        r = float(acceleration)
    except (TypeError, ValueError):
        raise InputError(f"acceleration must be a number >= 1, got {acceleration!r}") from None
    if not math.isfinite(r) or r < 1:
        raise InputError(f"acceleration R must be >= 1 (R = 1 is fully sampled), got {acceleration!r}")
    return r


def default_density_power(acceleration: float) -> float:
    """Variable-density power used by cartesian_mask when none is given: max(1, log2(R) - 1).

    1 up to R = 4, rising to 2 at R = 8 (a flatter density keeps more outer k-space where the data still carry
    information, a steeper one protects the centre when few lines are kept; measurements: docs/measurements.md).
    """
    return max(1.0, math.log2(_check_r(acceleration)) - 1.0)


def cartesian_mask(image_shape: tuple, acceleration: float, seed: int = 0, calibration: Optional[int] = None,
                   power: Optional[float] = None) -> np.ndarray:
    """Boolean sampling mask of shape ``image_shape`` sampling about 1/R of the phase encodes.

    image_shape: (y, x) or (z, y, x); the last axis (x) is the readout and always fully sampled.
    acceleration: R >= 1 (2, 3, 4, 6, 8 are the benchmark factors; non-integers are allowed).
    seed:         random seed (same seed, same mask).
    calibration:  side (in phase-encode lines per axis) of the fully sampled centre (default: 12% of the
                  phase-encode size, at least 4 lines, at most half the lines kept in total; a given size is
                  reduced only when it exceeds the lines kept).
    power:        variable density: the probability of a phase encode at normalised distance d from the
                  centre (0..1) is proportional to (1 - d)^power (higher = more weight on the centre); default
                  ``default_density_power(R)``.
    The number of phase encodes kept is round(n_phase_encodes / R); the achieved factor is
    ``mask_acceleration(mask)``.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise InputError(f"cartesian_mask expects a 2D (y, x) or 3D (z, y, x) shape, got {image_shape}")
    r = _check_r(acceleration)
    pe_shape = shape[:-1]
    n_pe = int(np.prod(pe_shape))
    n_keep = max(1, int(round(n_pe / r)))
    if power is None:
        power = default_density_power(r)
    if power < 0:
        raise InputError(f"variable-density power must be >= 0, got {power}")
    # calibration centre: a square (or line run) of side c per phase-encode axis, small enough to leave
    # at least half of the kept lines to the random part
    if calibration is None:
        # 12 %: 6 lines on 48^3 (4 on 32^3, 8 on 64^3); why 12 %: docs/measurements.md
        c = max(4, int(round(0.12 * max(pe_shape))))
    else:
        c = int(calibration)
        if c < 0:
            raise InputError(f"calibration size must be >= 0 lines, got {calibration}")
    limit = n_keep if calibration is not None else max(1, n_keep // 2)  # a given size is kept when it fits
    while c > 0 and c ** len(pe_shape) > limit and r > 1:
        c -= 1
    pe = np.zeros(pe_shape, dtype=bool)
    centre = tuple(slice(n // 2 - c // 2, n // 2 - c // 2 + c) for n in pe_shape)
    if c > 0:
        pe[centre] = True
    grids = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for n in pe_shape], indexing="ij")
    dist = np.sqrt(sum(g ** 2 for g in grids)) / math.sqrt(len(pe_shape))
    prob = np.clip(1.0 - dist, 1e-3, None) ** power
    prob[pe] = 0
    remaining = n_keep - int(pe.sum())
    if remaining > 0:
        rng = np.random.default_rng(int(seed))
        free = np.flatnonzero(prob.ravel() > 0)
        p = prob.ravel()[free]
        pick = rng.choice(free, size=min(remaining, free.size), replace=False, p=p / p.sum())
        pe.ravel()[pick] = True
    return np.broadcast_to(pe[..., None], shape).copy()


def mask_acceleration(mask: np.ndarray) -> float:
    """Achieved acceleration of a Cartesian mask: phase encodes / sampled phase encodes."""
    m = np.asarray(mask, dtype=bool)
    pe = m.any(axis=-1)
    if not pe.any():
        raise InputError("the sampling mask selects no k-space sample")
    return float(pe.size / pe.sum())


def radial_spoke_subset(n_spokes: int, acceleration: float, seed: int = 0, ordering: str = "golden") -> np.ndarray:
    """Indices of the ceil(n_spokes / R) spokes kept, sorted.

    ordering "golden" (golden-means / golden-angle acquisition order): a contiguous run starting at a seeded
    offset (any run of golden-ordered spokes covers k-space near uniformly); any other ordering: every R-th
    spoke (evenly spaced indices) from a seeded offset.
    """
    n = int(n_spokes)
    if n < 1:
        raise InputError(f"need at least one spoke, got {n_spokes}")
    r = _check_r(acceleration)
    keep = max(1, int(math.ceil(n / r)))
    offset = int(np.random.default_rng(int(seed)).integers(0, n))
    if ordering == "golden":
        idx = (offset + np.arange(keep)) % n
    else:
        idx = (offset + np.floor(np.arange(keep) * n / keep).astype(int)) % n
    return np.sort(np.unique(idx))
