"""How a volume is shown: the three planes through a point, orientation letters, physical extent, windows.

Planes follow 3D Slicer's default (radiological) views, in RAS:
- axial:    screen right = patient Left,  screen up = Anterior  (R on the left edge, A at the top)
- coronal:  screen right = patient Left,  screen up = Superior
- sagittal: screen right = Posterior,     screen up = Superior  (A on the left edge)
A volume is not resliced: each plane shows the array axes closest to the screen axes (flipped where needed),
as ITK-SNAP and Slicer's "reformat off" do. The letters name the patient direction that each edge of the
displayed slice really points to, so an oblique or flipped acquisition is labelled correctly. Physical
size (not voxel count) sets the aspect ratio, so anisotropic voxels are not stretched.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.volume import Volume, as_3d, ijk_to_ras_matrix, lps_to_ras

PLANES = ("axial", "coronal", "sagittal")

# (screen-right, screen-up) unit vectors in RAS, as in Slicer's default slice orientations.
_SCREEN = {
    "axial": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "sagittal": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
}
_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))  # (+, -) along RAS x, y, z


def ras_letter(vector) -> str:
    """Patient direction (R/L, A/P, S/I) that a RAS vector points to most."""
    v = np.asarray(vector, dtype=float)
    axis = int(np.argmax(np.abs(v)))
    return _LETTERS[axis][0 if v[axis] >= 0 else 1]


@dataclass(frozen=True)
class PlaneView:
    """How to cut and lay out one plane of a grid.

    Index axes are 0 = i, 1 = j, 2 = k. ``fixed`` is cut at one index; ``col`` runs left to right on screen,
    ``row`` top to bottom. ``flip_col`` / ``flip_row``: the index decreases along the screen direction.
    letters: patient direction at the left, right, top and bottom edges.
    """

    plane: str
    fixed: int
    row: int
    col: int
    flip_row: bool
    flip_col: bool
    n_slices: int
    n_rows: int
    n_cols: int
    row_mm: float  # pixel height in mm
    col_mm: float  # pixel width in mm
    letters: dict

    @property
    def width_mm(self) -> float:
        return self.n_cols * self.col_mm

    @property
    def height_mm(self) -> float:
        return self.n_rows * self.row_mm

    def cut(self, array: np.ndarray, index: int) -> np.ndarray:
        """The displayed 2D slice (rows top to bottom, columns left to right) of an array [k, j, i] (or [c, k, j, i])."""
        a = np.asarray(array)
        lead = a.ndim - 3
        if lead not in (0, 1):
            raise ValueError(f"expected an array [k, j, i] or [c, k, j, i], got shape {a.shape}")
        index = int(np.clip(index, 0, self.n_slices - 1))
        s = np.take(a, index, axis=lead + 2 - self.fixed)  # array axis of index axis c is 2 - c
        # remaining array axes, in order, correspond to index axes sorted descending
        remaining = [c for c in (2, 1, 0) if c != self.fixed]
        order = [remaining.index(self.row), remaining.index(self.col)]
        s = np.moveaxis(s, [lead + order[0], lead + order[1]], [lead, lead + 1]) if lead else s.transpose(order)
        if self.flip_row:
            s = np.flip(s, axis=lead)
        if self.flip_col:
            s = np.flip(s, axis=lead + 1)
        return np.ascontiguousarray(s)


def plane_view(grid: Volume, plane: str) -> PlaneView:
    """Layout of ``plane`` ("axial", "coronal" or "sagittal") for the grid of ``grid``."""
    if plane not in _SCREEN:
        raise InputError(f"unknown plane {plane!r}; expected one of {', '.join(PLANES)}")
    g = as_3d(grid)
    m = ijk_to_ras_matrix(g)[:3, :3]
    unit = m / np.linalg.norm(m, axis=0)  # RAS direction of each index axis (columns)
    ex, ey = (np.asarray(v) for v in _SCREEN[plane])
    normal = np.cross(ex, ey)
    # assign index axes to (col, row, fixed) maximising alignment with (screen x, screen y, normal)
    best = max(permutations(range(3)), key=lambda p: abs(ex @ unit[:, p[0]]) + abs(ey @ unit[:, p[1]])
               + abs(normal @ unit[:, p[2]]))
    col, row, fixed = best
    flip_col = bool(ex @ unit[:, col] < 0)
    flip_row = bool(ey @ unit[:, row] > 0)  # row 0 is the top of the screen
    right = unit[:, col] * (-1 if flip_col else 1)
    down = unit[:, row] * (-1 if flip_row else 1)
    n = g.size_ijk
    return PlaneView(plane=plane, fixed=fixed, row=row, col=col, flip_row=flip_row, flip_col=flip_col,
                     n_slices=n[fixed], n_rows=n[row], n_cols=n[col], row_mm=g.spacing[row],
                     col_mm=g.spacing[col],
                     letters={"left": ras_letter(-right), "right": ras_letter(right), "top": ras_letter(-down),
                              "bottom": ras_letter(down)})


def available_planes(grid: Volume) -> list:
    """Planes worth showing: all three for a volume; only the in-slice plane for a single slice."""
    views = [plane_view(grid, p) for p in PLANES]
    good = [v.plane for v in views if v.n_rows > 1 and v.n_cols > 1]
    return good or [PLANES[0]]


def point_to_index(grid: Volume, point=None, space: str = "lps") -> tuple:
    """Voxel index (i, j, k) of a point, clipped into the grid. ``space``: "lps" or "ras" (mm), or "index"."""
    g = as_3d(grid)
    n = np.asarray(g.size_ijk)
    if point is None:
        return tuple(int(v) for v in (n - 1) // 2)
    p = np.asarray(point, dtype=float).ravel()
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise InputError(f"report point must be 3 finite numbers, got {point!r}")
    if space == "index":
        ijk = p
    elif space in ("lps", "ras"):
        lps = lps_to_ras(p) if space == "ras" else p
        m = g.direction @ np.diag(g.spacing)
        ijk = np.linalg.solve(m, lps - np.asarray(g.origin))
    else:
        raise InputError(f"report point space must be 'lps', 'ras' or 'index', got {space!r}")
    ijk = np.rint(ijk)
    if np.any(ijk < -0.5) or np.any(ijk > n - 0.5):
        raise InputError(f"report point {p.tolist()} ({space}) lies outside the volume (index {ijk.tolist()}, "
                         f"grid size {n.tolist()})")
    return tuple(int(v) for v in np.clip(ijk, 0, n - 1))


def mask_centroid_index(mask: Volume) -> Optional[tuple]:
    """Voxel index (i, j, k) nearest to the centroid of a mask (None when empty)."""
    a = np.asarray(as_3d(mask).array) > 0.5
    if not a.any():
        return None
    kji = np.argwhere(a).mean(axis=0)
    near = np.argwhere(a)[np.argmin(((np.argwhere(a) - kji) ** 2).sum(1))]  # a voxel inside (not-convex masks)
    return tuple(int(v) for v in near[::-1])


def robust_window(arrays, low: float = 0.5, high: float = 99.5) -> tuple:
    """(lo, hi) display window from percentiles of the finite values of one or more arrays."""
    vals = [np.asarray(a, dtype=np.float64).ravel() for a in arrays if a is not None]
    vals = np.concatenate(vals) if vals else np.zeros(1)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, [low, high]))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        hi = lo + (abs(lo) if lo != 0 else 1.0)
    return lo, hi


def intensity_window(image: np.ndarray, lesion: Optional[np.ndarray] = None) -> tuple:
    """Grey window of a sodium image: 0.5-99.5th percentiles, widened so that a lesion (when its mask is given
    and it is in view) is not saturated -- a small bright lesion is what the reader looks for."""
    lo, hi = robust_window([image])
    if lesion is not None and np.any(lesion > 0):
        hi = max(hi, float(np.percentile(np.asarray(image)[np.asarray(lesion) > 0], 95)))
    return lo, hi


def nice_length(max_mm: float) -> float:
    """A round scale-bar length (1, 2, 5 x 10^n mm) not longer than ``max_mm``."""
    if not max_mm > 0:
        return 1.0
    exp = np.floor(np.log10(max_mm))
    for m in (5.0, 2.0, 1.0):
        if m * 10 ** exp <= max_mm:
            return float(m * 10 ** exp)
    return float(10 ** exp)


def vector_to_ras_colour(field: np.ndarray, grid: Volume) -> np.ndarray:
    """RGB = |RAS components| of a vector field (c, k, j, i) whose components follow the array axes (k, j, i).

    The guidance code stores gradient-like fields with component c along array axis c; each is mapped through
    the grid's direction into RAS so that red = left-right, green = anterior-posterior, blue = superior-inferior
    (the diffusion-MRI convention), whatever the acquisition orientation. Returns (k, j, i, 3) in [0, 1]
    (brightness = vector length, clipped at 1).
    """
    f = np.asarray(field, dtype=np.float64)
    c = f.shape[0]
    g = as_3d(grid)
    comps = np.zeros((3,) + f.shape[1:])
    comps[3 - c:] = f  # a 2-component (j, i) field lives in the slice: no k component
    ijk = comps[::-1]  # array order (k, j, i) -> index order (i, j, k)
    rot = lps_to_ras(g.direction.T).T  # RAS directions of index axes as columns (unit)
    ras = np.tensordot(rot, ijk, axes=(1, 0))
    rgb = np.abs(np.moveaxis(ras, 0, -1))
    return np.clip(rgb, 0.0, 1.0)
