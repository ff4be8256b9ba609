"""Reading and writing volumes with their geometry (SimpleITK), validated, written atomically.

Formats: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), and a folder holding one
DICOM series (read only). Inputs are never modified; outputs go to a temporary file beside the target and
are renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume, from_sitk, to_sitk

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
    unreadable file, 4D or vector data, NaN/inf values, or an all-zero image.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} file not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{role}: folder {path} holds no DICOM series")
            if len(series) > 1:
                raise InputError(f"{role}: folder {path} holds {len(series)} DICOM series; expected exactly one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "exception" in ln.lower()), first[-1] if first else "")
        raise InputError(f"cannot read {role} file {path}: not a readable NIfTI/NRRD/MHA/DICOM image ({detail.strip()[:160]})") from None
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
    volume = from_sitk(image)
    if not path.is_dir() and _nifti_nonfinite_count(path):
        raise InputError(f"{role} ({path}) contains {_nifti_nonfinite_count(path)} NaN or infinite voxel(s); "
                         "expected finite values")
    if volume.ndim == 2 and not allow_2d:
        raise InputError(f"{role} {path}: expected a 3D volume, got a 2D image")
    validate_volume(volume, role, source=path)
    return volume


def _nifti_nonfinite_count(path: Path) -> int:
    """NaN/inf voxels stored in a floating-point NIfTI-1 file.

    ITK's NIfTI reader silently replaces NaN by 0, so non-finite voxels are counted from the file itself.
    """
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return 0
    import gzip

    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError:
        return 0
    for endian in ("<", ">"):
        if len(raw) >= 352 and np.frombuffer(raw[:4], endian + "i4")[0] == 348:
            break
    else:
        return 0  # not NIfTI-1 (e.g. NIfTI-2): nothing more we can check here
    dtype = {16: "f4", 64: "f8"}.get(int(np.frombuffer(raw[70:72], endian + "i2")[0]))
    if dtype is None:
        return 0  # integer data cannot hold NaN
    offset = int(np.frombuffer(raw[108:112], endian + "f4")[0])
    data = np.frombuffer(raw, endian + dtype, offset=offset, count=(len(raw) - offset) // int(dtype[1]))
    return int((~np.isfinite(data)).sum())


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
    """Validate before any work starts that ``path`` can be written (known suffix, writable folder)."""
    path = Path(path)
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


def can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (os.access says yes to root everywhere)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.remove(probe)
    return True


@contextmanager
def atomic_target(path, suffix: str = ""):
    """Yield a temporary file path beside ``path``; renamed onto ``path`` when the block succeeds, removed when
    it fails, so readers never see a half-written file. ``suffix`` keeps the format SimpleITK/numpy infer."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_volume(volume: Volume, path, compress: bool = True) -> Path:
    """Write ``volume`` (float32) to ``path`` atomically; the format follows the suffix."""
    import SimpleITK as sitk

    path = check_output_path(path)
    suffix = _suffix(path)
    image = to_sitk(volume.with_array(np.asarray(volume.array, dtype=np.float32)))
    with atomic_target(path, suffix) as tmp:
        sitk.WriteImage(image, tmp, useCompression=compress and suffix != ".nii")
    return path


def write_text_atomic(text: str, path) -> Path:
    """Write a text file (JSON, YAML) atomically."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not can_create_in(parent):
        raise InputError(f"cannot write {path}: folder {parent} does not exist or is not writable")
    with atomic_target(path, path.suffix) as tmp, open(tmp, "w") as fh:
        fh.write(text)
    return path


def json_default(obj):
    """``json.dumps(default=...)`` for what results hold: numpy scalars and arrays, paths; else its str()."""
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
