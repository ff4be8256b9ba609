"""Metric sanity: known answers, regions, CRC and leakage definitions, bad input, LPIPS loading path."""

import math
import os

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from SodiumDIPLib.metrics import lpips as lp
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.metrics.quality import (background_sigma, compute_metrics, format_metrics_table, fsim, laplacian_focus,
                                  lesion_crc, mse, nrmse, proton_leakage, psnr, ssim, tissue_snr)
from SodiumDIPLib.data.phantom import make_phantom


@pytest.fixture(scope="module")
def case():
    return make_phantom("head", seed=0, shape=(32, 32, 32))


@pytest.fixture(scope="module")
def slice_case():
    return make_phantom("head", seed=0, shape=(48, 48))


def test_identical_images(case, slice_case):
    for c in (case, slice_case):
        t, brain = c.sodium_truth.array, c.brain.array > 0
        assert psnr(t, t) == math.inf and psnr(t, t, brain) == math.inf
        assert ssim(t, t) == pytest.approx(1.0, abs=1e-9)
        assert ssim(t, t, brain) == pytest.approx(1.0, abs=1e-9)
        assert fsim(t, t) == pytest.approx(1.0, abs=1e-9)
        assert mse(t, t) == 0 and nrmse(t, t, brain) == 0
    m = compute_metrics(slice_case.sodium_truth.array, slice_case.sodium_truth.array, mask=slice_case.brain.array)
    assert m["psnr_global"] == math.inf and m["ssim_mask"] == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_noise_gives_expected_psnr(case, sigma):
    ref = case.sodium_truth.array.astype(np.float64)
    brain = case.brain.array > 0
    noisy = ref + np.random.default_rng(1).normal(0, sigma, ref.shape)
    assert psnr(noisy, ref) == pytest.approx(20 * math.log10(ref.max() / sigma), abs=0.2)
    assert psnr(noisy, ref, brain) == pytest.approx(20 * math.log10(ref[brain].max() / sigma), abs=0.2)
    assert mse(noisy, ref) == pytest.approx(sigma ** 2, rel=0.05)


def test_quality_metrics_fall_with_noise(slice_case):
    ref = slice_case.sodium_truth.array.astype(np.float64)
    rng = np.random.default_rng(2)
    low, high = ref + rng.normal(0, 2, ref.shape), ref + rng.normal(0, 10, ref.shape)
    for fn in (psnr, ssim, fsim):
        assert fn(low, ref) > fn(high, ref), fn.__name__
    assert 0 < fsim(high, ref) < fsim(low, ref) < 1
    assert nrmse(high, ref) > nrmse(low, ref) > 0
    blurred = ndi.gaussian_filter(ref, 1.5)
    assert laplacian_focus(blurred) < laplacian_focus(ref)


def test_proton_leakage_definition(case):
    t, brain = case.sodium_truth.array.astype(np.float64), case.brain.array > 0
    pattern, c = case.proton_only.array.astype(float), case.proton_only_contrast
    assert proton_leakage(t, t, pattern, c, brain) == pytest.approx(0.0, abs=1e-9)
    full = t * (1 - c * pattern)
    assert proton_leakage(full, t, pattern, c, brain) == pytest.approx(1.0, abs=1e-9)
    half = t * (1 - 0.5 * c * pattern)
    assert proton_leakage(half, t, pattern, c, brain) == pytest.approx(0.5, abs=1e-9)
    assert proton_leakage(full, t, pattern, c, brain, neighbourhood=None) == pytest.approx(1.0, abs=1e-9)
    # a scale error or a smooth uncorrected bias is not leakage (the fit is local, with truth as nuisance)
    assert proton_leakage(0.9 * t, t, pattern, c, brain) == pytest.approx(0.0, abs=1e-9)
    biased = t * case.bias_field.array
    assert abs(proton_leakage(biased, t, pattern, c, brain)) < 0.01
    assert proton_leakage(biased * (1 - c * pattern), t, pattern, c, brain) == pytest.approx(1.0, abs=0.05)
    noisy = t + np.random.default_rng(3).normal(0, 2.0, t.shape)
    assert abs(proton_leakage(noisy, t, pattern, c, brain)) < 0.1
    # sign: the structure appearing brighter instead of darker reads negative
    assert proton_leakage(t * (1 + c * pattern), t, pattern, c, brain) == pytest.approx(-1.0, abs=1e-9)


def test_lesion_crc_definition(case):
    t, brain, lesion = case.sodium_truth.array, case.brain.array > 0, case.lesion.array > 0
    assert lesion_crc(t, t, lesion, brain) == pytest.approx(1.0)
    no_lesion = make_phantom("head", seed=0, shape=(32, 32, 32), lesion=False).sodium_truth.array
    assert abs(lesion_crc(no_lesion, t, lesion, brain)) < 0.05
    half = 0.5 * (t + no_lesion)
    assert lesion_crc(half, t, lesion, brain) == pytest.approx(0.5, abs=0.03)
    assert lesion_crc(2.0 * t, t, lesion, brain) == pytest.approx(1.0)  # scale-free


def test_background_sigma_and_tissue_snr():
    rng = np.random.default_rng(4)
    sigma = 2.5
    shape = (24, 40, 40)
    signal = np.zeros(shape)
    signal[6:18, 10:30, 10:30] = 50.0
    mag = np.abs(signal + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)))
    tissue = signal > 0
    background = ~ndi.binary_dilation(tissue, iterations=2)
    assert background_sigma(mag, background) == pytest.approx(sigma, rel=0.03)
    assert tissue_snr(mag, tissue, background) == pytest.approx(50.0 / sigma, rel=0.05)
    # sum of squares over 4 channels: the estimator divides by 2 n
    sos = np.sqrt(sum(np.abs(sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))) ** 2
                      for _ in range(4)))
    assert background_sigma(sos, background, n_channels=4) == pytest.approx(sigma, rel=0.03)
    m = compute_metrics(mag, mask=tissue, background=background)
    assert m["tissue_snr_mask"] == pytest.approx(50.0 / sigma, rel=0.05)
    assert not any(k.startswith(("psnr", "ssim", "lesion", "proton", "lpips")) for k in m)  # no reference


def test_compute_metrics_keys_regions_and_table(case, tmp_path):
    c = case
    m = compute_metrics(c.sodium.array / c.bias_field.array, c.sodium_truth.array, mask=c.brain.array,
                        lesion=c.lesion.array, proton_only=c.proton_only.array,
                        proton_only_contrast=c.proton_only_contrast, background="auto",
                        lpips_weights=tmp_path / "no.pth")
    for key in ("psnr_global", "psnr_mask", "ssim_global", "ssim_mask", "mse_global", "mse_mask", "nrmse_global",
                "nrmse_mask", "fsim_global", "fsim_mask", "laplacian_focus_global", "laplacian_focus_mask",
                "background_sigma", "tissue_snr_mask", "lesion_crc", "proton_leakage", "lpips_global"):
        assert key in m, key
    assert m["lpips_global"].startswith("unavailable:") and "not found" in m["lpips_global"]
    assert 0.8 < m["lesion_crc"] < 1.2 and abs(m["proton_leakage"]) < 0.1  # the noisy input keeps both
    assert m["background_sigma"] == pytest.approx(c.noise_sigma, rel=0.1)
    assert m["psnr_mask"] != m["psnr_global"]
    table = format_metrics_table(m)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "region", "value"]
    assert any(ln.split()[:2] == ["psnr", "whole"] for ln in lines)
    assert any(ln.startswith("psnr") and "inside mask" in ln for ln in lines)
    assert "unavailable:" in table
    assert "inf" in format_metrics_table({"psnr_global": math.inf})


def test_bad_input_raises_input_error(case):
    t = case.sodium_truth.array
    with pytest.raises(InputError, match="shape"):
        psnr(t[:-1], t)
    with pytest.raises(InputError, match="empty"):
        ssim(t, t, np.zeros(t.shape, bool))
    with pytest.raises(InputError, match="mask shape"):
        mse(t, t, np.ones((3, 3, 3), bool))
    bad = t.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        compute_metrics(bad, t)
    with pytest.raises(InputError, match="2D or 3D"):
        psnr(t[None], t[None])
    with pytest.raises(InputError, match="contrast"):
        proton_leakage(t, t, case.proton_only.array, 0.0)
    with pytest.raises(InputError, match="empty"):
        lesion_crc(t, t, np.zeros(t.shape, bool))
    with pytest.raises(InputError, match="background"):
        background_sigma(t, np.zeros(t.shape, bool))


# ----------------------------------------------------------------------------------------------- LPIPS
def _random_lpips_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, shape in lp.CONV_SHAPES.items():
        sd[f"features.{i}.weight"] = torch.randn(shape, generator=g) * 0.05
        sd[f"features.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    for k, ch in enumerate(lp.CHANNELS):
        sd[f"lin{k}.model.1.weight"] = torch.rand((1, ch, 1, 1), generator=g)
    return sd


def test_lpips_loads_local_weights_and_behaves_like_a_distance(tmp_path, monkeypatch):
    sd = _random_lpips_state()
    one = tmp_path / "lpips_alex.pth"
    torch.save(sd, one)
    rng = np.random.default_rng(5)
    x = rng.random((2, 32, 32)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    kw = dict(data_range=1.0, min_size=32)
    assert lp.lpips_distance(x, x, one, **kw) == 0.0
    d = lp.lpips_distance(x, y, one, **kw)
    assert d > 0
    assert lp.lpips_distance(y, x, one, **kw) == pytest.approx(d, rel=1e-5)
    assert lp.lpips_distance(x, np.clip(x + 0.05 * (y - x), 0, 1), one, **kw) < d
    # two files (torchvision backbone + lpips lin layers), given through the environment variable
    backbone, lin = tmp_path / "alexnet.pth", tmp_path / "alex_lin.pth"
    torch.save({**{k: v for k, v in sd.items() if k.startswith("features")},
                "classifier.1.weight": torch.zeros(4, 4)}, backbone)
    torch.save({k: v for k, v in sd.items() if k.startswith("lin")}, lin)
    monkeypatch.setenv(lp.ENV_VAR, f"{backbone}{os.pathsep}{lin}")
    assert lp.lpips_distance(x, y, None, **kw) == pytest.approx(d, rel=1e-5)
    # compute_metrics reports the number
    ref2d = x[0] + 0.5
    value = compute_metrics(np.clip(ref2d + 0.1, 0, None), ref2d, lpips_weights=one)["lpips_global"]
    assert isinstance(value, float) and value > 0


def test_lpips_unavailable_reasons(tmp_path, monkeypatch):
    x = np.random.default_rng(6).random((16, 16)).astype(np.float32)
    monkeypatch.delenv(lp.ENV_VAR, raising=False)
    assert lp.lpips_or_reason(x, x).startswith("unavailable: no LPIPS weights")
    assert "not found" in lp.lpips_or_reason(x, x, tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    assert lp.lpips_or_reason(x, x, garbage).startswith("unavailable: cannot read")
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in _random_lpips_state().items() if not k.startswith("lin4")}, partial)
    assert "lin4" in lp.lpips_or_reason(x, x, partial)
    wrong = tmp_path / "wrong.pth"
    sd = _random_lpips_state()
    sd["lin0.model.1.weight"] = torch.rand(1, 32, 1, 1)
    torch.save(sd, wrong)
    assert "wrong shapes" in lp.lpips_or_reason(x, x, wrong)
    with pytest.raises(lp.LPIPSUnavailable):
        lp.load_lpips(tmp_path / "missing.pth")
