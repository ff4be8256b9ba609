"""Verify an image file against its own header before a library reads it.

ITK's readers forgive too much: a truncated NIfTI is zero-filled, NaN voxels of a NIfTI become 0, a zero or NaN
pixel size becomes 1 mm, a sheared NIfTI sform is silently replaced by the qform, complex NIfTI is cast to
real. ``verify_image_file(path, role)`` reads the header itself (NIfTI-1/2 incl. .hdr/.img pairs, NRRD incl.
detached .nhdr, MetaImage .mha/.mhd) and raises InputError naming the file and what was expected when:

- the data is shorter than the header says (truncated, or a compressed stream that ends early);
- floating-point voxels hold NaN or infinity (checked in the raw bytes, whatever the reader would do);
- the voxels are complex (the engine works on magnitude images; take the magnitude first);
- a pixel size is zero, negative, not finite or absurd (outside ``SPACING_RANGE_MM``);
- the axis directions are not orthonormal (a sheared or degenerate affine).

Compression is recognised from the bytes (gzip magic), not the name, so uncompressed data stored under a
``.nii.gz`` name is checked as well. ``companion_files(path)`` names the other files an image consists of.
"""

from __future__ import annotations

import bz2
import gzip
import re
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError

#: Accepted voxel size in millimetres (exclusive bounds): anything outside is a broken header.
SPACING_RANGE_MM = (1e-4, 1e4)
#: Largest deviation of D^T D from the identity accepted for an axis-direction matrix D (unit columns).
ORTHONORMAL_TOL = 1e-3

_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "c8", 64: "f8", 128: "u1", 256: "i1", 512: "u2",
                768: "u4", 1024: "i8", 1280: "u8", 1536: "f16", 1792: "c16", 2048: "c32", 2304: "u1"}
_NIFTI_COMPLEX = {32, 1792, 2048}
_NIFTI_FLOAT = {16: "f4", 64: "f8"}

_NRRD_TYPES = {}
for _names, _dt in ((("signed char", "int8", "int8_t"), "i1"), (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
                    (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
                    (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
                    (("int", "signed int", "int32", "int32_t"), "i4"), (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
                    (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                      "int64_t"), "i8"),
                    (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
                    (("float",), "f4"), (("double",), "f8")):
    for _n in _names:
        _NRRD_TYPES[_n] = _dt

_MET_TYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
              "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
              "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def _fail(role: str, path: Path, what: str):
    raise InputError(f"{role} file {path}: {what}")


def _unreadable(role: str, path: Path, what: str):
    raise InputError(f"cannot read {role} file {path}: {what}")


def _kind(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in ((".nii.gz", "nifti"), (".nii", "nifti"), (".hdr.gz", "analyze"), (".hdr", "analyze"),
                         (".img.gz", "analyze"), (".img", "analyze"), (".nrrd", "nrrd"), (".nhdr", "nrrd"),
                         (".mha", "meta"), (".mhd", "meta")):
        if name.endswith(suffix):
            return kind
    return ""


def _decompress_gzip(raw: bytes, role: str, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError:
        _fail(role, path, "the compressed data ends early (truncated file); expected a complete gzip stream")
    except (OSError, zlib.error) as exc:
        _fail(role, path, f"corrupt gzip data ({exc}); expected a complete gzip stream")


def _maybe_gunzip(raw: bytes, role: str, path: Path) -> bytes:
    """Decompress when the bytes start with the gzip magic (whatever the file is called)."""
    return _decompress_gzip(raw, role, path) if raw[:2] == b"\x1f\x8b" else raw


def _read(path: Path, role: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        _fail(role, path, f"cannot be read ({exc.strerror or exc})")


# ----------------------------------------------------------------------------------------------- geometry
def check_spacing(spacing, role: str, where) -> None:
    """Raise InputError unless every pixel size is finite and inside SPACING_RANGE_MM."""
    sp = np.asarray(spacing, dtype=float).ravel()
    lo, hi = SPACING_RANGE_MM
    if sp.size == 0 or not np.all(np.isfinite(sp)) or np.any(sp <= lo) or np.any(sp >= hi):
        raise InputError(f"{role} {where}: voxel spacing {sp.tolist()} mm is not usable; expected finite sizes "
                         f"between {lo:g} and {hi:g} mm")


def check_direction(direction, role: str, where) -> None:
    """Raise InputError unless the columns of ``direction`` (after normalising) are orthonormal (no shear)."""
    d = np.asarray(direction, dtype=float)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or not np.all(np.isfinite(d)):
        raise InputError(f"{role} {where}: axis directions {d.tolist()} are not a finite square matrix")
    norms = np.linalg.norm(d, axis=0)
    if np.any(norms < 1e-12):
        raise InputError(f"{role} {where}: an axis direction has zero length; expected orthonormal axis directions")
    u = d / norms
    err = float(np.abs(u.T @ u - np.eye(d.shape[0])).max())
    if err > ORTHONORMAL_TOL:
        raise InputError(f"{role} {where}: the axis directions are not orthogonal (sheared affine, deviation "
                         f"{err:.3g}); expected orthonormal axes -- resample the image to an unsheared grid first")


def _count_nonfinite(data: bytes, dtype: str, offset: int, count: int) -> int:
    arr = np.frombuffer(data, dtype=dtype, offset=offset, count=count)
    return int(arr.size - np.isfinite(arr).sum())


def _check_values(role, path, data: bytes, dtype: Optional[np.dtype], offset: int, count: int) -> None:
    if dtype is None or dtype.kind != "f":
        return
    bad = _count_nonfinite(data, dtype, offset, count)
    if bad:
        _fail(role, path, f"contains {bad} NaN or infinite voxel(s); expected finite values")


def _check_length(role, path, have: int, need: int, what: str = "the voxel data") -> None:
    if have < need:
        _fail(role, path, f"{what} is truncated: the header describes {need} bytes, the file holds {have}; "
                          "expected a complete file")


# ----------------------------------------------------------------------------------------------- NIfTI
def _nifti_header(buf: bytes, role, path):
    """(endian, version) of a NIfTI-1/2 (or Analyze 7.5) header."""
    if len(buf) < 348:
        _unreadable(role, path, f"only {len(buf)} bytes; a NIfTI header alone takes 348 (truncated or not NIfTI)")
    for endian in ("<", ">"):
        size = int(np.frombuffer(buf[:4], endian + "i4")[0])
        if size == 348:
            return endian, 1
        if size == 540:
            if len(buf) < 540:
                _fail(role, path, f"only {len(buf)} bytes; a NIfTI-2 header takes 540 (truncated file)")
            return endian, 2
    _unreadable(role, path, "not a NIfTI header (sizeof_hdr is neither 348 nor 540); expected a NIfTI-1/2 file")


def _nifti_fields(buf: bytes, endian: str, version: int) -> dict:
    def get(fmt, off, n=1):
        return np.frombuffer(buf, endian + fmt, count=n, offset=off)

    if version == 1:
        f = {"dim": get("i2", 40, 8).astype(np.int64), "datatype": int(get("i2", 70)[0]),
             "bitpix": int(get("i2", 72)[0]), "pixdim": get("f4", 76, 8).astype(float),
             "vox_offset": float(get("f4", 108)[0]), "scl": get("f4", 112, 2).astype(float),
             "qform_code": int(get("i2", 252)[0]), "sform_code": int(get("i2", 254)[0]),
             "srow": np.stack([get("f4", 280 + 16 * r, 4) for r in range(3)]).astype(float),
             "magic": bytes(buf[344:348])}
    else:
        f = {"dim": get("i8", 16, 8), "datatype": int(get("i2", 12)[0]), "bitpix": int(get("i2", 14)[0]),
             "pixdim": get("f8", 104, 8), "vox_offset": float(get("i8", 168)[0]), "scl": get("f8", 176, 2),
             "qform_code": int(get("i4", 344)[0]), "sform_code": int(get("i4", 348)[0]),
             "srow": np.stack([get("f8", 400 + 32 * r, 4) for r in range(3)]), "magic": bytes(buf[4:8])}
    return f


def _verify_nifti(path: Path, role: str) -> None:
    name = path.name.lower()
    if name.endswith((".img", ".img.gz")):
        header_path = _sibling(path, (".hdr", ".hdr.gz"))
        if header_path is None:
            _fail(role, path, "the Analyze/NIfTI pair has no .hdr file beside the .img; expected both")
        data_path = path
    elif name.endswith((".hdr", ".hdr.gz")):
        header_path = path
        data_path = _sibling(path, (".img", ".img.gz"))
        if data_path is None:
            _fail(role, path, "the header has no .img data file beside it; expected both files of the pair")
    else:
        header_path = data_path = path
    hbuf = _maybe_gunzip(_read(header_path, role), role, header_path)
    endian, version = _nifti_header(hbuf, role, header_path)
    f = _nifti_fields(hbuf, endian, version)
    ndim = int(f["dim"][0])
    if not 1 <= ndim <= 7:
        _fail(role, header_path, f"header dimension count {ndim} is invalid; expected 1..7")
    dims = [int(d) for d in f["dim"][1:ndim + 1]]
    if any(d < 1 for d in dims):
        _fail(role, header_path, f"image size {dims} holds a zero or negative size; expected positive sizes")
    dt = f["datatype"]
    if dt in _NIFTI_COMPLEX:
        _fail(role, header_path, "holds complex voxels; expected a real (magnitude) image -- save the magnitude")
    if dt not in _NIFTI_TYPES:
        _fail(role, header_path, f"unknown NIfTI datatype code {dt}; expected a scalar integer or float type")
    dtype = np.dtype(endian + _NIFTI_TYPES[dt]) if dt not in (128, 2304) else None
    voxel_bytes = {128: 3, 2304: 4}.get(dt, np.dtype(_NIFTI_TYPES[dt]).itemsize)
    n_vox = int(np.prod(dims, dtype=np.float64))
    spatial = [float(v) for v, n in zip(f["pixdim"][1:min(ndim, 3) + 1], dims) if n > 1]  # a lone slice may say 0
    if spatial:
        check_spacing(np.abs(spatial), role, f"file {header_path}")
    slope, inter = (float(v) for v in f["scl"])
    if not (np.isfinite(slope) and np.isfinite(inter)):
        _fail(role, header_path, f"intensity scaling (scl_slope {slope}, scl_inter {inter}) is not finite")
    is_nifti = version == 2 or f["magic"] in (b"ni1\x00", b"n+1\x00")  # Analyze 7.5 has no sform
    if is_nifti and f["sform_code"] > 0 and ndim >= 2:
        m = f["srow"][:, :3]
        if not np.all(np.isfinite(f["srow"])):
            _fail(role, header_path, "the sform affine holds NaN or infinite values; expected a finite affine")
        k = min(ndim, 3)
        check_direction(m[:k, :k] if k < 3 else m, role, f"file {header_path}")
    offset = int(f["vox_offset"]) if data_path == header_path else max(int(f["vox_offset"]), 0)
    if data_path == header_path and offset < (352 if version == 1 else 544):
        offset = 352 if version == 1 else 544
    dbuf = hbuf if data_path == header_path else _maybe_gunzip(_read(data_path, role), role, data_path)
    need = offset + n_vox * voxel_bytes
    _check_length(role, data_path, len(dbuf), need)
    if dtype is not None:
        _check_values(role, data_path, dbuf, dtype, offset, n_vox)


def _sibling(path: Path, suffixes) -> Optional[Path]:
    name = path.name
    stem = re.sub(r"\.(hdr|img)(\.gz)?$", "", name, flags=re.IGNORECASE)
    for s in suffixes:
        for cand in (path.with_name(stem + s), path.with_name(stem + s.upper())):
            if cand.exists():
                return cand
    return None


# ----------------------------------------------------------------------------------------------- NRRD
def _split_header(buf: bytes, role, path, attached: bool):
    """(header lines, offset of the data) of a NRRD / MetaImage header."""
    if attached:
        if path.name.lower().endswith(".nrrd"):
            end = buf.find(b"\n\n")
            if end < 0:
                _fail(role, path, "no end of the NRRD header (blank line) found; expected a complete file")
            return buf[:end].decode("latin-1").splitlines(), end + 2
    return buf.decode("latin-1", errors="replace").splitlines(), len(buf)


def _nrrd_fields(lines) -> dict:
    fields = {}
    for line in lines[1:]:
        if not line or line.startswith("#") or ":=" in line:  # comments and key/value pairs
            continue
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
    return fields


def _parse_vectors(text: str):
    vecs = []
    for tok in re.findall(r"\(([^)]*)\)|none", text):
        vecs.append(None if tok == "" else [float(v) for v in tok.split(",")])
    return vecs


def _verify_nrrd(path: Path, role: str) -> None:
    buf = _read(path, role)
    if not buf.startswith(b"NRRD"):
        _unreadable(role, path, "not a NRRD file (no 'NRRD' magic); expected a NRRD header")
    detached_header = path.name.lower().endswith(".nhdr")
    if detached_header:
        lines, offset = buf.decode("latin-1", errors="replace").splitlines(), None
        while lines and lines[-1] == "":
            lines.pop()
    else:
        lines, offset = _split_header(buf, role, path, attached=True)
    f = _nrrd_fields(lines)
    try:
        sizes = [int(v) for v in f.get("sizes", "").split()]
    except ValueError:
        _fail(role, path, f"unreadable 'sizes' field {f.get('sizes')!r}; expected positive integers")
    if not sizes or any(s < 1 for s in sizes):
        _fail(role, path, f"image size {sizes} is invalid; expected positive sizes")
    tname = " ".join(f.get("type", "").lower().split())
    base = _NRRD_TYPES.get(tname)
    if base is None:
        _fail(role, path, f"unsupported NRRD type {f.get('type')!r}; expected a scalar integer or float type")
    endian = ">" if f.get("endian", "little").lower() == "big" else "<"
    dtype = np.dtype(endian + base)
    kinds = f.get("kinds", "").lower().split()
    if any(k in ("complex",) for k in kinds):
        _fail(role, path, "holds complex voxels; expected a real (magnitude) image -- save the magnitude")
    try:
        if "space directions" in f:
            vecs = [v for v in _parse_vectors(f["space directions"]) if v is not None]
            if vecs:
                m = np.asarray(vecs, dtype=float).T  # columns = axis vectors
                if not np.all(np.isfinite(m)):
                    _fail(role, path, "space directions hold NaN or infinite values; expected finite vectors")
                check_spacing(np.linalg.norm(m, axis=0), role, f"file {path}")
                if m.shape[0] == m.shape[1]:
                    check_direction(m, role, f"file {path}")
        elif "spacings" in f:
            check_spacing([abs(float(v)) for v in f["spacings"].split()], role, f"file {path}")
    except InputError:
        raise
    except ValueError:
        _fail(role, path, "unreadable spacing / space directions; expected numbers")
    encoding = f.get("encoding", "raw").lower()
    data_name = f.get("data file") or f.get("datafile")
    if data_name is not None:
        if data_name.split()[0].upper() == "LIST" or "%" in data_name:
            return  # multi-file data sets: left to the reader
        data_path = path.parent / data_name.split()[0] if not Path(data_name).is_absolute() else Path(data_name)
        if not data_path.is_file():
            _fail(role, path, f"its data file {data_path} does not exist; expected it beside the header")
        dbuf, start = _read(data_path, role), 0
    elif detached_header:
        _fail(role, path, "a detached header (.nhdr) without a 'data file' field; expected one")
    else:
        dbuf, start, data_path = buf, offset, path
    skip = int(f.get("byte skip", "0") or 0)
    if skip > 0:
        start += skip
    n_vox = int(np.prod(sizes, dtype=np.float64))
    payload = dbuf[start:]
    if encoding in ("gzip", "gz"):
        payload = _decompress_gzip(payload, role, data_path)
    elif encoding in ("bzip2", "bz2"):
        try:
            payload = bz2.decompress(payload)
        except (OSError, ValueError, EOFError) as exc:
            _fail(role, data_path, f"corrupt or truncated bzip2 data ({exc})")
    elif encoding not in ("raw",):
        return  # text encodings: the reader checks the count
    _check_length(role, data_path, len(payload), n_vox * dtype.itemsize)
    _check_values(role, data_path, payload, dtype, 0, n_vox)


# ----------------------------------------------------------------------------------------------- MetaImage
def _verify_meta(path: Path, role: str) -> None:
    buf = _read(path, role)
    fields, offset = {}, None
    pos = 0
    while pos < len(buf):
        end = buf.find(b"\n", pos)
        end = len(buf) if end < 0 else end
        line = buf[pos:end].decode("latin-1").strip()
        pos = end + 1
        if "=" not in line:
            if line:
                _fail(role, path, f"unreadable MetaImage header line {line[:60]!r}; expected 'Key = Value'")
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        fields[key.lower()] = value
        if key.lower() == "elementdatafile":
            offset = pos
            break
    if offset is None:
        _fail(role, path, "no ElementDataFile line in the MetaImage header; expected a complete header")
    try:
        dims = [int(v) for v in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        _fail(role, path, "unreadable DimSize / ElementNumberOfChannels; expected integers")
    if not dims or any(d < 1 for d in dims):
        _fail(role, path, f"image size {dims} is invalid; expected positive sizes")
    base = _MET_TYPES.get(fields.get("elementtype", "").upper())
    if base is None:
        _fail(role, path, f"unsupported ElementType {fields.get('elementtype')!r}; expected a scalar integer or float type")
    big = fields.get("binarydatabyteordermsb", fields.get("elementbyteordermsb", "false")).lower() == "true"
    dtype = np.dtype((">" if big else "<") + base)
    try:
        if "elementspacing" in fields:
            check_spacing([float(v) for v in fields["elementspacing"].split()], role, f"file {path}")
        matrix = fields.get("transformmatrix") or fields.get("rotation") or fields.get("orientation")
        if matrix:
            vals = [float(v) for v in matrix.split()]
            n = int(round(len(vals) ** 0.5))
            if n * n == len(vals):
                check_direction(np.asarray(vals).reshape(n, n), role, f"file {path}")
    except InputError:
        raise
    except ValueError:
        _fail(role, path, "unreadable ElementSpacing / TransformMatrix; expected numbers")
    where = fields["elementdatafile"]
    if where.upper() == "LOCAL":
        payload, data_path = buf[offset:], path
    elif where.upper().startswith("LIST") or "%" in where:
        return  # multi-file data: left to the reader
    else:
        data_path = path.parent / where if not Path(where).is_absolute() else Path(where)
        if not data_path.is_file():
            _fail(role, path, f"its data file {data_path} does not exist; expected it beside the header")
        payload = _read(data_path, role)
    if fields.get("compresseddata", "false").lower() == "true":
        try:
            payload = zlib.decompressobj().decompress(payload)
        except zlib.error as exc:
            _fail(role, data_path, f"corrupt compressed data ({exc})")
    n_vox = int(np.prod(dims, dtype=np.float64)) * channels
    _check_length(role, data_path, len(payload), n_vox * dtype.itemsize)
    _check_values(role, data_path, payload, dtype, 0, n_vox)


def verify_image_file(path, role: str = "volume") -> None:
    """Check a NIfTI / Analyze / NRRD / MetaImage file against its header (see the module doc); other files
    (DICOM, formats without a header parser here) pass through to the reader."""
    path = Path(path)
    kind = _kind(path)
    if kind in ("nifti", "analyze"):
        _verify_nifti(path, role)
    elif kind == "nrrd":
        _verify_nrrd(path, role)
    elif kind == "meta":
        _verify_meta(path, role)


def companion_files(path) -> list:
    """Other files an image on disk consists of (the .img of a .hdr, the data file of a .nhdr / .mhd)."""
    path = Path(path)
    name = path.name.lower()
    out = []
    if name.endswith((".hdr", ".hdr.gz")):
        s = _sibling(path, (".img", ".img.gz"))
        out += [s] if s else []
    elif name.endswith((".img", ".img.gz")):
        s = _sibling(path, (".hdr", ".hdr.gz"))
        out += [s] if s else []
    elif name.endswith((".nhdr", ".mhd")) and path.is_file():
        try:
            text = path.read_bytes()[:65536].decode("latin-1", errors="replace")
        except OSError:
            return out
        pattern = r"^\s*data ?file\s*:\s*(\S+)" if name.endswith(".nhdr") else r"^\s*ElementDataFile\s*=\s*(\S+)"
        m = re.search(pattern, text, flags=re.IGNORECASE | re.MULTILINE)
        if m and m.group(1).upper() not in ("LOCAL", "LIST") and "%" not in m.group(1):
            out.append(path.parent / m.group(1))
    return out
