"""Coil combination: Walsh vs sum-of-squares on real multi-channel data, sensitivity recovery, bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch

from SodiumDIPLib.physics.coils import (centre_snr, combination_weights, combine_coils, estimate_sensitivities,
                                noise_covariance_from_background, sum_of_squares, walsh_combine)
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.cartesian import ifftc_np
from SodiumDIPLib.physics.simulate import coil_sensitivities
from SodiumDIPLib.data.support import head_mask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multicoil"


@pytest.fixture(scope="module", params=["phantom_16ch_128", "phantom_32ch_64"])
def real_coils(request):
    k = np.load(DATA / f"{request.param}.npz")["kspace"]
    return request.param, ifftc_np(k, 2)


def test_walsh_beats_sos_on_real_data(real_coils):
    """Issue 4 floor: adaptive combine has higher SNR than sum-of-squares in the object's centre and the two
    combined images agree in shape (normalised correlation >= 0.95)."""
    name, im = real_coils
    sos = sum_of_squares(im)
    support = head_mask(sos)
    psi = noise_covariance_from_background(im, support)  # noise from the region outside the object
    image, sens = walsh_combine(im, kernel=5, noise_covariance=psi)
    snr_walsh = centre_snr(im, image, combination_weights(sens, psi), support, noise_covariance=psi)
    snr_sos = centre_snr(im, sos, im / sos, support, noise_covariance=psi)
    assert snr_walsh > 1.1 * snr_sos, (name, snr_walsh, snr_sos)
    ncc = np.corrcoef(np.abs(image)[support], sos[support])[0, 1]
    assert ncc >= 0.95, (name, ncc)
    # without the noise covariance Walsh weights are S / |S|^2: the same SNR as SoS within a few percent
    plain, plain_sens = walsh_combine(im, kernel=5)
    snr_plain = centre_snr(im, plain, combination_weights(plain_sens), support, noise_covariance=psi)
    assert abs(snr_plain / snr_sos - 1) < 0.05, (snr_plain, snr_sos)
    assert np.corrcoef(np.abs(plain).ravel(), sos.ravel())[0, 1] >= 0.95
    # the phase reference works: the combined phase follows the object's phase as seen by the first principal
    # component virtual coil (no per-voxel random eigenvector phase), within 0.05 rad (median) inside
    flat = im.reshape(im.shape[0], -1)
    u = np.linalg.eigh(flat @ flat.conj().T)[1][:, -1]
    virtual = np.tensordot(u.conj(), im, axes=(0, 0))
    assert np.median(np.abs(np.angle(plain * virtual.conj()))[support]) < 0.05


def test_combine_coils_reports_method(real_coils):
    _, im = real_coils
    _, used, sens = combine_coils(im, "walsh")
    assert used == "walsh+prewhitened" and sens.shape == im.shape
    mag, used, sens = combine_coils(im, "sos")
    assert used == "sos" and sens is None and np.allclose(mag, sum_of_squares(im))
    assert combine_coils(im[:1], "walsh")[1] == "single-coil"


@pytest.mark.parametrize("shape", [(40, 40), (16, 20, 20)])
def test_walsh_recovers_simulated_sensitivities(shape):
    rng = np.random.default_rng(1)
    grids = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for n in shape], indexing="ij")
    obj = (sum(g ** 2 for g in grids) < 0.7).astype(np.float32) * (1 + 0.3 * grids[-1])
    true = coil_sensitivities(shape, 6)
    coils = true * obj + 0.01 * (rng.standard_normal(true.shape) + 1j * rng.standard_normal(true.shape))
    sens = estimate_sensitivities(coils, kernel=5)
    inside = obj > 0
    # unit norm, and parallel to the true maps up to a per-voxel phase: |<S_est, S_true>| ~ 1 inside
    assert np.allclose(np.sqrt((np.abs(sens) ** 2).sum(0)), 1, atol=1e-4)
    overlap = np.abs((sens.conj() * true).sum(0))[inside]
    assert np.median(overlap) > 0.99
    image, _ = walsh_combine(coils, kernel=5)
    err = np.abs(np.abs(image) - obj)[inside].mean() / obj[inside].mean()
    assert err < 0.03


def test_torch_in_torch_out():
    coils = torch.as_tensor(coil_sensitivities((12, 12), 3) * 2.0)
    img, sens = walsh_combine(coils, kernel=3)
    assert isinstance(img, torch.Tensor) and isinstance(sens, torch.Tensor)
    assert torch.allclose(img.abs(), torch.full((12, 12), 2.0), atol=0.02)
    assert isinstance(sum_of_squares(coils), torch.Tensor)


def test_bad_input():
    with pytest.raises(InputError, match="coils"):
        sum_of_squares(np.zeros((8, 8)))
    bad = np.ones((2, 8, 8), np.complex64)
    bad[0, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        walsh_combine(bad)
    with pytest.raises(InputError, match="kernel"):
        estimate_sensitivities(np.ones((2, 8, 8)), kernel=0)
    with pytest.raises(InputError, match="coil combination"):
        combine_coils(np.ones((2, 8, 8)), "magic")
    with pytest.raises(InputError, match="covariance"):
        walsh_combine(np.ones((2, 8, 8)), noise_covariance=np.eye(3))
