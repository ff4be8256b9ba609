"""Readers that verify what they read (issue 11, class 3): every bad file is refused with exit 2 and one line
naming the file and what was expected, nothing is written and the input stays byte-identical.

Small generated files only (a 12x16x16 volume); ``sodiumdip metrics`` is the cheapest command that reads an
image, ``denoise`` is run for the cases that must fail before any computation.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from safety_helpers import assert_refused, phantom_arrays, run_cli, snapshot


@pytest.fixture
def good_nii(tmp_path) -> Path:
    sodium, _ = phantom_arrays()
    img = sitk.GetImageFromArray(sodium)
    img.SetSpacing((2.0, 2.0, 2.0))
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "good.nii"
    sitk.WriteImage(img, str(path))
    return path


def _refused_by_metrics(tmp_path, capfd, bad: Path, *words):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = snapshot(tmp_path)
    code, _, err = run_cli(["metrics", "--image", bad, "--json", out / "m.json"], capfd)
    line = assert_refused(code, err, *words)
    assert snapshot(tmp_path) == before  # nothing written, the input byte-identical
    return line


def _with_nan(array):
    a = array.copy()
    a[3, 4, 5] = np.nan
    a[4, 4, 5] = np.inf
    return a


def test_truncated_nifti_is_refused(tmp_path, good_nii, capfd):
    data = good_nii.read_bytes()
    bad = good_nii.with_name("cut.nii")
    bad.write_bytes(data[:-300])
    _refused_by_metrics(tmp_path, capfd, bad, "cut.nii", "truncated")


def test_truncated_nifti_gz_is_refused(tmp_path, good_nii, capfd):
    bad = good_nii.with_name("cut.nii.gz")
    bad.write_bytes(gzip.compress(good_nii.read_bytes())[:-200])
    _refused_by_metrics(tmp_path, capfd, bad, "cut.nii.gz", "truncated")


def test_nan_in_hdr_img_pair_is_refused(tmp_path, capfd):
    sodium, _ = phantom_arrays()
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(_with_nan(sodium)), str(folder / "pair.hdr"))
    assert (folder / "pair.img").exists()
    _refused_by_metrics(tmp_path, capfd, folder / "pair.hdr", "pair", "nan")


def test_nan_in_uncompressed_data_named_nii_gz_is_refused(tmp_path, capfd):
    sodium, _ = phantom_arrays()
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(_with_nan(sodium)), str(folder / "plain.nii"))
    bad = folder / "plain.nii.gz"
    shutil.move(folder / "plain.nii", bad)
    _refused_by_metrics(tmp_path, capfd, bad, "plain.nii.gz", "nan")


@pytest.mark.parametrize("suffix", ["nrrd", "mha", "nhdr", "mhd"])
def test_nan_in_nrrd_and_metaimage_is_refused(tmp_path, capfd, suffix):
    sodium, _ = phantom_arrays()
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(_with_nan(sodium)), str(folder / f"nan.{suffix}"))
    _refused_by_metrics(tmp_path, capfd, folder / f"nan.{suffix}", "nan", "finite")


@pytest.mark.parametrize("suffix", ["nrrd", "mha"])
def test_truncated_nrrd_and_metaimage_are_refused(tmp_path, capfd, suffix):
    sodium, _ = phantom_arrays()
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / f"whole.{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(sodium), str(path), useCompression=False)
    bad = folder / f"cut.{suffix}"
    bad.write_bytes(path.read_bytes()[:-500])
    _refused_by_metrics(tmp_path, capfd, bad, f"cut.{suffix}", "truncated")


def test_complex_nifti_is_refused(tmp_path, capfd):
    sodium, _ = phantom_arrays()
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray((sodium + 1j * sodium).astype(np.complex64)), str(folder / "cplx.nii"))
    _refused_by_metrics(tmp_path, capfd, folder / "cplx.nii", "cplx.nii", "complex", "magnitude")


def _patch(path: Path, offset: int, fmt: str, *values) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def test_sheared_nifti_sform_is_refused(tmp_path, good_nii, capfd):
    bad = good_nii.with_name("shear.nii")
    shutil.copy(good_nii, bad)
    _patch(bad, 254, "h", 1)  # sform_code: scanner
    _patch(bad, 280, "12f", 2, 0.8, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0)  # srow_x/y/z: x depends on j (shear)
    _refused_by_metrics(tmp_path, capfd, bad, "shear.nii", "sheared")


@pytest.mark.parametrize("value", [0.0, float("nan"), 1e30, float("inf")])
def test_bad_nifti_spacing_is_refused(tmp_path, good_nii, capfd, value):
    bad = good_nii.with_name("spacing.nii")
    shutil.copy(good_nii, bad)
    _patch(bad, 76 + 8, "f", value)  # pixdim[2]
    _refused_by_metrics(tmp_path, capfd, bad, "spacing.nii", "spacing")


def test_sheared_nrrd_direction_is_refused(tmp_path, capfd):
    sodium, _ = phantom_arrays()
    folder = tmp_path / "in"
    folder.mkdir()
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 16 16 12\n"
              "space directions: (2,0,0) (1,2,0) (0,0,2)\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n\n")
    bad = folder / "shear.nrrd"
    bad.write_bytes(header.encode() + sodium.astype("<f4").tobytes())
    _refused_by_metrics(tmp_path, capfd, bad, "shear.nrrd", "orthogonal")


def _dicom_series(folder: Path, positions):
    folder.mkdir(parents=True)
    sodium, _ = phantom_arrays()
    for n, z in enumerate(positions):
        img = sitk.GetImageFromArray((sodium[n % sodium.shape[0]] * 100).astype(np.int16)[None])
        img.SetSpacing((2.0, 2.0, 2.0))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for tag, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.1"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.2"),
                           ("0008|0060", "MR"), ("0020|0032", f"0\\0\\{z}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0013", str(n + 1)), ("0028|0030", "2\\2"), ("0018|0050", "2"),
                           ("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{n + 1}")):
            img.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{n:03d}.dcm"))
        writer.Execute(img)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, capfd):
    folder = tmp_path / "in" / "dicom"
    _dicom_series(folder, [0, 2, 4, 6, 10, 12, 14])  # 8 is missing
    _refused_by_metrics(tmp_path, capfd, folder, "dicom", "evenly spaced")


def test_even_dicom_series_is_read(tmp_path, capfd):
    from SodiumDIPLib.data.io import read_volume

    folder = tmp_path / "in" / "dicom"
    _dicom_series(folder, [0, 2, 4, 6, 8, 10])
    vol = read_volume(folder, "sodium")
    assert vol.shape == (6, 16, 16)
    assert np.allclose(vol.spacing, (2, 2, 2), atol=1e-3)


def test_good_files_are_read_in_every_format(tmp_path):
    """The checks refuse only what is wrong: the same volume is read back from every writable format."""
    from SodiumDIPLib.data.io import read_volume, write_volume
    from SodiumDIPLib.data.volume import Volume

    sodium, _ = phantom_arrays()
    theta = np.deg2rad(25)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    vol = Volume(sodium, (1.5, 2.0, 3.0), (-4.0, 5.0, 6.0), rot)
    for suffix in ("nii", "nii.gz", "nrrd", "nhdr", "mha", "mhd"):
        back = read_volume(write_volume(vol, tmp_path / f"v.{suffix}"), "sodium")
        assert np.array_equal(back.array, sodium)
        assert np.allclose(back.direction, rot, atol=1e-5) and np.allclose(back.spacing, vol.spacing)
