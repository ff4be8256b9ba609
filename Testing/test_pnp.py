"""`pnp`: the conjugate-gradient data step, the shipped MRI-driven prior, and the method on small problems."""

import math

import numpy as np
import pytest
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.methods import RunContext, get_method
from SodiumDIPLib.methods.pnp import DataStep
from SodiumDIPLib.physics.cartesian import MultiCoilCartesian


def _random_maps(shape, coils, seed):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((coils,) + shape) + 1j * rng.standard_normal((coils,) + shape)
    return (s / np.sqrt((np.abs(s) ** 2).sum(0, keepdims=True))).astype(np.complex64)


@pytest.mark.parametrize("rho", [1e-2, 1.0])
def test_cartesian_data_step_solves_its_normal_equations(rho):
    shape = (24, 20)
    rng = np.random.default_rng(0)
    mask = rng.random(shape) < 0.4
    op = MultiCoilCartesian(_random_maps(shape, 3, 1), mask)
    y = op.forward(torch.from_numpy(rng.random(shape).astype(np.float32)))
    y = y + 0.05 * (torch.randn(y.shape) + 1j * torch.randn(y.shape)) * torch.from_numpy(mask)
    step = DataStep(op, y, identity=False, cg_iterations=200)
    v = torch.from_numpy(rng.random(shape).astype(np.float32))
    x = step.solve(v, rho, torch.zeros(shape))
    lhs = op.adjoint(op.forward(x)).real + rho * x
    rhs = op.adjoint(y).real + rho * v
    assert float(torch.linalg.vector_norm(lhs - rhs) / torch.linalg.vector_norm(rhs)) < 1e-4
    # and a single gradient step would not: the residual of the starting point is O(1)
    x0 = torch.zeros(shape)
    assert float(torch.linalg.vector_norm(step.normal(rho)(x0) - rhs) / torch.linalg.vector_norm(rhs)) > 0.5


def test_radial_data_step_solves_its_normal_equations():
    pytest.importorskip("finufft")
    from SodiumDIPLib.physics.density import density_weighted
    from SodiumDIPLib.physics.radial import RadialNUFFT, radial_trajectory

    shape = (24, 24)
    traj = radial_trajectory(shape, n_spokes=20)
    op = RadialNUFFT(traj, shape, _random_maps(shape, 2, 2))
    rng = np.random.default_rng(3)
    y = op.forward(torch.from_numpy(rng.random(shape).astype(np.float32)))
    wop, wy, _, weighted = density_weighted(op, y, 0.01, shape, "cpu")
    assert weighted
    step = DataStep(wop, wy, identity=False, cg_iterations=300)
    v = torch.zeros(shape)
    x = step.solve(v, 0.05, torch.zeros(shape))
    lhs = wop.adjoint(wop.forward(x)).real + 0.05 * x
    rhs = wop.adjoint(wy).real
    assert float(torch.linalg.vector_norm(lhs - rhs) / torch.linalg.vector_norm(rhs)) < 1e-3


def test_identity_data_step_is_the_closed_form():
    y = torch.rand(8, 8)
    v = torch.rand(8, 8)
    x = DataStep(None, y, identity=True, cg_iterations=1).solve(v, 0.5, y)
    assert torch.allclose(x + 0.5 * x, y + 0.5 * v)


def test_shipped_prior_is_small_and_loads_weights_only():
    from SodiumDIPLib.learned.prior import SHIPPED, load_prior

    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 400 * 1024
    model, meta = load_prior()
    assert meta["template"].startswith("mni_icbm152_t1") and meta["hemisphere"].startswith("left")
    assert meta["sigma_min"] < meta["sigma_max"]
    # it denoises a smooth blob at a level inside its range
    rng = np.random.default_rng(0)
    z, yy, xx = np.mgrid[:24, :24, :24] - 11.5
    clean = (0.8 * (z * z + yy * yy + xx * xx < 81) + 0.2 * ((z - 2) ** 2 + yy * yy + xx * xx < 16)).astype(np.float32)
    from scipy import ndimage as ndi

    clean = ndi.gaussian_filter(clean, 1.0)
    noisy = clean + 0.08 * rng.standard_normal(clean.shape).astype(np.float32)
    from SodiumDIPLib.learned.gdsm import apply_denoiser

    out = apply_denoiser(model, noisy, 0.08)
    assert np.mean((out - clean) ** 2) < 0.4 * np.mean((noisy - clean) ** 2)


def _kspace_case(shape=(24, 24, 24), R=4.0, seed=0):
    from SodiumDIPLib.physics.kspace import kspace_problem, undersample_case
    from SodiumDIPLib.data.phantom import make_phantom
    from SodiumDIPLib.physics.simulate import phantom_kspace

    case = make_phantom("head", seed=seed, shape=shape)
    sim = phantom_kspace(case, n_coils=4, kind="cartesian", seed=seed)
    uc = undersample_case(sim.kspace, R, seed=seed)
    kp = kspace_problem(uc.kspace, mask=uc.mask, support=case.brain.array > 0)
    truth = case.sodium_truth.array * case.bias_field.array
    return kp, truth, case.brain.array > 0


def _psnr(x, ref, mask):
    return 10 * math.log10(ref[mask].max() ** 2 / np.mean((x[mask] - ref[mask]) ** 2))


def test_pnp_with_the_prior_beats_zero_filled_and_stops_by_discrepancy():
    kp, truth, brain = _kspace_case()
    spec = get_method("pnp")
    assert set(spec.presets) == {"fast", "balanced", "quality"} and spec.supports_kspace
    res = spec.run(kp.problem, spec.parameters("fast", {"denoiser": "prior"}), RunContext(seed=0))
    zf = _psnr(np.abs(kp.problem.initial) / kp.scale, truth, brain)
    got = _psnr(np.abs(res.image) / kp.scale, truth, brain)
    assert res.stop_rule == "fixed" and res.iterations == 12
    assert got > zf + 3, (got, zf)
    # discrepancy rule: stops at the first step whose residual is at the noise level (before the count here)
    dres = spec.run(kp.problem, spec.parameters("fast", {"denoiser": "prior", "stopping": "discrepancy",
                                                         "iterations": 30}),
                    RunContext(seed=0))
    assert dres.stop_rule == "discrepancy" and dres.stop_iteration < 30
    assert dres.history[-1]["loss"] <= 1.0  # residual / expected noise energy
    assert all(h["loss"] > 1.0 for h in dres.history[:-1])  # and it is the first step that got there


def test_pnp_cancel_returns_the_last_denoised_image():
    kp, truth, brain = _kspace_case((16, 16, 16))
    spec = get_method("pnp")
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    res = spec.run(kp.problem, spec.parameters("fast"), RunContext(seed=0, should_cancel=cancel))
    assert res.stop_rule == "cancelled" and res.iterations >= 1 and np.isfinite(res.image).all()


def test_pnp_rejects_bad_parameters():
    kp, _, _ = _kspace_case((16, 16, 16))
    spec = get_method("pnp")
    for key, value, match in (("denoiser", "nlm", "denoiser"), ("splitting", "pg", "splitting"),
                              ("stopping", "never", "stopping"), ("sigma_start", -1.0, "sigma_start"),
                              ("iterations", 0, "iterations")):
        with pytest.raises(InputError, match=match):
            spec.run(kp.problem, spec.parameters("fast", {key: value}), RunContext())


def test_prior_training_command_reproduces_a_weights_file(tmp_path):
    """The training command on a small synthetic 'template' (LPS, 1 mm, like the MNI file): writes a loadable
    weights file with its provenance, keeps only the left hemisphere, and never overwrites an existing file."""
    import argparse

    import SimpleITK as sitk

    from SodiumDIPLib.learned.network import load_model
    from SodiumDIPLib.learned.prior import add_arguments, left_hemisphere, main

    z, y, x = np.mgrid[:60, :64, :72]
    t1 = (200 * (((z - 30) / 28.0) ** 2 + ((y - 32) / 30.0) ** 2 + ((x - 36) / 34.0) ** 2 < 1)).astype(np.uint8)
    img = sitk.GetImageFromArray(t1)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    img.SetOrigin((36.0, 32.0, -30.0))
    path = tmp_path / "t1.nii.gz"
    sitk.WriteImage(img, str(path))
    assert left_hemisphere(path).shape[2] < 72 // 2  # RAS x < -2 mm: fewer than half the columns
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "prior.pt"
    assert main(parser.parse_args(["--out", str(out), "--steps", "3", "--template", str(path)])) == 0
    model, meta = load_model(out)
    assert meta["steps"] == 3 and meta["hemisphere"].startswith("left") and not model.cfg.proton
    with pytest.raises(InputError, match="exists"):
        main(parser.parse_args(["--out", str(out), "--steps", "3", "--template", str(path)]))
