"""Raw-data inputs verified and never modified (issue 11): undersample cannot overwrite its own input,
k-space geometry fields are validated, pickled or absurdly large arrays are refused before allocation, and
ISMRMRD files are opened read-only."""

from __future__ import annotations

import numpy as np
import pytest

from safety_helpers import assert_refused, run_cli, snapshot


def _kspace(coils=4, shape=(24, 24), seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    image = (x ** 2 + y ** 2 < 0.5).astype(np.complex64) * 10
    sens = np.stack([np.exp(1j * c + 0.2 * c * x) for c in range(coils)])
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(sens * image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return (k + rng.normal(0, 0.05, k.shape) + 1j * rng.normal(0, 0.05, k.shape)).astype(np.complex64)


@pytest.fixture
def case(tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    np.savez(folder / "kspace.npz", kspace=_kspace())
    return tmp_path, folder / "kspace.npz"


def _refused(tmp, capfd, argv, *words):
    before = snapshot(tmp)
    code, _, err = run_cli(argv, capfd)
    assert_refused(code, err, *words)
    assert snapshot(tmp) == before


def test_undersample_into_the_folder_of_its_input_is_refused(case, capfd):
    tmp, kspace = case
    _refused(tmp, capfd, ["undersample", "--input", kspace, "--out", kspace.parent, "-R", "2"], "kspace.npz",
             "overwrite")


def test_undersample_writes_a_complete_case_otherwise(case, capfd):
    tmp, kspace = case
    code, _, err = run_cli(["undersample", "--input", kspace, "--out", tmp / "new", "-R", "2"], capfd)
    assert code == 0, err
    assert sorted(p.name for p in (tmp / "new").iterdir()) == ["case.json", "kspace.npz", "mask.nrrd",
                                                               "reference.nrrd"]


@pytest.mark.parametrize("field,value,words", [
    ("origin", np.array([0.0, np.nan, 0.0]), ("origin", "finite")),
    ("direction", np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1.0]]), ("orthogonal",)),
    ("direction", np.full((3, 3), np.inf), ("direction", "finite")),
    ("spacing", np.array([1.0, 0.0]), ("spacing",)),
    ("spacing", np.array([1e30, 1.0]), ("spacing",)),
])
def test_bad_geometry_fields_are_refused(tmp_path, capfd, field, value, words):
    bad = tmp_path / "in" / "k.npz"
    bad.parent.mkdir()
    np.savez(bad, kspace=_kspace(), **{field: value})
    _refused(tmp_path, capfd, ["reconstruct", "--input", bad, "--output", tmp_path / "r.nii.gz", "--method",
                               "zero-filled", "--device", "cpu", "--quiet"], *words)


def test_pickled_npz_is_refused(tmp_path, capfd):
    bad = tmp_path / "in" / "k.npz"
    bad.parent.mkdir()
    np.savez(bad, kspace=_kspace(), noise=np.array([{"a": 1}], dtype=object))
    _refused(tmp_path, capfd, ["undersample", "--input", bad, "--out", tmp_path / "o", "-R", "2"], "k.npz",
             "pickled")


def test_absurd_trajectory_grid_is_refused_before_allocation(tmp_path, capfd):
    bad = tmp_path / "in" / "k.npz"
    bad.parent.mkdir()
    traj = np.zeros((8, 16, 3), np.float32)
    np.savez(bad, kspace=np.ones((32, 8, 16), np.complex64), trajectory=traj, image_shape=np.array([4096, 4096, 4096]))
    _refused(tmp_path, capfd, ["reconstruct", "--input", bad, "--output", tmp_path / "r.nii.gz", "--method",
                               "zero-filled", "--device", "cpu", "--quiet"], "image_shape", "GiB")


def test_empty_ismrmrd_file_is_refused_and_left_empty(tmp_path, capfd):
    pytest.importorskip("ismrmrd")
    bad = tmp_path / "in" / "raw.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"")
    _refused(tmp_path, capfd, ["undersample", "--input", bad, "--out", tmp_path / "o", "-R", "2"], "raw.h5", "empty")
    assert bad.stat().st_size == 0


def test_ismrmrd_is_opened_read_only(tmp_path):
    ismrmrd = pytest.importorskip("ismrmrd")
    from SodiumDIPLib.physics.rawio import _open_ismrmrd_read_only, read_raw, write_ismrmrd

    path = write_ismrmrd(tmp_path / "raw.h5", _kspace())
    path.chmod(0o444)
    before = snapshot(tmp_path)
    dset = _open_ismrmrd_read_only(ismrmrd, path)
    try:
        assert dset._file.mode == "r"
    finally:
        dset.close()
    assert read_raw(path).data.shape == (4, 24, 24)
    assert snapshot(tmp_path) == before
