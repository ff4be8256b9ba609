"""Classical baselines: the PDHG solver, `tv`, `dtv` (proton-guided) and `bm4d`, on small phantoms."""

import math

import numpy as np
import pytest
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.methods import Problem, RunContext, get_method, list_methods
from SodiumDIPLib.physics.base import Identity
from SodiumDIPLib.physics.cartesian import MultiCoilCartesian
from SodiumDIPLib.solvers.pdhg import operator_norm, pdhg_tv, tv_objective


def _blocks(n=32, lesion=True):
    """Piecewise-constant 'sodium' (blocks + a sodium-only lesion) and a 'proton' with the same anatomy
    (no lesion, different contrasts, plus a proton-only block)."""
    na = np.zeros((n, n, n), np.float32)
    h = np.zeros_like(na)
    na[4:28, 4:28, 4:28], h[4:28, 4:28, 4:28] = 0.3, 0.9   # tissue
    na[8:16, 6:26, 6:26], h[8:16, 6:26, 6:26] = 1.0, 0.2   # fluid
    na[18:26, 8:20, 14:24], h[18:26, 8:20, 14:24] = 0.5, 0.6  # another tissue
    if lesion:
        na[19:24, 21:26, 6:11] = 0.7                       # sodium-only: invisible in the proton image
    h[5:8, 20:26, 20:26] = 0.5                             # proton-only: no sodium change
    return na, h


NO_BIAS = {"bias_correction": "none", "lambda_select": "fixed"}  # block phantoms: no receive bias; fixed lambda
# keeps these tests fast (SURE selection has its own test)


def _psnr(x, ref, mask=None):
    m = np.ones(ref.shape, bool) if mask is None else mask
    return 10 * math.log10(ref[m].max() ** 2 / np.mean((x[m] - ref[m]) ** 2))


def _noisy_problem(seed=0, sigma=0.08, n=32, proton=True, noise_sigma="true"):
    rng = np.random.default_rng(seed)
    na, h = _blocks(n)
    y = (na + sigma * rng.standard_normal(na.shape)).astype(np.float32)
    hn = (h + 0.02 * rng.standard_normal(h.shape)).astype(np.float32)
    prob = Problem(measurement=torch.from_numpy(y), operator=Identity(y.shape), image_shape=y.shape,
                   spacing=(1.0, 1.0, 1.0), initial=y, proton=hn / hn.max() if proton else None,
                   support=na > 0, noise_sigma=sigma if noise_sigma == "true" else None, magnitude=False)
    return prob, na


def test_registry_has_classical_methods():
    names = {m.name for m in list_methods()}
    assert {"tv", "dtv", "bm4d"} <= names
    assert get_method("dtv").needs_proton and not get_method("tv").needs_proton
    assert not get_method("bm4d").supports_kspace and get_method("tv").supports_kspace
    for name in ("tv", "dtv", "bm4d"):
        assert set(get_method(name).presets) == {"fast", "balanced", "quality"}


def test_pdhg_decreases_objective_to_a_minimum():
    prob, na = _noisy_problem()
    y = prob.measurement
    lam = 0.05
    res = pdhg_tv(y, lam, n_iter=150, tol=0.0, report_every=10)
    objs = [o for _, o in res.objective]
    start = tv_objective(y, y, None, lam)
    assert objs[-1] < 0.7 * start
    assert all(b <= a * (1 + 1e-3) for a, b in zip(objs, objs[1:]))  # (almost) monotone
    # a minimum: random perturbations (kept feasible) do not lower the objective
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        d = 0.01 * torch.randn(y.shape, generator=g)
        assert tv_objective(torch.clamp(res.x + d, min=0), y, None, lam) > objs[-1]
    assert float(res.x.min()) >= 0.0  # non-negativity


def test_pdhg_kspace_path_matches_identity_and_handles_undersampling():
    # 2D keeps this fast (the 3D FFT operator costs ~25 ms per A^H A on 16^3 here); 3D k-space: see below
    prob3, na3 = _noisy_problem()
    y, clean = prob3.measurement[16], torch.from_numpy(na3[16])
    lam = 0.05
    ref = pdhg_tv(y, lam, n_iter=200, tol=0.0).x
    op = MultiCoilCartesian(mask=np.ones(y.shape))  # fully sampled, one coil: A is unitary
    assert abs(operator_norm(op, y.shape) - 1.0) < 0.02
    xk = pdhg_tv(op.forward(y), lam, op=op, n_iter=300, tol=0.0).x
    assert float((xk - ref).abs().max()) < 0.01
    # a multiplicative gain (receive bias) in the model: both paths agree, and x comes out gain-free
    yy, xx = np.meshgrid(*[np.linspace(-1, 1, 32)] * 2, indexing="ij")
    gain = torch.from_numpy(np.exp(0.3 * xx).astype(np.float32))
    xg = pdhg_tv(gain * y, lam, gain=gain, n_iter=200, tol=0.0).x
    xgk = pdhg_tv(op.forward(gain * y), lam, op=op, gain=gain, n_iter=300, tol=0.0).x
    assert float((xg - xgk).abs().max()) < 0.01
    assert float((xg - ref).abs().mean()) < 0.1 * float(ref.abs().mean())
    # two coils, 40 % of k-space (centre fully sampled): TV beats the zero-filled adjoint
    rng = np.random.default_rng(1)
    mask = rng.random(y.shape) < 0.4
    mask[12:20, 12:20] = True
    sens = np.stack([np.exp(-((xx - 1) ** 2)) + 0.1j, np.exp(-((xx + 1) ** 2)) + 0.0j]).astype(np.complex64)
    op2 = MultiCoilCartesian(sensitivities=sens, mask=mask)
    g = torch.Generator().manual_seed(3)
    kk = op2.forward(clean)
    kk = kk + 0.02 * torch.complex(torch.randn(kk.shape, generator=g), torch.randn(kk.shape, generator=g)) * op2.mask
    res = pdhg_tv(kk, 0.01, op=op2, n_iter=300, tol=0.0)
    zero_filled = op2.adjoint(kk).real
    assert res.objective[-1][1] < res.objective[0][1]
    assert _psnr(res.x.numpy(), clean.numpy()) > _psnr(zero_filled.numpy(), clean.numpy()) + 3


def test_tv_and_dtv_raise_psnr_and_dtv_beats_tv():
    prob, na = _noisy_problem()
    y = prob.initial
    p_in = _psnr(y, na)
    out = {}
    for name in ("tv", "dtv"):
        m = get_method(name)
        res = m.run(prob, m.parameters("fast", NO_BIAS), RunContext("cpu"))
        assert res.image.shape == na.shape and res.image.dtype == np.float32
        out[name] = _psnr(res.image, na)
    assert out["tv"] > p_in + 5
    assert out["dtv"] > out["tv"] + 1
    # the sodium-only lesion is not erased (contrast stays > 60 % of the truth's)
    res = get_method("dtv").run(prob, get_method("dtv").parameters("fast", NO_BIAS), RunContext("cpu"))
    les = res.image[20:23, 22:25, 7:10].mean() - res.image[20:23, 22:25, 12:14].mean()
    assert les > 0.6 * (0.7 - 0.3)
    mag = res.extras["direction_field_magnitude"]
    assert mag.shape == na.shape and mag.max() <= 1.0
    assert mag[11, 5, 10] > 0.9 and np.median(mag) < 0.5  # the proton's fluid/tissue edge; mostly flat elsewhere


def test_dtv_on_head_phantom_beats_tv_and_n4_removes_the_bias():
    from SodiumDIPLib.data.phantom import make_phantom
    from SodiumDIPLib.pipeline import prepare_denoising

    case = make_phantom("head", seed=0, shape=(32, 32, 32))
    prob, scale, _ = prepare_denoising(case.sodium, case.proton)
    truth = case.sodium_truth.array / scale
    target = truth * case.bias_field.array  # what a denoiser without a bias model can reach
    brain = case.brain.array.astype(bool)
    p = {"input": _psnr(prob.initial, target, brain)}
    for name in ("tv", "dtv"):
        m = get_method(name)
        p[name] = _psnr(m.run(prob, m.parameters("fast", NO_BIAS), RunContext("cpu")).image, target, brain)
    assert p["tv"] > p["input"] + 1.0, p
    assert p["dtv"] > p["tv"] + 0.5, p
    # default: N4 bias estimate inside the data model -> a bias-corrected image and the field itself
    res = get_method("dtv").run(prob, get_method("dtv").parameters("fast"), RunContext("cpu"))
    b = res.bias_field
    assert b is not None and b.shape == truth.shape
    assert abs(float(np.log(b[prob.support]).mean())) < 1e-4  # scale pinned: mean log b = 0 on the support
    assert np.corrcoef(np.log(b[brain]), np.log(case.bias_field.array[brain]))[0, 1] > 0.8
    none = get_method("dtv").run(prob, get_method("dtv").parameters("fast", NO_BIAS), RunContext("cpu")).image
    assert _psnr(res.image, truth, brain) > _psnr(none, truth, brain) + 3


def test_noise_level_estimated_when_unknown_and_lambda_follows_it():
    prob, na = _noisy_problem(noise_sigma=None)
    m = get_method("tv")
    res = m.run(prob, m.parameters("fast", NO_BIAS), RunContext("cpu"))
    lam = res.history[0]["lam"]
    ls = m.presets["fast"]["lambda_sigma"]
    assert 0.5 * ls * 0.08 < lam < 2.0 * ls * 0.08  # lambda_sigma x sigma (estimate of 0.08)
    assert _psnr(res.image, na) > _psnr(prob.initial, na) + 5
    assert set(res.params) == set(m.presets["fast"])  # params stay re-runnable


def test_tv_kspace_problem_via_registry():
    n = 16
    na, _ = _blocks(32)
    clean = na[8:24, 8:24, 8:24].copy()
    rng = np.random.default_rng(2)
    mask = rng.random(clean.shape) < 0.5
    mask[6:10, 6:10, 6:10] = True
    op = MultiCoilCartesian(mask=mask)
    k = op.forward(torch.from_numpy(clean))
    k = k + 0.03 * torch.complex(torch.randn(k.shape), torch.randn(k.shape)) * op.mask
    zf = op.adjoint(k).real.numpy()
    prob = Problem(measurement=k, operator=op, image_shape=(n, n, n), spacing=(2.0, 2.0, 2.0), initial=zf,
                   support=clean > 0, noise_sigma=0.03, magnitude=False)
    m = get_method("tv")
    res = m.run(prob, m.parameters("fast", NO_BIAS), RunContext("cpu"))
    assert _psnr(res.image, clean) > _psnr(zf, clean) + 3


def test_progress_reports_and_cancellation():
    prob, na = _noisy_problem()
    events = []
    ctx = RunContext("cpu", on_progress=lambda ev, img: events.append((ev, img)))
    m = get_method("dtv")
    m.run(prob, m.parameters("fast", NO_BIAS), ctx)
    assert len(events) >= 3 and all("loss" in ev for ev, _ in events)
    assert events[-1][1]().shape == na.shape
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] >= 2

    res = m.run(prob, m.parameters("quality", NO_BIAS), RunContext("cpu", should_cancel=cancel))
    assert res.stop_rule == "cancelled" and res.iterations == 20
    assert _psnr(res.image, na) > _psnr(prob.initial, na)  # a usable estimate, not garbage


def test_dtv_needs_proton_and_validates_params():
    prob, _ = _noisy_problem(proton=False)
    m = get_method("dtv")
    with pytest.raises(InputError):
        m.run(prob, m.parameters("fast"), RunContext("cpu"))
    prob, _ = _noisy_problem()
    with pytest.raises(InputError):
        m.run(prob, m.parameters("fast", {"gamma": 1.5}), RunContext("cpu"))
    with pytest.raises(InputError):
        m.parameters("fast", {"lambda": 1.0})


def test_dtv_2d_slice_and_gamma_zero_equals_tv():
    prob3, na3 = _noisy_problem()
    sl = 20
    y = prob3.initial[sl]
    prob = Problem(measurement=torch.from_numpy(y.copy()), operator=Identity(y.shape), image_shape=y.shape,
                   spacing=(1.0, 1.0), initial=y, proton=prob3.proton[sl], support=na3[sl] > 0, noise_sigma=0.08)
    tv = get_method("tv").run(prob, get_method("tv").parameters("fast", NO_BIAS), RunContext("cpu")).image
    d0 = get_method("dtv").run(prob, get_method("dtv").parameters("fast", {"gamma": 0.0, **NO_BIAS}),
                               RunContext("cpu")).image
    lam_dtv = get_method("dtv").presets["fast"]["lambda_sigma"]
    tv_same = get_method("tv").run(prob, get_method("tv").parameters("fast", {"lambda_sigma": lam_dtv, **NO_BIAS}),
                                   RunContext("cpu")).image
    assert np.allclose(d0, tv_same, atol=1e-5)  # gamma 0: dTV is TV
    d = get_method("dtv").run(prob, get_method("dtv").parameters("fast", NO_BIAS), RunContext("cpu")).image
    assert _psnr(d, na3[sl]) > _psnr(tv, na3[sl])


def test_bm4d_denoises_2d_slice():
    m = get_method("bm4d")
    assert m.availability() is None
    prob3, na3 = _noisy_problem()
    y = prob3.initial[12]
    prob = Problem(measurement=torch.from_numpy(y.copy()), operator=Identity(y.shape), image_shape=y.shape,
                   spacing=(1.0, 1.0), initial=y, support=na3[12] > 0, noise_sigma=0.08)
    res = m.run(prob, m.parameters("fast", {"bias_correction": "none"}), RunContext("cpu"))
    assert res.image.shape == y.shape
    assert _psnr(res.image, na3[12]) > _psnr(y, na3[12]) + 4
    kprob = Problem(measurement=torch.zeros(4, 4, dtype=torch.complex64),
                    operator=MultiCoilCartesian(mask=np.ones((4, 4))), image_shape=(4, 4), spacing=(1.0, 1.0), initial=np.zeros((4, 4), np.float32))
    with pytest.raises(InputError):
        m.run(kprob, m.parameters("fast"), RunContext("cpu"))


@pytest.mark.parametrize("name", ["tv", "dtv"])
def test_sure_selects_a_near_optimal_weight(name):
    """Monte-Carlo SURE picks lambda without ground truth: its choice is close to the oracle's on the grid."""
    prob3, na3 = _noisy_problem()
    sl = 20  # a 2D slice keeps the 6 + 12 solves fast
    y, na = prob3.initial[sl], na3[sl]
    prob = Problem(measurement=torch.from_numpy(y.copy()), operator=Identity(y.shape), image_shape=y.shape,
                   spacing=(1.0, 1.0), initial=y, proton=prob3.proton[sl], support=na > 0, noise_sigma=0.08)
    m = get_method(name)
    res = m.run(prob, m.parameters("fast", {"bias_correction": "none"}), RunContext("cpu", seed=0))
    chosen = res.history[0]["lambda_sigma"]
    curve = res.history[0]["sure_curve"]
    assert len(curve) == 6 and res.history[0]["lambda_select"] == "sure"
    assert min(curve, key=lambda c: c[1])[0] == pytest.approx(chosen)  # the minimum of the SURE curve
    # oracle: the true MSE of fixed-lambda runs at the grid values
    mse = {}
    for ls, _ in curve:
        x = m.run(prob, m.parameters("fast", {"lambda_sigma": ls, **NO_BIAS}), RunContext("cpu")).image
        mse[ls] = float(np.mean((x - na) ** 2))
    best = min(mse.values())
    # one random probe on ~600 voxels: SURE is a noisy estimate, hence the 30 % margin (~1 dB)
    assert mse[min(mse, key=lambda k: abs(k - chosen))] < 1.3 * best, (chosen, mse)
    # SURE tracks the true MSE (same ordering at the extremes of the grid)
    lo, hi = min(mse), max(mse)
    sure = dict(curve)
    assert (sure[lo] < sure[hi]) == (mse[lo] < mse[hi])
