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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError
from .io import atomic_target

NUMPY_SUFFIXES = (".npz", ".npy")
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
        from .physics.radial import validate_trajectory

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
        raw.spacing = sp
    raw.source = str(path)
    return raw


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
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt files
        raise InputError(f"raw data {path}: cannot read as NumPy ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, np.ndarray):
        return RawData(np.asarray(loaded).astype(np.complex64), domain or "kspace")
    with loaded as z:
        keys = set(z.files)
        if ("kspace" in keys) == ("images" in keys):
            _fail(path, f"expected exactly one of the keys 'kspace' or 'images'; found {sorted(keys)}")
        dom = "kspace" if "kspace" in keys else "image"
        if not np.issubdtype(z[dom if dom == "kspace" else "images"].dtype, np.number):
            _fail(path, "the data array is not numeric")
        data = np.asarray(z["kspace" if dom == "kspace" else "images"]).astype(np.complex64)
        traj = z["trajectory"] if "trajectory" in keys else (z["traj"] if "traj" in keys else None)
        raw = RawData(data, dom)
        if traj is not None:
            raw.trajectory = np.asarray(traj, dtype=np.float32)
            if "image_shape" not in keys:
                _fail(path, "radial data (with a trajectory) needs the key 'image_shape'")
        if "image_shape" in keys:
            raw.image_shape = tuple(int(s) for s in np.asarray(z["image_shape"]).ravel())
        if "mask" in keys:
            raw.mask = np.asarray(z["mask"]).astype(bool)
        if "spacing" in keys:
            raw.spacing = tuple(float(s) for s in np.asarray(z["spacing"]).ravel())
        if "origin" in keys:
            raw.origin = tuple(float(s) for s in np.asarray(z["origin"]).ravel())
        if "direction" in keys:
            raw.direction = np.asarray(z["direction"], dtype=float).reshape(3, 3)
        if "noise" in keys:
            raw.noise = np.asarray(z["noise"]).astype(np.complex64)
    return raw


def write_raw_npz(path, raw: RawData) -> Path:
    """Write RawData to .npz (keys as in the module doc), atomically."""
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
    try:
        dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    except Exception as exc:
        raise InputError(f"raw data {path}: not a readable ISMRMRD file ({type(exc).__name__}: {exc})") from None
    try:
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
    finally:
        dset.close()


def _cartesian_from_acqs(path, lines, n_coils, matrix_xyz, c1, c2):
    nx, ny, nz = matrix_xyz
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
