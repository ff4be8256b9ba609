"""A volume: a float32 array plus its physical geometry, and the one place that converts geometry.

Conventions (the ITK / SimpleITK ones, used everywhere in the engine):
- ``array`` is indexed ``[k, j, i]`` (slowest axis first), exactly as ``sitk.GetArrayFromImage`` returns it.
  A single 2D slice is stored as ``[j, i]``.
- ``spacing``, ``origin`` are given in ``(i, j, k)`` order, in millimetres, in **LPS** physical space.
- ``direction`` is a 3x3 matrix whose *columns* are the LPS directions of the i, j, k axes.

Slicer and NIfTI affines are **RAS**. ``lps_to_ras`` / ``ijk_to_ras_matrix`` / ``volume_from_ijk_to_ras``
are the only conversions between the two; everything else calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from SodiumDIPLib.errors import InputError

# Flips the first two physical axes: LPS <-> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """Image array with geometry. See the module docstring for axis order and units."""

    array: np.ndarray
    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim not in (2, 3):
            raise InputError(f"a volume must be 2D or 3D, got an array of shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if len(self.spacing) == 2:
            self.spacing = self.spacing + (1.0,)
        if len(self.origin) == 2:
            self.origin = self.origin + (0.0,)
        if any(s <= 0 for s in self.spacing):
            raise InputError(f"voxel spacing must be positive, got {self.spacing}")

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def size_ijk(self) -> tuple:
        """Number of voxels along (i, j, k); k = 1 for a single slice."""
        s = self.array.shape[::-1]
        return tuple(s) + (1,) * (3 - len(s))

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxel values (shape must match)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.array.shape}")
        return replace(self, array=array, direction=self.direction.copy())

    def index_to_physical(self, ijk) -> np.ndarray:
        """LPS position (mm) of continuous index (i, j, k); accepts (..., 3) arrays."""
        ijk = np.asarray(ijk, dtype=float)
        m = self.direction @ np.diag(self.spacing)
        return ijk @ m.T + np.asarray(self.origin)

    def physical_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel footprints (centres +- half a voxel)."""
        n = np.asarray(self.size_ijk, dtype=float)
        corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5)
                            for c in (-0.5, n[2] - 0.5)])
        pts = self.index_to_physical(corners)
        return pts.min(axis=0), pts.max(axis=0)


def lps_to_ras(points_or_matrix: np.ndarray) -> np.ndarray:
    """Convert LPS points (..., 3) to RAS; the map is its own inverse, so this also converts RAS to LPS."""
    return np.asarray(points_or_matrix, dtype=float) @ LPS_TO_RAS.T


ras_to_lps = lps_to_ras


def ijk_to_ras_matrix(volume: Volume) -> np.ndarray:
    """4x4 IJK-to-RAS matrix (Slicer's convention; also the NIfTI sform/qform affine)."""
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ volume.direction @ np.diag(volume.spacing)
    m[:3, 3] = LPS_TO_RAS @ np.asarray(volume.origin)
    return m


def geometry_from_ijk_to_ras(matrix) -> tuple[tuple, tuple, np.ndarray]:
    """(spacing, origin, direction) in LPS from a 4x4 IJK-to-RAS matrix (array or vtkMatrix4x4)."""
    m = _as_numpy_matrix(matrix)
    lps = LPS_TO_RAS @ m[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if np.any(spacing <= 0):
        raise InputError("IJK-to-RAS matrix has a zero-length axis")
    direction = lps / spacing
    origin = LPS_TO_RAS @ m[:3, 3]
    return tuple(spacing), tuple(origin), direction


def volume_from_ijk_to_ras(array: np.ndarray, matrix) -> Volume:
    """Volume from an array indexed [k, j, i] and a 4x4 IJK-to-RAS matrix (array or vtkMatrix4x4)."""
    spacing, origin, direction = geometry_from_ijk_to_ras(matrix)
    return Volume(np.asarray(array), spacing, origin, direction)


def to_vtk_matrix(matrix: np.ndarray):
    """numpy 4x4 -> vtkMatrix4x4 (vtk imported lazily: the engine does not need it otherwise)."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    vm = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, float(matrix[r][c]))
    return vm


def _as_numpy_matrix(matrix) -> np.ndarray:
    if hasattr(matrix, "GetElement"):
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4):
        raise InputError(f"expected a 4x4 matrix, got shape {m.shape}")
    return m


def to_sitk(volume: Volume):
    """Volume -> SimpleITK image (a 2D array becomes a 2D image; its geometry keeps the in-plane part)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    if volume.ndim == 3:
        img.SetSpacing(volume.spacing)
        img.SetOrigin(volume.origin)
        img.SetDirection(tuple(volume.direction.ravel()))
    else:
        img.SetSpacing(volume.spacing[:2])
        img.SetOrigin(volume.origin[:2])
        img.SetDirection(tuple(volume.direction[:2, :2].ravel()))
    return img


def from_sitk(image, dtype=np.float32) -> Volume:
    """SimpleITK image -> Volume (float32 by default). 2D images keep their in-plane geometry."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    dim = image.GetDimension()
    if dim == 3:
        direction = np.array(image.GetDirection()).reshape(3, 3)
        return Volume(arr.astype(dtype, copy=False), image.GetSpacing(), image.GetOrigin(), direction)
    if dim == 2:
        direction = np.eye(3)
        direction[:2, :2] = np.array(image.GetDirection()).reshape(2, 2)
        return Volume(arr.astype(dtype, copy=False), image.GetSpacing(), image.GetOrigin(), direction)
    raise InputError(f"expected a 2D or 3D image, got a {dim}D image")


def as_3d(volume: Volume) -> Volume:
    """A 2D slice as a one-slice 3D volume (same geometry); 3D volumes are returned as they are."""
    if volume.ndim == 3:
        return volume
    return Volume(volume.array[None], volume.spacing, volume.origin, volume.direction)
