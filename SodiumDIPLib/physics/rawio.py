"""Raw multi-coil data in and out: NumPy (.npz / .npy) and ISMRMRD HDF5 (.h5 / .mrd, through ``ismrmrd``).

Array layout (the engine's): Cartesian k-space or coil images (coils, [z,] y, x), k-space centre at index
N//2 per axis (see physics/cartesian.py); radial k-space (coils, spokes, readout) with a trajectory
(spokes, readout, d) in cycles/pixel, coordinates ordered like the image axes ((z, y, x) / (y, x)).

.npz keys: ``kspace`` or ``images`` (one of them); optional ``mask`` (Cartesian sampling, image shape),
``trajectory`` (or ``traj``), ``image_shape`` (required with a trajectory), ``spacing`` (mm, in (i, j, k) =
(x, y, z) order like Volume), ``origin`` (LPS mm), ``direction`` (3x3), ``noise`` (coils, samples).
ISMRMRD: the first encoding; Cartesian acquisitions are placed by kspace_encode_step_1/2 (centred with the
encoding limits' centre), noise-measurement acquisitions are kept as ``noise``; trajectories stored in
acquisitions (non-Cartesian) are read as (kx, ky[, kz]) in cycles/pixel. Geometry: spacing = field of view /
matrix; direction = (read, phase, slice) directions and origin from the first acquisition's position (the
field of view's centre, ISMRMRD's patient coordinates = DICOM LPS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.io import atomic_target

NUMPY_SUFFIXES = (".npz", ".npy")
#: Largest image size per axis accepted from a raw-data file.
MAX_GRID = 4096
ISMRMRD_SUFFIXES = (".h5", ".hdf5", ".mrd", ".ismrmrd")


@dataclass
class RawData:
    """Multi-coil raw data with what is known about its geometry.

    data:       complex64, (coils, [z,] y, x) for Cartesian k-space / coil images, (coils, spokes, readout) radial.
    domain:     "kspace" or "image".
    trajectory: (spokes, readout, d) cycles/pixel for radial data, else None.
    mask:       boolean (image shape) of the acquired Cartesian samples (None: all acquired / unknown).
    image_shape: reconstruction grid, array order ([z,] y, x).
    spacing:    voxel size in mm in (i, j, k) order (x, y[, z]) -- the Volume convention; None if unknown.
    origin, direction: LPS geometry (Volume convention) when the file had it, else None.
    noise:      (coils, samples) noise-only samples (ISMRMRD noise scans), else None.
    header:     other facts read (matrix, field of view, trajectory type, vendor, ...).
    """

    data: np.ndarray
    domain: str = "kspace"
    trajectory: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    image_shape: tuple = ()
    spacing: Optional[tuple] = None
    origin: Optional[tuple] = None
    direction: Optional[np.ndarray] = None
    noise: Optional[np.ndarray] = None
    header: dict = field(default_factory=dict)
    source: Optional[str] = None

    @property
    def n_coils(self) -> int:
        return int(self.data.shape[0])

    @property
    def is_radial(self) -> bool:
        return self.trajectory is not None

    @property
    def ndim(self) -> int:
        return len(self.image_shape)


def _fail(path, msg):
    raise InputError(f"raw data {path}: {msg}")


def validate_raw(raw: RawData, path="<array>") -> RawData:
    """Check shapes and values; raises InputError naming ``path`` and what is expected."""
    d = raw.data
    if raw.domain not in ("kspace", "image"):
        _fail(path, f"domain must be 'kspace' or 'image', got {raw.domain!r}")
    if d.size == 0:
        _fail(path, "the data array is empty")
    if not np.isfinite(d).all():
        n = int((~np.isfinite(d)).sum())
        _fail(path, f"contains {n} NaN or infinite value(s); expected finite complex samples")
    if not np.any(d):
        _fail(path, "is all zero")
    if raw.trajectory is not None:
        from SodiumDIPLib.physics.radial import validate_trajectory

        if raw.domain != "kspace":
            _fail(path, "a trajectory only makes sense with k-space data")
        if len(raw.image_shape) not in (2, 3):
            _fail(path, f"radial data needs image_shape (y, x) or (z, y, x), got {raw.image_shape}")
        try:
            t = validate_trajectory(raw.trajectory, raw.image_shape)
        except InputError as exc:
            _fail(path, str(exc))
        if d.ndim < 2 or d.shape[1:] != t.shape[:-1]:
            _fail(path, f"radial k-space of shape {d.shape} does not match the trajectory {t.shape}: "
                        f"expected (coils, {', '.join(map(str, t.shape[:-1]))})")
    else:
        if d.ndim not in (3, 4):
            _fail(path, f"expected an array of shape (coils, [z,] y, x) (3 or 4 dimensions), got shape {d.shape}")
        if min(d.shape[1:]) < 2:
            _fail(path, f"image dimensions {d.shape[1:]} are too small (expected at least 2 per axis)")
        raw.image_shape = tuple(d.shape[1:])
        if raw.mask is not None and tuple(raw.mask.shape) != raw.image_shape:
            _fail(path, f"sampling mask of shape {raw.mask.shape} does not match the k-space shape {raw.image_shape}")
    if raw.spacing is not None:
        sp = tuple(float(s) for s in raw.spacing)
        if len(sp) != len(raw.image_shape) or any(not np.isfinite(s) or s <= 0 for s in sp):
            _fail(path, f"spacing {raw.spacing} must hold {len(raw.image_shape)} positive values in mm (x, y[, z])")
        from SodiumDIPLib.data.headers import check_spacing

        check_spacing(sp, "raw data", path)
        raw.spacing = sp
    if raw.origin is not None:
        o = np.asarray(raw.origin, dtype=float).ravel()
        if o.size != 3 or not np.all(np.isfinite(o)):
            _fail(path, f"origin {o.tolist()} must hold 3 finite values in mm (LPS)")
        raw.origin = tuple(float(v) for v in o)
    if raw.direction is not None:
        from SodiumDIPLib.data.headers import check_direction

        d = np.asarray(raw.direction, dtype=float)
        if d.shape != (3, 3):
            _fail(path, f"direction must be a 3x3 matrix, got shape {d.shape}")
        check_direction(d, "raw data", path)
        raw.direction = d
    if raw.noise is not None and not np.all(np.isfinite(raw.noise)):
        _fail(path, "the noise samples hold NaN or infinite values; expected finite complex samples")
    _check_grid_memory(raw, path)
    raw.source = str(path)
    return raw


def memory_limit_bytes() -> int:
    """Largest single array a run may ask for: half of this machine's physical memory (64 GiB if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 64 * 2 ** 30


def _check_grid_memory(raw: RawData, path) -> None:
    """Refuse an image grid whose multi-coil complex images would not fit in memory (before any allocation)."""
    shape = tuple(raw.image_shape)
    if any(int(n) < 2 or int(n) > MAX_GRID for n in shape):
        _fail(path, f"image_shape {shape} is not usable; expected 2..{MAX_GRID} voxels per axis")
    need = float(raw.n_coils) * float(np.prod([float(n) for n in shape])) * 8 * 2  # complex64, oversampled
    if need > memory_limit_bytes():
        _fail(path, f"image_shape {shape} with {raw.n_coils} coils needs about {need / 2 ** 30:.1f} GiB; this machine "
                    f"allows {memory_limit_bytes() / 2 ** 30:.1f} GiB per array; expected a smaller grid")


def read_raw(path, domain: Optional[str] = None) -> RawData:
    """Read multi-coil raw data from .npz / .npy / ISMRMRD (.h5, .mrd); validated (see module doc).

    domain: for a .npy file (no key names), "kspace" (default) or "image".
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"raw data file not found: {path}")
    name = path.name.lower()
    if name.endswith(".npz") or name.endswith(".npy"):
        raw = _read_numpy(path, domain)
    elif name.endswith(ISMRMRD_SUFFIXES):
        raw = _read_ismrmrd(path)
    else:
        raise InputError(f"raw data {path}: unknown file type; expected .npz, .npy or ISMRMRD .h5/.mrd")
    return validate_raw(raw, path)


def _read_numpy(path: Path, domain: Optional[str]) -> RawData:
    """Read .npy / .npz without pickles, refusing arrays too large for memory before loading them."""
    try:
        return _read_numpy_checked(path, domain)
    except InputError:
        raise
    except (ValueError, TypeError, OverflowError, OSError, KeyError, EOFError, RuntimeError) as exc:
        _fail(path, f"cannot read as NumPy ({type(exc).__name__}: {str(exc)[:120]}); expected numeric arrays "
                    "(no pickled objects)")
    except Exception as exc:  # noqa: BLE001 - zipfile / numpy raise many types for corrupt files
        _fail(path, f"cannot read as NumPy ({type(exc).__name__}); expected a valid .npz / .npy file")


def _check_array_header(path, key, shape, dtype) -> None:
    if dtype.hasobject:
        _fail(path, f"array {key!r} holds Python objects (pickled); expected numeric arrays")
    size = float(np.prod([float(n) for n in shape])) * max(dtype.itemsize, 8)
    if size > memory_limit_bytes():
        _fail(path, f"array {key!r} of shape {tuple(shape)} needs about {size / 2 ** 30:.1f} GiB; this machine allows "
                    f"{memory_limit_bytes() / 2 ** 30:.1f} GiB per array")


def _npz_headers(z, path) -> None:
    """Shape and dtype of every array in an .npz from its header (nothing loaded)."""
    for member in z.zip.namelist():
        with z.zip.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        _check_array_header(path, member[:-4] if member.endswith(".npy") else member, shape, dtype)


def _numbers(z, key, path, n=None, integer=False) -> tuple:
    arr = np.asarray(z[key])
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        _fail(path, f"{key!r} must hold real numbers, got dtype {arr.dtype}")
    vals = arr.ravel().astype(float)
    if not np.all(np.isfinite(vals)):
        _fail(path, f"{key!r} = {vals.tolist()[:9]} holds NaN or infinite values; expected finite numbers")
    if n is not None and vals.size != n:
        _fail(path, f"{key!r} must hold {n} values, got {vals.size}")
    if integer:
        if not np.all(vals == np.round(vals)) or np.any(np.abs(vals) > MAX_GRID):
            _fail(path, f"{key!r} = {vals.tolist()} must hold whole numbers up to {MAX_GRID}")
        return tuple(int(v) for v in vals)
    return tuple(float(v) for v in vals)


def _read_numpy_checked(path: Path, domain: Optional[str]) -> RawData:
    loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    if isinstance(loaded, np.ndarray):
        _check_array_header(path, "array", loaded.shape, loaded.dtype)
        if not np.issubdtype(loaded.dtype, np.number):
            _fail(path, "the data array is not numeric")
        return RawData(np.asarray(loaded).astype(np.complex64), domain or "kspace")
    with loaded as z:
        _npz_headers(z, path)
        keys = set(z.files)
        if ("kspace" in keys) == ("images" in keys):
            _fail(path, f"expected exactly one of the keys 'kspace' or 'images'; found {sorted(keys)}")
        dom = "kspace" if "kspace" in keys else "image"
        key = "kspace" if dom == "kspace" else "images"
        data = z[key]
        if not np.issubdtype(data.dtype, np.number):
            _fail(path, "the data array is not numeric")
        raw = RawData(np.asarray(data).astype(np.complex64), dom)
        traj_key = "trajectory" if "trajectory" in keys else ("traj" if "traj" in keys else None)
        if "image_shape" in keys:
            raw.image_shape = _numbers(z, "image_shape", path, integer=True)
        if traj_key is not None:
            if "image_shape" not in keys:
                _fail(path, "radial data (with a trajectory) needs the key 'image_shape'")
            if raw.data.ndim >= 1:  # before the trajectory is loaded and any NUFFT grid is allocated
                _check_grid_memory(RawData(raw.data, dom, image_shape=raw.image_shape), path)
            traj = np.asarray(z[traj_key])
            if not np.issubdtype(traj.dtype, np.number) or np.iscomplexobj(traj):
                _fail(path, f"the trajectory must hold real numbers, got dtype {traj.dtype}")
            raw.trajectory = traj.astype(np.float32)
            if not np.all(np.isfinite(raw.trajectory)):
                _fail(path, "the trajectory holds NaN or infinite values; expected finite cycles/pixel")
        if "mask" in keys:
            raw.mask = np.asarray(z["mask"]).astype(bool)
        if "spacing" in keys:
            raw.spacing = _numbers(z, "spacing", path)
        if "origin" in keys:
            raw.origin = _numbers(z, "origin", path, n=3)
        if "direction" in keys:
            raw.direction = np.asarray(_numbers(z, "direction", path, n=9)).reshape(3, 3)
        if "noise" in keys:
            raw.noise = np.asarray(z["noise"]).astype(np.complex64)
    return raw


def write_raw_npz(path, raw: RawData, staging=None) -> Path:
    """Write RawData to .npz (keys as in the module doc), atomically; into ``staging`` (a
    ``safewrite.Staging``) when given, so it reaches ``path`` only on ``staging.commit()``."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: folder {parent} does not exist")
    arrays = {"kspace" if raw.domain == "kspace" else "images": np.asarray(raw.data, np.complex64)}
    if raw.trajectory is not None:
        arrays["trajectory"] = np.asarray(raw.trajectory, np.float32)
    if raw.image_shape:
        arrays["image_shape"] = np.asarray(raw.image_shape, dtype=np.int64)
    for key in ("mask", "noise", "direction"):
        if getattr(raw, key) is not None:
            arrays[key] = np.asarray(getattr(raw, key))
    for key in ("spacing", "origin"):
        if getattr(raw, key) is not None:
            arrays[key] = np.asarray(getattr(raw, key), dtype=float)
    if staging is not None:
        np.savez_compressed(staging.path_for(path), **arrays)
        return path
    with atomic_target(path, ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


# ------------------------------------------------------------------------------------------------ ISMRMRD
_SKIP_FLAGS = ("ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA", "ACQ_IS_DUMMYSCAN_DATA",
               "ACQ_IS_HPFEEDBACK_DATA", "ACQ_IS_RTFEEDBACK_DATA", "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA",
               "ACQ_IS_PHASE_STABILIZATION_REFERENCE", "ACQ_IS_PHASE_STABILIZATION")


def _read_ismrmrd(path: Path) -> RawData:
    try:
        import ismrmrd
    except ImportError:
        raise InputError("reading ISMRMRD files needs the 'ismrmrd' package (pip install ismrmrd)") from None
    dset = _open_ismrmrd_read_only(ismrmrd, path)
    try:
        return _read_ismrmrd_dataset(ismrmrd, dset, path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py / ismrmrd raise many types for malformed files
        _fail(path, f"malformed ISMRMRD content ({type(exc).__name__}: {str(exc)[:120]})")
    finally:
        dset.close()


def _open_ismrmrd_read_only(ismrmrd, path: Path):
    """An ismrmrd.Dataset on the file opened read-only (h5py mode "r": the input is never created or changed)."""
    import h5py

    if path.stat().st_size == 0:
        _fail(path, "is an empty file; expected an ISMRMRD HDF5 file")
    try:
        try:
            dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r")
        except TypeError:  # an ismrmrd without the mode argument: open the file ourselves, read-only
            dset = ismrmrd.Dataset.__new__(ismrmrd.Dataset)
            dset._file, dset._dataset_name = h5py.File(str(path), "r"), "dataset"
    except Exception as exc:  # noqa: BLE001
        _fail(path, f"not a readable ISMRMRD file ({type(exc).__name__}: {str(exc)[:120]})")
    if "dataset" not in dset._file or "xml" not in dset._file["dataset"]:
        dset.close()
        _fail(path, "holds no ISMRMRD 'dataset' group with an XML header; expected an ISMRMRD file")
    return dset


def _read_ismrmrd_dataset(ismrmrd, dset, path: Path) -> RawData:
    if True:
        try:
            header = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
        except Exception as exc:
            _fail(path, f"cannot parse the ISMRMRD XML header ({type(exc).__name__})")
        if not header.encoding:
            _fail(path, "the ISMRMRD header has no encoding")
        enc = header.encoding[0]
        ms, fov = enc.encodedSpace.matrixSize, enc.encodedSpace.fieldOfView_mm
        matrix_xyz = (int(ms.x), int(ms.y), max(1, int(ms.z)))
        fov_xyz = (float(fov.x), float(fov.y), float(fov.z))
        traj_type = getattr(enc.trajectory, "value", str(enc.trajectory))
        info = {"format": "ismrmrd", "matrix_xyz": matrix_xyz, "fov_mm_xyz": fov_xyz, "trajectory": traj_type}
        asi = header.acquisitionSystemInformation
        if asi is not None:
            info.update({k: v for k, v in (("vendor", asi.systemVendor), ("field_T", asi.systemFieldStrength_T)) if v is not None})
        limits = enc.encodingLimits

        def centre(lim, n):
            return int(lim.center) if lim is not None and lim.center else n // 2

        c1 = centre(limits.kspace_encoding_step_1 if limits else None, matrix_xyz[1])
        c2 = centre(limits.kspace_encoding_step_2 if limits else None, matrix_xyz[2])
        n_acq = dset.number_of_acquisitions()
        if n_acq == 0:
            _fail(path, "holds no acquisitions")
        noise, lines, first = [], [], None
        for i in range(n_acq):
            acq = dset.read_acquisition(i)
            if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
                noise.append(np.asarray(acq.data))
                continue
            if any(acq.is_flag_set(getattr(ismrmrd, f)) for f in _SKIP_FLAGS):
                continue
            if first is None:
                first = acq
            lines.append(acq)
        if not lines:
            _fail(path, "holds no imaging acquisitions")
        if len({int(a.idx.slice) for a in lines}) > 1:
            _fail(path, "holds several 2D slices; multi-slice 2D acquisitions are not supported (expected one "
                        "slice or one 3D encoding)")
        n_coils = int(first.active_channels)
        raw = RawData(np.zeros((1, 2, 2), np.complex64), "kspace", header=info)
        if noise:
            raw.noise = np.concatenate(noise, axis=1).astype(np.complex64)
        if any(int(a.trajectory_dimensions) > 0 for a in lines):
            raw.data, raw.trajectory = _radial_from_acqs(path, lines, n_coils)
            d = raw.trajectory.shape[-1]
            raw.image_shape = (matrix_xyz[::-1] if d == 3 else matrix_xyz[1::-1])
        else:
            raw.data, raw.mask = _cartesian_from_acqs(path, lines, n_coils, matrix_xyz, c1, c2)
        is3d = raw.data.ndim == 4 or (raw.trajectory is not None and raw.trajectory.shape[-1] == 3)
        n = matrix_xyz if is3d else matrix_xyz[:2]
        sp = tuple(f / m for f, m in zip(fov_xyz, n))
        if all(s > 0 for s in sp):
            raw.spacing = sp
        rd, pd, sd = (np.asarray(first.read_dir[:], float), np.asarray(first.phase_dir[:], float),
                      np.asarray(first.slice_dir[:], float))
        if all(np.linalg.norm(v) > 0.5 for v in (rd, pd, sd)) and raw.spacing is not None:
            direction = np.stack([rd, pd, sd], axis=1)
            sp3 = np.asarray(raw.spacing + (1.0,) * (3 - len(raw.spacing)))
            centre_idx = np.asarray([m // 2 for m in matrix_xyz], float) if is3d else np.asarray([matrix_xyz[0] // 2, matrix_xyz[1] // 2, 0.0])
            raw.direction = direction
            raw.origin = tuple(np.asarray(first.position[:], float) - direction @ (sp3 * centre_idx))
        return raw


def _cartesian_from_acqs(path, lines, n_coils, matrix_xyz, c1, c2):
    nx, ny, nz = matrix_xyz
    probe = RawData(np.zeros((max(n_coils, 1), 1), np.complex64), "kspace",
                    image_shape=(nz, ny, nx) if nz > 1 else (ny, nx))
    _check_grid_memory(probe, path)  # the header's matrix, before the k-space array is allocated
    ksp = np.zeros((n_coils, nz, ny, nx), np.complex64)
    count = np.zeros((nz, ny), np.int32)
    for acq in lines:
        data = np.asarray(acq.data)
        if data.shape[0] != n_coils:
            _fail(path, f"acquisitions have different channel counts ({data.shape[0]} vs {n_coils})")
        y = int(acq.idx.kspace_encode_step_1) - c1 + ny // 2
        z = int(acq.idx.kspace_encode_step_2) - c2 + nz // 2 if nz > 1 else 0
        if not (0 <= y < ny and 0 <= z < nz):
            _fail(path, f"acquisition encode step ({acq.idx.kspace_encode_step_1}, {acq.idx.kspace_encode_step_2}) "
                        f"lies outside the encoded matrix {matrix_xyz}")
        ns = data.shape[1]
        x0 = nx // 2 - int(acq.center_sample) if ns != nx else 0  # partial echo / asymmetric readout
        if x0 < 0 or x0 + ns > nx:
            _fail(path, f"readout of {ns} samples (centre {acq.center_sample}) does not fit the matrix x = {nx}")
        ksp[:, z, y, x0:x0 + ns] += data
        count[z, y] += 1
    sampled = count > 0
    ksp[:, sampled] /= count[sampled][None, :, None]  # repeated lines (averages) are averaged
    mask = np.broadcast_to(sampled[..., None], (nz, ny, nx)).copy()
    if nz == 1:
        return ksp[:, 0], mask[0]
    return ksp, mask


def _radial_from_acqs(path, lines, n_coils):
    n_samples = {int(a.number_of_samples) for a in lines}
    if len(n_samples) != 1:
        _fail(path, f"non-Cartesian acquisitions with different readout lengths {sorted(n_samples)} are not supported")
    data = np.stack([np.asarray(a.data) for a in lines], axis=1).astype(np.complex64)  # (coils, spokes, readout)
    traj = np.stack([np.asarray(a.traj)[:, ::-1] for a in lines]).astype(np.float32)  # (kx, ky, kz) -> (z, y, x)
    return data, traj


def write_ismrmrd(path, kspace, mask=None, trajectory=None, image_shape=None, spacing=None, noise=None,
                  field_strength_T: Optional[float] = None) -> Path:
    """Write multi-coil k-space as an ISMRMRD file, one acquisition per sampled readout line / spoke.

    kspace:     (coils, [z,] y, x) Cartesian (only lines where ``mask`` is set are written) or
                (coils, spokes, readout) with ``trajectory`` (spokes, readout, d) cycles/pixel, array order.
    image_shape: required for radial; spacing: mm per voxel (x, y[, z]) (default 1 mm); noise: (coils, n).
    """
    import ismrmrd
    from ismrmrd import xsd

    k = np.asarray(kspace, np.complex64)
    path = Path(path)
    if trajectory is None:
        if k.ndim not in (3, 4):
            raise InputError(f"Cartesian k-space must be (coils, [z,] y, x), got shape {k.shape}")
        image_shape = k.shape[1:]
    elif image_shape is None:
        raise InputError("radial k-space needs image_shape")
    shape = tuple(int(s) for s in image_shape)
    matrix_xyz = (shape[-1], shape[-2], shape[0] if len(shape) == 3 else 1)
    sp = tuple(spacing) if spacing is not None else (1.0,) * len(shape)
    fov_xyz = tuple(m * s for m, s in zip(matrix_xyz, sp + (1.0,) * (3 - len(sp))))
    traj_type = xsd.trajectoryType.CARTESIAN if trajectory is None else xsd.trajectoryType.RADIAL

    def space():
        return xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=matrix_xyz[0], y=matrix_xyz[1], z=matrix_xyz[2]),
                                     fieldOfView_mm=xsd.fieldOfViewMm(x=fov_xyz[0], y=fov_xyz[1], z=fov_xyz[2]))

    limits = xsd.encodingLimitsType(
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=matrix_xyz[1] - 1, center=matrix_xyz[1] // 2),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=matrix_xyz[2] - 1, center=matrix_xyz[2] // 2))
    header = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=int(42.577e6 * (field_strength_T or 3.0))),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(receiverChannels=int(k.shape[0]),
                                                                          systemFieldStrength_T=field_strength_T),
        encoding=[xsd.encodingType(encodedSpace=space(), reconSpace=space(), encodingLimits=limits, trajectory=traj_type)])
    if path.exists():
        path.unlink()  # the ismrmrd Dataset appends to an existing file
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        dset.write_xml_header(xsd.ToXML(header))

        def put(data, traj=None, e1=0, e2=0, flags=()):
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data), traj)
            acq.idx.kspace_encode_step_1 = e1
            acq.idx.kspace_encode_step_2 = e2
            acq.center_sample = data.shape[1] // 2
            acq.read_dir[:] = (1.0, 0.0, 0.0)
            acq.phase_dir[:] = (0.0, 1.0, 0.0)
            acq.slice_dir[:] = (0.0, 0.0, 1.0)
            for f in flags:
                acq.set_flag(f)
            dset.append_acquisition(acq)

        if noise is not None:
            put(np.asarray(noise, np.complex64), flags=(ismrmrd.ACQ_IS_NOISE_MEASUREMENT,))
        if trajectory is None:
            k4 = k if k.ndim == 4 else k[:, None]
            m = np.ones(k4.shape[1:], bool) if mask is None else np.asarray(mask, bool).reshape(k4.shape[1:])
            for z in range(k4.shape[1]):
                for y in range(k4.shape[2]):
                    if m[z, y].any():
                        put(k4[:, z, y, :], e1=y, e2=z)
        else:
            t = np.asarray(trajectory, np.float32)
            for s in range(t.shape[0]):
                put(k[:, s, :], traj=np.ascontiguousarray(t[s][:, ::-1]))
    finally:
        dset.close()
    return path
