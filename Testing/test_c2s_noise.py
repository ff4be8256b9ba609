"""c2s's noise level of magnitude images (background chi statistics) and its test-time augmentation."""

import numpy as np
import pytest
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.learned.gdsm import apply_denoiser
from SodiumDIPLib.learned.network import Denoiser, DenoiserConfig
from SodiumDIPLib.data.noise import background_noise, chi_mean_std_ratio


def _magnitude_ball(sigma, channels, shape=(40, 40, 40), seed=0, smooth_background=0.0):
    """A bright ball in a noise-only background, combined root-sum-of-squares over ``channels``."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    r = np.sqrt(sum((g - s / 2) ** 2 for g, s in zip(grid, shape)))
    ball = r < shape[0] / 4
    signal = np.where(ball, 1.0, 0.0) + smooth_background * np.exp(-((grid[0] - 5) / 8) ** 2)
    parts = [signal / np.sqrt(channels) + sigma * rng.standard_normal(shape) for _ in range(channels)]
    parts += [sigma * rng.standard_normal(shape) for _ in range(channels)]
    return np.sqrt(sum(p * p for p in parts)), ball


def test_chi_ratio_matches_known_values():
    # Rayleigh: mean sqrt(pi/2), std sqrt(2 - pi/2)
    assert chi_mean_std_ratio(1) == pytest.approx(np.sqrt(np.pi / 2) / np.sqrt(2 - np.pi / 2))
    assert chi_mean_std_ratio(4) > chi_mean_std_ratio(2) > chi_mean_std_ratio(1)


@pytest.mark.parametrize("channels", [1, 4])
def test_background_noise_recovers_sigma_and_channels(channels):
    # the whole-image wavelet estimate reads these backgrounds ~30 % low; the chi fit is unbiased (5 % allows
    # the spread of ~40 000 background voxels and the ball's blurred edge)
    image, ball = _magnitude_ball(0.05, channels)
    found = background_noise(image, ball)
    assert found is not None and found.n_channels == channels
    assert found.sigma == pytest.approx(0.05, rel=0.05)


def test_background_with_signal_is_not_used():
    # a background holding smooth signal is not pure noise: no estimate (the caller keeps its own)
    image, ball = _magnitude_ball(0.05, 1, smooth_background=1.0)
    assert background_noise(image, ball) is None


def test_augmented_inference_is_exact_for_a_transform_equivariant_map():
    # a freshly built denoiser is D = c_skip x (zero output layer): every in-plane transform and its inverse
    # must give back the same image, whatever the augmentation
    model = Denoiser(DenoiserConfig(context=3, proton=False, width=8))
    noisy = np.random.default_rng(0).standard_normal((10, 12, 14)).astype(np.float32)
    outs = [apply_denoiser(model, noisy, 0.1, augment=a) for a in (1, 2, 4, 8)]
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], atol=1e-6)
    d = model.cfg.signal_std
    np.testing.assert_allclose(outs[0], noisy * d * d / (0.01 + d * d), atol=1e-6)
    with pytest.raises(InputError):
        apply_denoiser(model, noisy, 0.1, augment=3)


def test_c2s_uses_the_background_noise_level():
    from SodiumDIPLib.methods.c2s import PRESETS, noise_of
    from SodiumDIPLib.physics.base import Identity
    from SodiumDIPLib.problem import Problem

    image, ball = _magnitude_ball(0.05, 1, shape=(32, 32, 32))
    problem = Problem(measurement=torch.from_numpy(image.astype(np.float32)), operator=Identity(image.shape),
                      image_shape=image.shape, spacing=(1.0, 1.0, 1.0), initial=image, support=ball, noise_sigma=0.03, magnitude=True)
    sigma, channels = noise_of(problem, dict(PRESETS["fast"]), image.astype(np.float32))
    assert sigma == pytest.approx(0.05, rel=0.06) and channels == 1
    sigma, _ = noise_of(problem, dict(PRESETS["fast"], noise_estimate="problem"), image.astype(np.float32))
    assert sigma == 0.03
