"""`c2s` (Corruption2Self): the GDSM target, weights files, cancellation, and the method on a small phantom."""

import math

import numpy as np
import pytest
import torch

from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.learned.gdsm import TrainingVolume, TrainSettings, apply_denoiser, gdsm_loss, train_gdsm
from SodiumDIPLib.learned.network import (Denoiser, DenoiserConfig, load_model, noise_floor_free, save_model)
from SodiumDIPLib.methods import Problem, RunContext, get_method
from SodiumDIPLib.physics.base import Identity


def _gaussian_case(n=96, mu=0.5, s=0.1, sigma=0.1, seed=0):
    """Clean voxels i.i.d. N(mu, s^2), Gaussian noise sigma: E[x | y] = mu + s^2/(s^2+sigma^2) (y - mu) exactly."""
    rng = np.random.default_rng(seed)
    clean = (mu + s * rng.standard_normal((n, n))).astype(np.float32)
    noisy = (clean + sigma * rng.standard_normal((n, n))).astype(np.float32)
    return clean, noisy


def test_gdsm_target_is_unbiased_on_gaussian_data():
    """Trained on noisy data only, the network's output at the data's own level is the posterior mean.

    With i.i.d. Gaussian clean voxels the posterior mean is the linear shrinkage mu + w (y - mu), w = s^2 / (s^2 +
    sigma^2) = 0.5 here. Regressing the output on y gives the slope the network learned: GDSM must find 0.5;
    a network that copies its input has slope 1, and one trained to predict y from the further-corrupted x_t without
    GDSM's correction (Noisier2Noise's raw target) has slope (s^2+sigma^2)/(s^2+sigma_t^2) = 0.67..0.995 over the
    sampled tau. Tolerance 0.05 on the slope: the regression over 9216 voxels is exact to ~0.01, and the small
    network's training error after 800 steps is ~0.02 (measured 0.519; 0.578 after 400 steps: the slope converges
    to the Bayes value with training, from the preconditioning's start c_skip ~ 0.96). Mean bias below 0.1 sigma
    (the noise's own mean over 9216 voxels is ~0.001); MSE within 20 % of the Bayes risk 0.005 (input: 0.01).
    """
    torch.manual_seed(0)
    mu, s, sigma = 0.5, 0.1, 0.1
    clean, noisy = _gaussian_case(mu=mu, s=s, sigma=sigma)
    cfg = DenoiserConfig(context=1, proton=False, width=8)
    settings = TrainSettings(steps=800, batch=16, patch=32, lr=3e-3, tau_max=1.0, refine_level=0.0, eval_every=100)
    result = train_gdsm([TrainingVolume(noisy, sigma)], cfg, settings, seed=0)
    out = apply_denoiser(result.model, noisy, sigma, output_level=0.0)
    slope = np.polyfit(noisy.ravel() - mu, out.ravel() - mu, 1)[0]
    assert abs(slope - s * s / (s * s + sigma * sigma)) < 0.05, slope
    assert abs(float(out.mean()) - float(clean.mean())) < 0.1 * sigma
    assert float(np.mean((out - clean) ** 2)) < 1.2 * s * s * sigma * sigma / (s * s + sigma * sigma)


def test_gdsm_loss_minimiser_is_the_posterior_mean():
    """The loss itself (no training): averaged over noise, the exact posterior mean scores lower than the noisy
    input and than an over-smoothed (constant) estimate -- the unbiasedness the training relies on."""
    mu, s, sigma, tau = 0.5, 0.1, 0.1, 0.1
    clean, noisy = _gaussian_case(n=64, mu=mu, s=s, sigma=sigma)
    y = torch.from_numpy(noisy)[None, None]
    g = torch.Generator().manual_seed(0)
    sigma_t = math.sqrt(sigma ** 2 + tau ** 2)
    w = s * s / (s * s + sigma_t ** 2)

    class Fixed(torch.nn.Module):
        cfg = DenoiserConfig(context=1, proton=False)

        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x_t, s_in, s_out, proton=None):
            return self.fn(x_t[:, 0])

    losses = {name: 0.0 for name in ("posterior", "identity", "constant")}
    fns = {"posterior": lambda x: mu + w * (x - mu), "identity": lambda x: x, "constant": lambda x: torch.full_like(x, mu)}
    for _ in range(200):
        noise = torch.randn(y.shape, generator=g)
        for name, fn in fns.items():
            losses[name] += float(gdsm_loss(Fixed(fn), y, None, torch.tensor([sigma]), torch.tensor([tau]), noise,
                                            torch.tensor([0.0])))
    assert losses["posterior"] < losses["identity"] and losses["posterior"] < losses["constant"]


def test_weights_round_trip_and_refuse_other_files(tmp_path):
    model = Denoiser(DenoiserConfig(context=3, proton=True, width=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape))
    path = save_model(model, tmp_path / "m.pt", meta={"output_level": 0.1})
    loaded, meta = load_model(path)
    assert meta["output_level"] == 0.1 and loaded.cfg == model.cfg
    x = torch.rand(2, 3, 20, 20)
    s = torch.tensor([0.05, 0.1])
    p = torch.rand(2, 20, 20)
    assert torch.equal(model.eval()(x, s, 0 * s, p), loaded(x, s, 0 * s, p))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a SodiumDIP denoiser"):
        load_model(tmp_path / "bad.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a SodiumDIP denoiser"):
        load_model(tmp_path / "other.pt")


def test_cancelled_training_returns_the_best_model_so_far():
    clean, noisy = _gaussian_case(n=48)
    calls = {"n": 0}

    def check():
        calls["n"] += 1
        if calls["n"] >= 30:
            raise Cancelled()

    settings = TrainSettings(steps=200, batch=8, patch=24, eval_every=10, refine_level=0.0)
    result = train_gdsm([TrainingVolume(noisy, 0.1)], DenoiserConfig(context=1, proton=False, width=8), settings,
                        check=check)
    assert result.cancelled and result.steps_done == 30
    assert result.best_step in (0, 10, 20, 30)
    # the returned weights are the best ones: re-evaluating the validation loss gives the recorded best
    vals = [h["val_loss"] for h in result.history]
    assert result.best_loss == pytest.approx(min([result.best_loss] + vals))
    from SodiumDIPLib.learned.gdsm import SliceSampler, _evaluate, _validation_batch

    sampler = SliceSampler([TrainingVolume(noisy, 0.1)], 1, settings.patch, "cpu")
    val = _validation_batch(sampler, settings, torch.Generator().manual_seed(1))
    assert _evaluate(result.model, val, 0.0) == pytest.approx(result.best_loss, rel=1e-5)


def test_noise_floor_removal_inverts_the_expected_magnitude():
    from SodiumDIPLib.dip.fidelity import expected_magnitude

    x = torch.linspace(0.05, 2.0, 50)
    for channels in (1, 8):
        m = expected_magnitude(x, 0.1, channels)
        assert torch.allclose(noise_floor_free(m, 0.1, channels), x, atol=1e-5)


def _phantom_problem(shape=(24, 24, 24), seed=0):
    from SodiumDIPLib.apps.benchmark import phantom_case

    case, problem, scale = phantom_case(shape, seed)
    return case, problem, scale


def _psnr(x, ref, mask):
    return 10 * math.log10(ref[mask].max() ** 2 / np.mean((x[mask] - ref[mask]) ** 2))


def test_c2s_method_denoises_a_phantom_and_reloads_its_model(tmp_path):
    case, problem, scale = _phantom_problem((32, 32, 32))
    spec = get_method("c2s")
    assert set(spec.presets) == {"fast", "balanced", "quality"} and not spec.supports_kspace
    truth, brain = case.sodium_truth.array * case.bias_field.array, case.brain.array > 0
    params = spec.parameters("fast", {"train_steps": 150, "bias_correction": "none",
                                      "model_out": str(tmp_path / "c2s.pt")})
    result = spec.run(problem, params, RunContext(seed=0))
    assert result.stop_rule == "best validation" and result.iterations == 150
    # measured +1.45 dB after 150 steps on this phantom (PSNR against truth x bias, the image the scan sees)
    gain = _psnr(result.image * scale, truth, brain) - _psnr(problem.initial * scale, truth, brain)
    assert gain > 0.8, gain
    # the saved model, applied without training, gives the same image
    again = spec.run(problem, spec.parameters("fast", {"train_steps": 0, "bias_correction": "none",
                                                       "model_in": str(tmp_path / "c2s.pt")}), RunContext(seed=0))
    assert again.stop_rule == "pretrained"
    np.testing.assert_allclose(again.image, result.image, atol=1e-5)


def test_c2s_cancelled_run_returns_an_image():
    case, problem, scale = _phantom_problem((16, 16, 16))
    spec = get_method("c2s")
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 20

    result = spec.run(problem, spec.parameters("fast", {"bias_correction": "none"}),
                      RunContext(seed=0, should_cancel=cancel))
    assert result.stop_rule == "cancelled" and 0 < result.iterations < 300
    assert np.isfinite(result.image).all() and result.image.shape == problem.image_shape


def test_c2s_rejects_bad_input(tmp_path):
    spec = get_method("c2s")
    y = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    prob = Problem(measurement=torch.from_numpy(y), operator=Identity(y.shape), image_shape=y.shape,
                   spacing=(1.0,) * 3, initial=y, noise_sigma=0.1)
    with pytest.raises(InputError, match="model_in"):
        spec.run(prob, spec.parameters("fast", {"train_steps": 0}), RunContext())
    with pytest.raises(InputError, match="does not exist"):
        spec.run(prob, spec.parameters("fast", {"model_in": str(tmp_path / "none.pt")}), RunContext())
    with pytest.raises(InputError, match="noise_model"):
        spec.run(prob, spec.parameters("fast", {"noise_model": "poisson"}), RunContext())
    from SodiumDIPLib.physics.cartesian import MultiCoilCartesian

    kprob = Problem(measurement=torch.zeros((1, 16, 16, 16), dtype=torch.complex64),
                    operator=MultiCoilCartesian(image_shape=(16, 16, 16)), image_shape=(16, 16, 16),
                    spacing=(1.0,) * 3, initial=y, magnitude=False)
    with pytest.raises(InputError, match="pnp"):
        spec.run(kprob, spec.parameters("fast"), RunContext())
