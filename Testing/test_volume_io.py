"""Geometry: file round trips through every format, LPS/RAS and vtkMatrix4x4, resampling real data."""

import numpy as np
import pytest
import SimpleITK as sitk

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.io import read_volume, write_volume
from SodiumDIPLib.data.resample import overlap_fraction, resample_to_grid
from SodiumDIPLib.data.support import estimate_noise_sigma, head_mask
from SodiumDIPLib.data.volume import (Volume, from_sitk, geometry_from_ijk_to_ras, ijk_to_ras_matrix, lps_to_ras,
                                 to_sitk, to_vtk_matrix, volume_from_ijk_to_ras)


def assert_same_geometry(a: Volume, b: Volume, atol=1e-5):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_file_round_trip_keeps_array_and_geometry(tmp_path, oblique_volume, suffix):
    path = write_volume(oblique_volume, tmp_path / f"vol{suffix}")
    back = read_volume(path)
    assert_same_geometry(oblique_volume, back)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert back.array.dtype == np.float32
    assert not list(tmp_path.glob(".tmp-*")), "temporary files left behind"


def _write_dicom_series(volume: Volume, folder):
    """Write a volume as an int16 DICOM series with position/orientation tags (the way scanners do)."""
    folder.mkdir()
    image = sitk.Cast(to_sitk(volume), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = volume.direction
    orientation = "\\".join(f"{v:.6f}" for v in (d[0, 0], d[1, 0], d[2, 0], d[0, 1], d[1, 1], d[2, 1]))
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        pos = volume.index_to_physical([0, 0, k])
        for tag, value in (("0020|0032", "\\".join(f"{p:.6f}" for p in pos)), ("0020|0037", orientation),
                           ("0020|000e", series_uid), ("0020|0013", str(k + 1)),
                           ("0018|0050", f"{volume.spacing[2]:.6f}"), ("0008|0060", "MR"),
                           ("0008|0018", f"{series_uid}.{k + 1}")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_round_trip(tmp_path, oblique_volume):
    vol = oblique_volume.with_array(np.round(oblique_volume.array * 1000).astype(np.float32))
    _write_dicom_series(vol, tmp_path / "dicom")
    back = read_volume(tmp_path / "dicom")
    assert_same_geometry(vol, back, atol=1e-4)
    np.testing.assert_array_equal(back.array, vol.array)


def test_lps_ras_is_an_involution_and_flips_lr_ap():
    p = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(lps_to_ras(p), [[-1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(lps_to_ras(lps_to_ras(p)), p)


def test_ijk_to_ras_maps_voxels_to_ras_positions(oblique_volume):
    m = ijk_to_ras_matrix(oblique_volume)
    ijk = np.array([2.0, 3.0, 4.0])
    ras = m @ np.append(ijk, 1.0)
    np.testing.assert_allclose(ras[:3], lps_to_ras(oblique_volume.index_to_physical(ijk)))
    # SimpleITK's own index->physical (LPS) agrees
    img = to_sitk(oblique_volume)
    np.testing.assert_allclose(lps_to_ras(img.TransformContinuousIndexToPhysicalPoint(ijk.tolist())), ras[:3])


def test_vtk_matrix_round_trip(oblique_volume):
    vm = to_vtk_matrix(ijk_to_ras_matrix(oblique_volume))
    assert vm.GetClassName() == "vtkMatrix4x4"
    back = volume_from_ijk_to_ras(oblique_volume.array, vm)
    assert_same_geometry(oblique_volume, back, atol=1e-9)
    spacing, origin, direction = geometry_from_ijk_to_ras(ijk_to_ras_matrix(oblique_volume))
    np.testing.assert_allclose(spacing, oblique_volume.spacing)


def _nifti_sform(path):
    """The sform affine straight from the NIfTI-1 header bytes (independent of SimpleITK)."""
    raw = path.read_bytes()[:348]
    sform_code = np.frombuffer(raw[254:256], "<i2")[0]
    rows = np.frombuffer(raw[280:328], "<f4").reshape(3, 4)
    return sform_code, np.vstack([rows, [0, 0, 0, 1]])


def test_ijk_to_ras_equals_the_nifti_affine_of_real_data(uhf_dir):
    for name in ("c2p_naa_6.nii", "gre_2.nii"):
        code, affine = _nifti_sform(uhf_dir / name)
        assert code > 0
        vol = read_volume(uhf_dir / name)
        np.testing.assert_allclose(ijk_to_ras_matrix(vol), affine, atol=1e-3)


def test_2d_slice_round_trip(tmp_path):
    vol = Volume(np.arange(1, 13, dtype=np.float32).reshape(3, 4), spacing=(0.5, 0.75), origin=(3.0, -2.0))
    back = read_volume(write_volume(vol, tmp_path / "slice.nrrd"))
    assert back.ndim == 2
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing[:2], (0.5, 0.75))


def test_proton_resampled_onto_sodium_grid_lines_up(uhf_dir):
    sodium = read_volume(uhf_dir / "c2p_naa_6.nii", "sodium")
    proton = read_volume(uhf_dir / "gre_2.nii", "proton")
    on_grid = resample_to_grid(proton, sodium)
    assert on_grid.shape == sodium.shape
    np.testing.assert_allclose(on_grid.origin, sodium.origin)
    m_na, m_h = head_mask(sodium.array), head_mask(on_grid.array)
    dice = 2 * (m_na & m_h).sum() / (m_na.sum() + m_h.sum())
    assert dice >= 0.8, dice
    # the same proton shifted by 3 sodium voxels lines up worse: the test can tell alignment
    shifted = Volume(proton.array, proton.spacing, np.asarray(proton.origin) + [18.0, 0, 0], proton.direction)
    m_s = head_mask(resample_to_grid(shifted, sodium).array)
    assert 2 * (m_na & m_s).sum() / (m_na.sum() + m_s.sum()) < dice - 0.05


def test_antialiasing_removes_fine_detail_when_downsampling():
    fine = Volume(np.tile([0.0, 1.0], 32)[None, None, :].repeat(4, 0).repeat(4, 1).astype(np.float32),
                  spacing=(1.0, 1.0, 1.0))
    coarse = Volume(np.zeros((4, 4, 16), np.float32), spacing=(4.0, 1.0, 1.0), origin=(1.5, 0, 0))
    aa = resample_to_grid(fine, coarse, antialias=True).array[1:-1, 1:-1, 2:-2]
    raw = resample_to_grid(fine, coarse, antialias=False).array[1:-1, 1:-1, 2:-2]
    assert aa.std() < 0.1 * raw.std() + 1e-6 or raw.std() == 0
    np.testing.assert_allclose(aa.mean(), 0.5, atol=0.05)


def test_non_overlapping_volumes_are_refused():
    a = Volume(np.ones((10, 10, 10), np.float32))
    b = Volume(np.ones((10, 10, 10), np.float32), origin=(500.0, 0, 0))
    assert overlap_fraction(b, a) == 0.0
    with pytest.raises(InputError, match="do not overlap"):
        resample_to_grid(b, a)


def test_noise_estimate_matches_the_two_repeat_estimate(uhf_dir):
    a = read_volume(uhf_dir / "c2p_naa_6.nii").array.astype(float)
    b = read_volume(uhf_dir / "c2p_naa_8.nii").array.astype(float)
    m = head_mask(a)
    truth = np.sqrt(np.mean((a - b)[m] ** 2) / 2)
    assert abs(estimate_noise_sigma(a) - truth) < 0.15 * truth


def test_bad_volume_content_is_refused(tmp_path):
    nan = np.ones((8, 8, 8), np.float32)
    nan[2, 2, 2] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nrrd"))
    with pytest.raises(InputError, match="NaN"):
        read_volume(tmp_path / "nan.nrrd", "sodium")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8, 8), np.float32)), str(tmp_path / "zero.nrrd"))
    with pytest.raises(InputError, match="all zero"):
        read_volume(tmp_path / "zero.nrrd", "sodium")
    (tmp_path / "junk.nii").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read sodium"):
        read_volume(tmp_path / "junk.nii", "sodium")
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.nii", "sodium")


def test_from_sitk_rejects_vector_images():
    img = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)
    with pytest.raises(InputError, match="components"):
        from_sitk(img)
