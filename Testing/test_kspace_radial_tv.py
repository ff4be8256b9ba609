"""Variational reconstruction from radial k-space: the density-weighted data term makes PDHG converge."""

import numpy as np
import torch

from SodiumDIPLib.physics.kspace import kspace_problem
from SodiumDIPLib.methods import RunContext, get_method
from SodiumDIPLib.physics.density import DensityWeighted, density_weights
from SodiumDIPLib.physics.radial import radial_trajectory
from SodiumDIPLib.physics.simulate import simulate_kspace


def piecewise_object(n):
    grids = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for _ in range(2)], indexing="ij")
    r2 = sum(g ** 2 for g in grids)
    return ((r2 < 0.6) * (1 + 0.8 * (((grids[-1] - 0.3) ** 2 + grids[0] ** 2) < 0.04))).astype(np.float32)


def test_tv_beats_gridding_on_undersampled_radial():
    x = piecewise_object(48)
    traj = radial_trajectory(x.shape, n_spokes=40)  # about 1/2 of the 2D Nyquist spoke count
    sim = simulate_kspace(x, n_coils=4, kind="radial", trajectory=traj, relative_noise=0.01, seed=0)
    kp = kspace_problem(sim.kspace, trajectory=traj, image_shape=x.shape)
    grid = get_method("gridding").run(kp.problem, {}, RunContext()).image / kp.scale
    tv = get_method("tv")
    params = dict(tv.presets["fast"], bias_correction="none")
    rec = tv.run(kp.problem, params, RunContext()).image / kp.scale
    obj = x > 0

    def err(a):
        return float(np.linalg.norm((np.abs(a) - x)[obj]) / np.linalg.norm(x[obj]))

    # measured: gridding 0.055, tv 0.010 (0.022 without the density weighting: PDHG far from converged in the
    # preset's 60 iterations; on 3D radial data it stayed below gridding)
    assert err(rec) < 0.3 * err(grid), (err(rec), err(grid))


def test_density_weighted_operator_is_adjoint_and_only_for_non_cartesian():
    x = piecewise_object(16)
    traj = radial_trajectory(x.shape, n_spokes=12)
    sim = simulate_kspace(x, n_coils=2, kind="radial", trajectory=traj, seed=0)
    kp = kspace_problem(sim.kspace, trajectory=traj, image_shape=x.shape, noise_sigma=0.0)
    w = density_weights(kp.problem.operator)
    assert w is not None and w.shape == traj.shape[:-1] and bool((w >= 0).all())
    op = DensityWeighted(kp.problem.operator, torch.sqrt(w))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(x.shape, generator=g, dtype=torch.float64).to(torch.complex128)
    b = torch.randn(op.oshape, generator=g, dtype=torch.complex128)
    lhs, rhs = torch.vdot(op.forward(a).flatten(), b.flatten()), torch.vdot(a.flatten(), op.adjoint(b).flatten())
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)
    cart = simulate_kspace(x, n_coils=2, seed=0)
    assert density_weights(kspace_problem(cart.kspace, noise_sigma=0.0).problem.operator) is None


def test_dip_on_radial_data_fits_the_density_weighted_residual(monkeypatch):
    """The DIP loop uses the same density-weighted data term on radial data (2D, small network, 400 steps).
    Measured: relative error 0.047 weighted, 0.092 with the plain residual, gridding 0.067."""
    import SodiumDIPLib.physics.density as density_module

    x = piecewise_object(32)
    traj = radial_trajectory(x.shape, n_spokes=30)
    sim = simulate_kspace(x, n_coils=4, kind="radial", trajectory=traj, relative_noise=0.01, seed=0)
    kp = kspace_problem(sim.kspace, trajectory=traj, image_shape=x.shape)
    dip = get_method("dip")
    params = dip.parameters("fast", dict(channels="8,16", skip_channels="2,2", input_channels=4, iterations=400,
                                         precision="fp32", lr=0.02))
    obj = x > 0

    def err(a):
        return float(np.linalg.norm((np.abs(a) / kp.scale - x)[obj]) / np.linalg.norm(x[obj]))

    weighted = err(dip.run(kp.problem, params, RunContext()).image)
    grid = err(get_method("gridding").run(kp.problem, {}, RunContext()).image)
    monkeypatch.setattr(density_module, "density_weights", lambda op: None)
    plain = err(dip.run(kp.problem, params, RunContext()).image)
    assert weighted < 0.85 * grid and weighted < 0.7 * plain, (weighted, grid, plain)
