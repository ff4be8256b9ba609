"""Forward operators: adjointness, conventions, accuracy against exact transforms, autograd, bad input."""

import numpy as np
import pytest
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.cartesian import MultiCoilCartesian, fftc_np, ifftc_np
from SodiumDIPLib.physics.radial import (BACKENDS, RadialNUFFT, _readout_radii, density_compensation, nudft,
                                         radial_trajectory, spoke_directions_3d)
from SodiumDIPLib.physics.simulate import coil_sensitivities, simulate_kspace
from SodiumDIPLib.physics.sampling import cartesian_mask

RNG = np.random.default_rng(0)


def crandn(shape, rng=RNG):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def adjoint_gap(op, dtype=torch.complex128):
    x = torch.as_tensor(crandn(op.ishape)).to(dtype)
    y = torch.as_tensor(crandn(op.oshape)).to(dtype)
    lhs = torch.vdot(op.forward(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    return float(abs(lhs - rhs) / abs(lhs))


@pytest.mark.parametrize("shape", [(12, 10), (6, 8, 10), (7, 9)])
def test_cartesian_adjoint(shape):
    sens = crandn((3,) + shape)
    mask = cartesian_mask(shape, 2, seed=1)
    op = MultiCoilCartesian(sens, mask)
    assert adjoint_gap(op) < 1e-12
    assert adjoint_gap(op, torch.complex64) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(10, 12, 8), (16, 14)])
def test_radial_adjoint(backend, shape):
    traj = radial_trajectory(shape, n_spokes=30)
    op = RadialNUFFT(traj, shape, crandn((3,) + shape), backend=backend)
    # finufft: type 1 and type 2 share the spreading kernel, adjoint to rounding; torchkbnufft computes in float32
    assert adjoint_gap(op) < (1e-12 if backend == "finufft" else 1e-5)


def test_cartesian_matches_data_readme_convention():
    """Fully sampled single coil: A^H of the real data = fftshift(ifftn(ifftshift(k))) (README convention)."""
    from pathlib import Path

    k = np.load(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multicoil" / "phantom_32ch_64.npz")["kspace"][0]
    op = MultiCoilCartesian(None, None, image_shape=k.shape)
    img = op.adjoint(torch.as_tensor(k)[None]).numpy()
    ref = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(k), norm="ortho"))
    assert np.allclose(img, ref, atol=1e-6 * np.abs(ref).max())
    assert np.allclose(op.forward(torch.as_tensor(ref))[0].numpy(), k, atol=1e-5 * np.abs(k).max())
    assert np.allclose(ifftc_np(fftc_np(ref, 2), 2), ref, atol=1e-6 * np.abs(ref).max())


def test_real_image_is_cast_and_zero_off_mask():
    shape = (8, 8)
    mask = cartesian_mask(shape, 2, seed=0)
    op = MultiCoilCartesian(crandn((2,) + shape), mask)
    x = torch.rand(shape)
    y = op.forward(x)
    assert y.is_complex()
    assert torch.allclose(y, op.forward(x.to(torch.complex64)))
    assert torch.all(y[:, ~torch.as_tensor(mask)] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nufft_accuracy_against_exact_nudft(backend):
    shape = (12, 10, 14)
    x = crandn(shape)
    traj = radial_trajectory(shape, n_spokes=40)
    ref = nudft(x, traj)
    y = RadialNUFFT(traj, shape, backend=backend).forward(torch.as_tensor(x.astype(np.complex64)))[0].numpy()
    err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert err < (1e-4 if backend == "finufft" else 3e-3), err


def test_nufft_on_grid_equals_centred_fft():
    shape = (8, 10)
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n // 2) / n for n in shape], indexing="ij"), -1)
    x = crandn(shape)
    y = RadialNUFFT(grid, shape).forward(torch.as_tensor(x))[0].numpy()
    assert np.allclose(y, fftc_np(x, 2), atol=1e-5 * np.abs(y).max())


def test_finufft_autograd_gradient_is_adjoint():
    shape = (8, 8, 8)
    traj = radial_trajectory(shape, n_spokes=20)
    op = RadialNUFFT(traj, shape, crandn((2,) + shape))
    y = torch.as_tensor(crandn(op.oshape))
    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    loss = (op(x) - y).abs().pow(2).sum()
    loss.backward()
    expected = 2 * op.adjoint(op(x.detach()) - y).real
    assert torch.allclose(x.grad, expected, rtol=1e-8, atol=1e-8 * float(expected.abs().max()))


def test_trajectory_properties():
    shape = (16, 16, 16)
    traj = radial_trajectory(shape, n_spokes=500)
    assert traj.min() >= -0.5 and traj.max() < 0.5
    # density-adapted: beyond k0 the samples keep r^2 dr constant (uniform 3D density)
    r = _readout_radii(200, True, 0.4)
    k0 = 0.2
    beyond = r > k0 * 1.05
    r2dr = (r[1:] ** 2 * np.diff(r))[beyond[1:]]
    assert r2dr.std() / r2dr.mean() < 0.05
    lin = np.diff(r[r < k0 * 0.95])
    assert np.allclose(lin, lin[0])  # linear ramp before k0
    # golden means directions: unit vectors covering the sphere evenly (first moments ~ 0, second ~ I/3)
    d = spoke_directions_3d(2000)
    assert np.allclose(np.linalg.norm(d, axis=1), 1)
    assert np.abs(d.mean(0)).max() < 0.02
    assert np.allclose(d.T @ d / len(d), np.eye(3) / 3, atol=0.02)
    t2 = radial_trajectory((32, 32))
    assert t2.shape[-1] == 2 and t2.min() >= -0.5 and t2.max() < 0.5


@pytest.mark.parametrize("shape", [(48, 48), (20, 20, 20)])
def test_gridding_with_density_compensation(shape):
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    blob = np.exp(-sum(g ** 2.0 for g in grids) / (2 * 3.0 ** 2))
    op = RadialNUFFT(radial_trajectory(shape), shape)
    g = op.gridding(op.forward(torch.as_tensor(blob))).real.numpy()
    err = np.linalg.norm(g - blob) / np.linalg.norm(blob)
    assert err < 0.06, err
    naive = op.adjoint(op.forward(torch.as_tensor(blob))).real.numpy()  # no compensation: badly wrong
    assert np.linalg.norm(naive - blob) / np.linalg.norm(blob) > 5 * err


def test_pipe_menon_close_to_analytic_2d():
    shape = (32, 32)
    traj = radial_trajectory(shape, n_spokes=60)
    wa = density_compensation(traj, shape)
    wp = density_compensation(traj, shape, method="pipe")
    mid = (np.linalg.norm(traj, axis=-1) > 0.1) & (np.linalg.norm(traj, axis=-1) < 0.4)
    ratio = wp[mid] / wa[mid]
    assert 0.7 < np.median(ratio) < 1.3


def test_operator_bad_input():
    shape = (8, 8)
    with pytest.raises(InputError, match="sampling mask of shape"):
        MultiCoilCartesian(crandn((2, 8, 8)), np.ones((8, 6)))
    with pytest.raises(InputError, match="do not match the image shape"):
        MultiCoilCartesian(crandn((2, 8, 8)), image_shape=(8, 6))
    with pytest.raises(InputError, match="coils"):
        MultiCoilCartesian(crandn((8, 8)), None)
    traj = radial_trajectory(shape, n_spokes=4)
    with pytest.raises(InputError, match=r"\[-0.5, 0.5\)"):
        RadialNUFFT(traj * 2, shape)
    with pytest.raises(InputError, match=r"\[-0.5, 0.5\)"):
        RadialNUFFT(np.full((3, 4, 2), 0.5), shape)
    with pytest.raises(InputError, match="2D trajectory"):
        RadialNUFFT(traj, (8, 8, 8))
    with pytest.raises(InputError, match="do not match"):
        RadialNUFFT(traj, shape, crandn((2, 8, 7)))
    bad = traj.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        RadialNUFFT(bad, shape)
    op = MultiCoilCartesian(crandn((2, 8, 8)))
    with pytest.raises(InputError, match="image of shape"):
        op.forward(torch.zeros(8, 9))


def test_simulated_kspace_noise_and_maps():
    shape = (16, 16, 16)
    s = coil_sensitivities(shape, 8)
    assert np.allclose(np.sqrt((np.abs(s) ** 2).sum(0)), 1, atol=1e-5)
    # maps differ between coils (a coil is brighter near itself)
    assert np.abs(s).max(axis=(1, 2, 3)).min() > 1.5 * np.abs(s).mean()
    x = np.zeros(shape, np.float32)
    x[4:12, 4:12, 4:12] = 1
    sim = simulate_kspace(x, n_coils=4, noise_sigma=0.05, seed=3)
    noise = sim.kspace - sim.clean
    assert abs(noise.real.std() / 0.05 - 1) < 0.03 and abs(noise.imag.std() / 0.05 - 1) < 0.03
    again = simulate_kspace(x, n_coils=4, noise_sigma=0.05, seed=3)
    assert np.array_equal(sim.kspace, again.kspace)
    # noise-free Cartesian data invert exactly through the sensitivities
    img = (sim.sensitivities.conj() * ifftc_np(sim.clean, 3)).sum(0)
    assert np.allclose(img.real, x, atol=1e-4)
    rad = simulate_kspace(x, n_coils=2, kind="radial", n_spokes=50)
    assert rad.kspace.shape == (2,) + rad.trajectory.shape[:-1]
    with pytest.raises(InputError):
        simulate_kspace(np.full(shape, np.nan))
