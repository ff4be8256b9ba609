"""Reading and writing volumes with their geometry (SimpleITK), validated, written atomically.

Formats: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), and a folder holding one
DICOM series (read only). Inputs are never modified; outputs go to a temporary file beside the target and
are renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.volume import Volume, from_sitk, to_sitk

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in WRITE_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def read_volume(path, role: str = "volume", allow_2d: bool = True) -> Volume:
    """Read a scalar 2D/3D image (file or DICOM series folder) as a float32 Volume and validate it.

    ``role`` names the input in error messages ("sodium", "proton", ...). Raises InputError for a missing or
    unreadable file, a file that disagrees with its header (truncated; see ``headers.verify_image_file``),
    complex, 4D or vector data, NaN/inf values, an all-zero image, unusable spacing, non-orthonormal (sheared)
    axis directions, or a DICOM series whose slices are not evenly spaced. Library warnings are not printed.
    """
    import SimpleITK as sitk

    from SodiumDIPLib.data.headers import verify_image_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} file not found: {path}")
    if path.is_dir():
        image = _read_dicom_series(path, role)
    else:
        verify_image_file(path, role)
        image = _quiet_read(lambda: sitk.ReadImage(str(path)), role, path)
    volume = _to_volume(image, role, path)
    if volume.ndim == 2 and not allow_2d:
        raise InputError(f"{role} {path}: expected a 3D volume, got a 2D image")
    validate_volume(volume, role, source=path)
    return volume


def _quiet_read(read, role: str, path: Path):
    """Run a SimpleITK read with ITK / NIfTI-library warnings silenced (also those printed straight to the
    process's stderr); a failure becomes one InputError line."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with _stderr_captured() as captured:
            return read()
    except RuntimeError as exc:
        lines = [ln for ln in (str(exc) + "\n" + captured.get("text", "")).strip().splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "ERROR" in ln or "exception" in ln.lower()), lines[-1] if lines else "")
        raise InputError(f"cannot read {role} file {path}: not a readable NIfTI/NRRD/MHA/DICOM image "
                         f"({detail.strip()[:160]})") from None


@contextmanager
def _stderr_captured():
    """Point file descriptor 2 at a temporary file for the block (C libraries print there directly); yields a
    dict whose "text" holds what was printed once the block ends."""
    import sys

    out = {}
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield out
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            out["text"] = sink.read().decode("utf-8", errors="replace")


def _to_volume(image, role: str, path: Path) -> Volume:
    """A SimpleITK image as a Volume after checking pixel type, dimension and geometry."""
    import SimpleITK as sitk

    from SodiumDIPLib.data.headers import check_direction, check_spacing

    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(f"{role} file {path}: holds complex voxels; expected a real (magnitude) image -- "
                         "save the magnitude")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{role} {path}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    dim = image.GetDimension()
    if dim == 4:
        size = image.GetSize()
        if size[3] == 1:
            image = image[:, :, :, 0]
        else:
            raise InputError(f"{role} {path}: expected a 3D volume (or a 2D slice), got 4D data of size {size}")
    elif dim not in (2, 3):
        raise InputError(f"{role} {path}: expected a 2D or 3D image, got {dim}D")
    dim = image.GetDimension()
    check_spacing(image.GetSpacing(), role, f"file {path}")
    if not np.all(np.isfinite(image.GetOrigin())):
        raise InputError(f"{role} file {path}: the origin {list(image.GetOrigin())} is not finite; expected finite mm")
    check_direction(np.asarray(image.GetDirection()).reshape(dim, dim), role, f"file {path}")
    return from_sitk(image)


def _read_dicom_series(path: Path, role: str):
    """One DICOM series from a folder, refusing uneven slice positions (missing or duplicated slices)."""
    import SimpleITK as sitk

    def names():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{role}: folder {path} holds no DICOM series")
        if len(series) > 1:
            raise InputError(f"{role}: folder {path} holds {len(series)} DICOM series; expected exactly one")
        return reader.GetGDCMSeriesFileNames(str(path), series[0])

    files = _quiet_read(names, role, path)
    if len(files) > 2:
        _check_slice_positions(files, role, path)

    def read():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()

    return _quiet_read(read, role, path)


def _check_slice_positions(files, role: str, folder: Path) -> None:
    """Refuse a series whose slice positions along the slice normal are not evenly spaced."""
    import SimpleITK as sitk

    positions, normal = [], None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        try:
            pos = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            if normal is None:
                cosines = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
                normal = np.cross(cosines[:3], cosines[3:6])
        except (RuntimeError, ValueError, IndexError):
            return  # no position information: the reader's own geometry is all there is
        positions.append(float(np.dot(pos, normal)))
    gaps = np.diff(np.sort(positions))
    step = float(np.median(gaps))
    if step <= 0 or np.abs(gaps - step).max() > max(0.01, 0.05 * step):
        bad = int(np.argmax(np.abs(gaps - step)))
        raise InputError(f"{role}: DICOM series in {folder} is not evenly spaced (slice gap {gaps[bad]:.3g} mm where "
                         f"the series steps {step:.3g} mm: missing or duplicated slices); expected a complete series")


def validate_volume(volume: Volume, role: str = "volume", source=None) -> None:
    """Raise InputError when the voxel values cannot be processed (NaN/inf, all zero, empty)."""
    where = f" ({source})" if source is not None else ""
    a = volume.array
    if a.size == 0:
        raise InputError(f"{role}{where} is empty")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"{role}{where}: expected real-valued voxels, got dtype {a.dtype}")
    finite = np.isfinite(a)
    if not finite.all():
        n = int((~finite).sum())
        raise InputError(f"{role}{where} contains {n} NaN or infinite voxel(s); expected finite values")
    if not np.any(a):
        raise InputError(f"{role}{where} is all zero; expected an image with signal")


def check_output_path(path, role: str = "output") -> Path:
    """Validate before any work starts that ``path`` can be written (known suffix, legal name, writable folder)."""
    from SodiumDIPLib.data.preflight import can_create_in, check_name

    path = Path(path)
    check_name(path, role)
    if not _suffix(path):
        raise InputError(f"{role} path {path}: unknown file type; expected one of {', '.join(WRITE_SUFFIXES)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{role} path {path}: folder {parent} does not exist")
    if path.is_dir():
        raise InputError(f"{role} path {path} is a folder; expected a file name")
    if not can_create_in(parent):
        raise InputError(f"{role} path {path}: folder {parent} is not writable")
    return path


def umask_mode() -> int:
    """Permissions an ordinary new file gets under the process's umask (0o666 & ~umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_target(path, suffix: str = ""):
    """Yield a temporary file path beside ``path``; renamed onto ``path`` when the block succeeds, removed when
    it fails, so readers never see a half-written file. ``suffix`` keeps the format SimpleITK/numpy infer.
    The file gets the umask's permissions (not mkstemp's 0600). For a single self-contained file only; a
    result made of several files goes through ``safewrite.Staging``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def stage_volume(staging, volume: Volume, path, compress: bool = True) -> Path:
    """Render ``volume`` (float32) into ``staging`` (a ``safewrite.Staging``) for ``path``; the format follows
    the suffix. A detached header (.nhdr / .mhd) names its data file by its final name."""
    import SimpleITK as sitk

    path = check_output_path(path)
    suffix = _suffix(path)
    image = to_sitk(volume.with_array(np.asarray(volume.array, dtype=np.float32)))
    target = staging.path_for(path)
    sitk.WriteImage(image, str(target), useCompression=compress and suffix != ".nii")
    return path


def write_volume(volume: Volume, path, compress: bool = True) -> Path:
    """Write ``volume`` (float32) to ``path`` all-or-nothing; the format follows the suffix."""
    from SodiumDIPLib.data.safewrite import Staging

    with Staging() as staging:
        path = stage_volume(staging, volume, path, compress)
        staging.commit()
    return path


def stage_text(staging, text: str, path) -> Path:
    """Render a text file (JSON, YAML) into ``staging`` for ``path``."""
    from SodiumDIPLib.data.preflight import can_create_in, check_name
    from SodiumDIPLib.data.safewrite import write_text_file

    path = Path(path)
    check_name(path, "output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not can_create_in(parent):
        raise InputError(f"cannot write {path}: folder {parent} does not exist or is not writable")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder; expected a file name")
    write_text_file(staging.path_for(path), text)
    return path


def write_text_atomic(text: str, path) -> Path:
    """Write a text file (JSON, YAML) all-or-nothing."""
    from SodiumDIPLib.data.safewrite import Staging

    with Staging() as staging:
        path = stage_text(staging, text, path)
        staging.commit()
    return path


def json_ready(value):
    """``value`` as plain JSON values, recursively: mapping keys as str, tuples and numpy arrays as lists, numpy
    scalars as Python numbers, non-finite floats as None (JSON has no NaN / inf), anything else (a path) as
    its str(). The engine's one JSON cleaner (result files, the worker's events, benchmark records)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return str(value)


def json_default(obj):
    """``json.dumps(default=...)`` for what results hold (numpy scalars and arrays, paths): ``json_ready``."""
    return json_ready(obj)
