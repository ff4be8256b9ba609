"""Raw data in/out: NumPy and ISMRMRD round trips, the real multi-coil files, validation."""

from pathlib import Path

import numpy as np
import pytest

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.radial import radial_trajectory
from SodiumDIPLib.physics.rawio import RawData, read_raw, write_ismrmrd, write_raw_npz
from SodiumDIPLib.physics.sampling import cartesian_mask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multicoil"
RNG = np.random.default_rng(0)


def crandn(shape):
    return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(np.complex64)


def test_real_multicoil_files():
    raw = read_raw(DATA / "phantom_16ch_128.npz")
    assert raw.data.shape == (16, 128, 128) and raw.domain == "kspace" and raw.image_shape == (128, 128)
    assert raw.data.dtype == np.complex64 and not raw.is_radial
    raw = read_raw(DATA / "phantom_32ch_64.npz")
    assert raw.n_coils == 32 and raw.ndim == 2


def test_npz_round_trip_and_npy(tmp_path):
    k = crandn((4, 6, 8, 10))
    m = cartesian_mask((6, 8, 10), 2, seed=0)
    raw = RawData(k * m, "kspace", mask=m, spacing=(2.0, 2.0, 3.0), origin=(1.0, 2.0, 3.0), direction=np.eye(3))
    write_raw_npz(tmp_path / "a.npz", raw)
    back = read_raw(tmp_path / "a.npz")
    assert np.array_equal(back.data, k * m) and np.array_equal(back.mask, m)
    assert back.spacing == (2.0, 2.0, 3.0) and back.origin == (1.0, 2.0, 3.0) and back.image_shape == (6, 8, 10)
    np.save(tmp_path / "b.npy", k[:, 0])
    assert read_raw(tmp_path / "b.npy").data.shape == (4, 8, 10)
    np.savez(tmp_path / "c.npz", images=np.abs(k[:, 0]))
    c = read_raw(tmp_path / "c.npz")
    assert c.domain == "image" and c.data.dtype == np.complex64


def test_ismrmrd_cartesian_round_trip(tmp_path):
    for shape in [(12, 16), (6, 8, 10)]:
        k = crandn((3,) + shape)
        m = cartesian_mask(shape, 2, seed=1)
        noise = crandn((3, 50))
        path = write_ismrmrd(tmp_path / f"c{len(shape)}.h5", k * m, mask=m, spacing=(2.0, 3.0, 4.0)[: len(shape)], noise=noise)
        raw = read_raw(path)
        assert raw.data.shape == k.shape
        assert np.array_equal(raw.mask, m)
        assert np.allclose(raw.data, k * m)
        assert np.allclose(raw.noise, noise)
        assert np.allclose(raw.spacing, (2.0, 3.0, 4.0)[: len(shape)])
        assert raw.header["format"] == "ismrmrd" and raw.header["trajectory"] == "cartesian"
        # geometry: the k-space centre voxel sits at the acquisition position (0, 0, 0 here)
        centre = np.asarray([n // 2 for n in shape[::-1]] + [0] * (3 - len(shape)), float)
        pos = np.asarray(raw.origin) + raw.direction @ (np.asarray(raw.spacing + (1.0,) * (3 - len(shape))) * centre)
        assert np.allclose(pos, 0)


def test_ismrmrd_radial_round_trip(tmp_path):
    shape = (8, 8, 8)
    traj = radial_trajectory(shape, n_spokes=20)
    k = crandn((2,) + traj.shape[:-1])
    path = write_ismrmrd(tmp_path / "r.h5", k, trajectory=traj, image_shape=shape)
    raw = read_raw(path)
    assert raw.is_radial and raw.image_shape == shape
    assert np.allclose(raw.trajectory, traj) and np.allclose(raw.data, k)


def test_validation_errors(tmp_path):
    k = crandn((2, 8, 8))
    k[1, 2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", kspace=k)
    with pytest.raises(InputError, match=r"nan\.npz.*NaN"):
        read_raw(tmp_path / "nan.npz")
    np.savez(tmp_path / "dims.npz", kspace=crandn((8, 8)))
    with pytest.raises(InputError, match=r"dims\.npz.*\(coils, \[z,\] y, x\)"):
        read_raw(tmp_path / "dims.npz")
    np.savez(tmp_path / "both.npz", kspace=crandn((2, 8, 8)), images=crandn((2, 8, 8)))
    with pytest.raises(InputError, match="exactly one"):
        read_raw(tmp_path / "both.npz")
    np.savez(tmp_path / "mask.npz", kspace=crandn((2, 8, 8)), mask=np.ones((8, 7), bool))
    with pytest.raises(InputError, match="mask"):
        read_raw(tmp_path / "mask.npz")
    traj = radial_trajectory((8, 8), n_spokes=4) * 1.5
    np.savez(tmp_path / "traj.npz", kspace=crandn((2,) + traj.shape[:-1]), trajectory=traj, image_shape=[8, 8])
    with pytest.raises(InputError, match=r"\[-0.5, 0.5\)"):
        read_raw(tmp_path / "traj.npz")
    with pytest.raises(InputError, match="not found"):
        read_raw(tmp_path / "missing.npz")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="junk.h5"):
        read_raw(tmp_path / "junk.h5")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="unknown file type"):
        read_raw(tmp_path / "x.txt")
