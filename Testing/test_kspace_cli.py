"""k-space Problems, zero-filled / gridding baselines, phantom k-space, and the undersample / reconstruct CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.kspace import estimate_noise_sigma_kspace, kspace_problem, undersample_case
from SodiumDIPLib.methods import RunContext, get_method
from SodiumDIPLib.physics.base import Identity
from SodiumDIPLib.physics.radial import radial_trajectory
from SodiumDIPLib.physics.simulate import simulate_kspace
from SodiumDIPLib.physics.rawio import write_ismrmrd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multicoil"


def smooth_object(shape):
    """A blurred disk / ball with a bright spot: smooth enough for the periphery noise estimate, detailed enough
    for undersampling to matter."""
    from scipy import ndimage as ndi

    grids = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids)
    x = (r2 < 0.6) * (1 + 0.5 * (((grids[-1] - 0.3) ** 2 + sum(g ** 2 for g in grids[:-1])) < 0.05))
    return ndi.gaussian_filter(x.astype(np.float32), 1.0)


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def phantom_image():
    """The built-in head phantom's sodium truth times its receive bias, a small 3D grid."""
    from SodiumDIPLib.data.phantom import make_phantom

    return make_phantom(kind="head", seed=0, shape=(24, 24, 24))


def test_cartesian_problem_normalised_and_consistent():
    x = smooth_object((40, 40))
    sim = simulate_kspace(x, n_coils=6, noise_sigma=0.004, seed=0)
    case = undersample_case(sim.kspace, 3, seed=1)
    kp = kspace_problem(case.kspace, case.mask, reference=case.reference)
    p = kp.problem
    assert not p.magnitude and p.image_shape == (40, 40) and p.operator.oshape == (6, 40, 40)
    # the engine's one normalisation rule: the 99.5th percentile of the initial image inside the support is 1
    assert p.support is not None and abs(np.percentile(p.initial[p.support], 99.5) - 1) < 1e-5
    assert kp.combination == "walsh" and kp.kind == "cartesian" and abs(kp.details["acceleration"] - 3) < 0.1
    # noise from the k-space periphery: within 30 % of the truth for a smooth object
    assert abs(kp.noise_sigma / 0.004 - 1) < 0.3, kp.noise_sigma
    assert np.isclose(p.noise_sigma, kp.noise_sigma * kp.scale)
    # the (real) truth explains the data: to the noise with the true maps (phase absorption keeps it real),
    # within 15 % with Walsh maps from the 4-line calibration centre
    m = torch.as_tensor(case.mask)
    resid = (p.operator(torch.as_tensor(x * kp.scale)) - p.measurement)[:, m]
    assert (resid.norm() / p.measurement[:, m].norm()).item() < 0.15
    kt = kspace_problem(case.kspace, case.mask, sensitivities=sim.sensitivities)
    resid = (kt.problem.operator(torch.as_tensor(x * kt.scale)) - kt.problem.measurement)[:, m]
    assert resid.abs().pow(2).mean().sqrt().item() < 1.3 * np.sqrt(2) * kt.problem.noise_sigma
    # zero-filled at R = 3 loses against the fully sampled reference, both in the data's units
    zf = get_method("zero-filled").run(p, {}, RunContext()).image / kp.scale
    assert rel_err(case.reference, x) < 0.05 < rel_err(zf, x) < 0.6
    assert np.allclose(p.reference, case.reference * kp.scale, rtol=1e-5)


def test_phantom_emits_cartesian_and_radial_kspace(phantom_image):
    from SodiumDIPLib.physics.simulate import phantom_kspace

    case = phantom_image
    x = (case.sodium_truth.array * case.bias_field.array).astype(np.float32)
    noisy = phantom_kspace(case, n_coils=4, seed=1)
    assert noisy.noise_sigma == case.noise_sigma and np.allclose(noisy.image, x)
    # full noisy Cartesian: the coil-combined image has the phantom's image noise level
    full = kspace_problem(noisy.kspace, sensitivities=noisy.sensitivities, absorb_phase=False)
    zf_noisy = get_method("zero-filled").run(full.problem, {}, RunContext()).image / full.scale
    bg = case.support.array == 0
    assert abs(zf_noisy[bg].std() / (case.noise_sigma * np.sqrt(2 - np.pi / 2)) - 1) < 0.1  # Rayleigh std
    sim = simulate_kspace(x, n_coils=4, relative_noise=0.0, seed=0)
    kp = kspace_problem(sim.kspace, sensitivities=sim.sensitivities, absorb_phase=False, noise_sigma=0.0)
    zf = get_method("zero-filled").run(kp.problem, {}, RunContext()).image / kp.scale
    assert kp.combination == "given" and rel_err(zf, x) < 1e-4  # full, noise-free, true maps: exact
    rad = simulate_kspace(x, n_coils=4, kind="radial", relative_noise=0.01, seed=0)
    kr = kspace_problem(rad.kspace, trajectory=rad.trajectory, image_shape=x.shape)
    grid = get_method("gridding").run(kr.problem, {}, RunContext()).image / kr.scale
    brain = x > 0.2 * x.max()
    assert kr.kind == "radial" and kr.combination == "walsh"
    assert np.corrcoef(grid[brain], x[brain])[0, 1] > 0.9


def test_radial_undersampling_keeps_reference():
    x = smooth_object((48, 48))
    traj = radial_trajectory(x.shape, n_spokes=80)
    sim = simulate_kspace(x, n_coils=4, kind="radial", trajectory=traj, noise_sigma=0.002, seed=2)
    case = undersample_case(sim.kspace, 4, seed=0, trajectory=traj, image_shape=x.shape)
    assert case.kspace.shape == (4, 20, traj.shape[1]) and case.trajectory.shape == (20,) + traj.shape[1:]
    assert case.acceleration == 4.0 and rel_err(case.reference, x) < 0.1
    kp = kspace_problem(case.kspace, trajectory=case.trajectory, image_shape=x.shape)
    g = get_method("gridding").run(kp.problem, {}, RunContext()).image / kp.scale
    assert rel_err(g, x) > rel_err(case.reference, x)  # fewer spokes, worse gridding


def test_zero_filled_on_identity_returns_input():
    from SodiumDIPLib.methods.base import Problem

    img = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    p = Problem(measurement=torch.as_tensor(img), operator=Identity((8, 8)), image_shape=(8, 8), spacing=(1, 1),
                initial=img)
    for name in ("zero-filled", "gridding"):
        m = get_method(name)
        assert m.supports_kspace and m.presets["fast"] == m.presets["quality"] == {}
        assert np.array_equal(m.run(p, {}, RunContext()).image, img)


def test_kspace_problem_bad_input():
    k = (np.ones((2, 16, 16)) + 0j).astype(np.complex64)
    with pytest.raises(InputError, match="sensitivities of shape"):
        kspace_problem(k, sensitivities=np.ones((3, 16, 16)))
    with pytest.raises(InputError, match="mask of shape"):
        kspace_problem(k, mask=np.ones((16, 8), bool))
    bad = k.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        kspace_problem(bad)
    traj = radial_trajectory((16, 16), n_spokes=4)
    with pytest.raises(InputError, match=r"\[-0.5, 0.5\)"):
        kspace_problem(np.ones((2,) + traj.shape[:-1], np.complex64), trajectory=traj + 0.6, image_shape=(16, 16))
    with pytest.raises(InputError, match="image_shape"):
        kspace_problem(np.ones((2,) + traj.shape[:-1], np.complex64), trajectory=traj)
    with pytest.raises(InputError, match="acceleration"):
        undersample_case(k, 0.5)
    with pytest.raises(InputError, match="calibration"):  # too little fully sampled centre to estimate maps
        m = np.zeros((16, 16), bool)
        m[::4] = True
        kspace_problem(k * m, mask=m)
    with pytest.raises(InputError, match="periphery"):
        estimate_noise_sigma_kspace(np.ones((1, 4, 4), np.complex64))


def test_cli_undersample_and_reconstruct_real_data(tmp_path, capsys):
    from SodiumDIPLib.apps.cli import main

    case = tmp_path / "case"
    assert main(["undersample", "--input", str(DATA / "phantom_32ch_64.npz"), "--out", str(case),
                 "--acceleration", "3", "--seed", "2", "--spacing", "3.5,3.5"]) == 0
    info = json.loads((case / "case.json").read_text())
    assert info["kind"] == "cartesian" and abs(info["acceleration"] - 3) < 0.1 and info["coils"] == 32
    ref = sitk.ReadImage(str(case / "reference.nrrd"))
    assert ref.GetSize() == (64, 64, 1) and np.allclose(ref.GetSpacing()[:2], (3.5, 3.5))
    out = tmp_path / "zf.nii.gz"
    assert main(["reconstruct", "--input", str(case / "kspace.npz"), "--output", str(out), "--method", "zero-filled",
                 "--reference", str(case / "reference.nrrd"), "--metrics-json", str(tmp_path / "m.json"), "--quiet"]) == 0
    img = sitk.ReadImage(str(out))
    assert img.GetSize() == (64, 64, 1) and np.allclose(img.GetSpacing()[:2], (3.5, 3.5))
    assert np.allclose(img.GetOrigin(), ref.GetOrigin())
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["kspace"]["coil_combination"] == "walsh" and record["kspace"]["coils"] == 32
    # zero-filled at R = 3 is close to, but worse than, the fully sampled reference (same units)
    a, r = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref)
    assert 0.9 < np.corrcoef(a.ravel(), r.ravel())[0, 1] < 0.9999
    assert "sensitivities by walsh" in capsys.readouterr().out


def test_cli_ismrmrd_and_bad_input(tmp_path, capsys):
    from SodiumDIPLib.apps.cli import main

    x = smooth_object((32, 32))
    sim = simulate_kspace(x, n_coils=3, noise_sigma=0.002, seed=0)
    h5 = write_ismrmrd(tmp_path / "full.h5", sim.kspace, spacing=(2.0, 2.0))
    assert main(["undersample", "--input", str(h5), "--out", str(tmp_path / "c"), "-R", "2", "--format", "nii.gz"]) == 0
    assert (tmp_path / "c" / "reference.nii.gz").exists() and (tmp_path / "c" / "mask.nii.gz").exists()
    assert main(["reconstruct", "--input", str(h5), "--output", str(tmp_path / "full.nrrd"), "--method", "zero-filled",
                 "--quiet"]) == 0
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "full.nrrd")))[0]
    assert rel_err(full, x) < 0.05
    capsys.readouterr()
    # bad input: exit 2 with one clear line
    k = sim.kspace.copy()
    k[0, 3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", kspace=k)
    np.savez(tmp_path / "mask.npz", kspace=sim.kspace, mask=np.ones((32, 30), bool))
    traj = radial_trajectory((32, 32), n_spokes=8)
    np.savez(tmp_path / "traj.npz", kspace=np.ones((2,) + traj.shape[:-1], np.complex64), trajectory=traj - 0.3,
             image_shape=[32, 32])
    cases = [
        (["undersample", "--input", str(h5), "--out", str(tmp_path / "d"), "-R", "0.5"], "acceleration R must be >= 1"),
        (["reconstruct", "--input", str(tmp_path / "nan.npz"), "--output", str(tmp_path / "o.nrrd"),
          "--method", "zero-filled"], "nan.npz: contains 1 NaN"),
        (["reconstruct", "--input", str(tmp_path / "mask.npz"), "--output", str(tmp_path / "o.nrrd"),
          "--method", "zero-filled"], "sampling mask of shape (32, 30)"),
        (["reconstruct", "--input", str(tmp_path / "traj.npz"), "--output", str(tmp_path / "o.nrrd"),
          "--method", "gridding"], "trajectory outside [-0.5, 0.5)"),
        (["reconstruct", "--input", str(h5), "--output", str(tmp_path / "o.txt"), "--method", "zero-filled"], "unknown file type"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_radial_case(tmp_path):
    from SodiumDIPLib.apps.cli import main
    from SodiumDIPLib.physics.rawio import RawData, read_raw, write_raw_npz

    x = smooth_object((32, 32))
    traj = radial_trajectory(x.shape, n_spokes=64)
    sim = simulate_kspace(x, n_coils=3, kind="radial", trajectory=traj, noise_sigma=0.002, seed=0)
    write_raw_npz(tmp_path / "full.npz", RawData(sim.kspace, "kspace", trajectory=traj, image_shape=x.shape,
                                                 spacing=(3.0, 3.0)))
    assert main(["undersample", "--input", str(tmp_path / "full.npz"), "--out", str(tmp_path / "c"), "-R", "2"]) == 0
    info = json.loads((tmp_path / "c" / "case.json").read_text())
    assert info["kind"] == "radial" and info["spokes_kept"] == 32 and not (tmp_path / "c" / "mask.nrrd").exists()
    under = read_raw(tmp_path / "c" / "kspace.npz")
    assert under.is_radial and under.data.shape == (3, 32, traj.shape[1]) and under.spacing == (3.0, 3.0)
    out = tmp_path / "g.nrrd"
    assert main(["reconstruct", "--input", str(tmp_path / "c" / "kspace.npz"), "--output", str(out),
                 "--method", "gridding", "--reference", str(tmp_path / "c" / "reference.nrrd"), "--quiet"]) == 0
    g = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))[0]
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c" / "reference.nrrd")))[0]
    assert rel_err(ref, x) < rel_err(g, x) < 0.5
