"""DIP networks, bias field and data fidelity: shapes, gradients, pinned bias scale, likelihood values."""

import math

import numpy as np
import pytest
import torch
from scipy.special import ive

from SodiumDIPLib.dip import fidelity as fid
from SodiumDIPLib.physics.bias import BiasField, legendre_basis
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.dip.networks import DIPNet, NetConfig, count_parameters, original_dip_config


@pytest.mark.parametrize("shape", [(38, 38, 38), (13, 21), (9, 16, 11)])
def test_odd_sizes_come_back_with_their_shape_and_non_negative(shape):
    torch.manual_seed(0)
    net = DIPNet(len(shape), NetConfig(channels=(4, 8), skip_channels=(2, 2), input_channels=2), extra_channels=1)
    out = net(torch.rand((1, 3) + shape))
    assert tuple(out.shape) == (1, 1) + shape
    assert float(out.detach().min()) >= 0


def test_init_output_starts_at_the_requested_level():
    net = DIPNet(2, NetConfig(channels=(4, 8), skip_channels=(2, 2), input_channels=2))
    net.init_output(0.3)
    out = net(torch.rand(1, 2, 24, 24))
    assert abs(float(out.mean()) - 0.3) < 0.05


def test_original_config_is_the_papers_network():
    cfg = original_dip_config()
    assert cfg.channels == (128,) * 5 and cfg.skip_channels == (4,) * 5 and cfg.input_channels == 32
    assert count_parameters(DIPNet(2, cfg)) > 2_000_000


def test_bad_network_settings_are_input_errors():
    with pytest.raises(InputError):
        NetConfig(channels=(4, 8), skip_channels=(2,)).validate()
    with pytest.raises(InputError):
        NetConfig(pad="circular").validate()
    with pytest.raises(InputError):
        DIPNet(4)


def test_bias_log_mean_is_pinned_and_gradients_reach_every_parameter():
    shape = (10, 12, 9)
    support = np.zeros(shape, bool)
    support[2:9, 2:10, 1:8] = True
    bias = BiasField(shape, support, degree=3, spacing=(2.0, 1.0, 1.0))
    with torch.no_grad():
        bias.coefficients.copy_(torch.randn(bias.coefficients.shape) * 0.5)
    log_b = bias.log_field().detach().numpy()
    assert abs(log_b[support].mean()) < 1e-5  # exact by construction, float32 rounding only
    assert log_b[support].std() > 0.1  # and the field is not trivially flat
    net = DIPNet(3, NetConfig(channels=(4, 8), skip_channels=(2, 2), input_channels=2))
    y = torch.rand(shape)
    x = net(torch.rand((1, 2) + shape))[0, 0]
    loss = fid.negative_log_likelihood(x * bias(), y, 0.1, "chi", n_channels=4)
    loss.backward()
    missing = [n for n, p in list(net.named_parameters()) + list(bias.named_parameters())
               if p.grad is None or not torch.isfinite(p.grad).all() or float(p.grad.abs().sum()) == 0]
    assert not missing


def test_legendre_basis_is_orthonormal_on_the_support():
    support = np.ones((16, 16), bool)
    b = legendre_basis((16, 16), support, degree=2)
    flat = b.reshape(b.shape[0], -1)
    gram = flat @ flat.T / flat.shape[1]
    assert b.shape[0] == 5
    assert np.allclose(gram, np.eye(5), atol=1e-4)


def test_rician_and_chi_likelihoods_match_scipy():
    # -log p(y|x) up to x-independent terms: compare differences between two x values with scipy's Bessel
    sigma, y = 0.7, torch.tensor([2.0], dtype=torch.float64)
    for L in (1, 8, 32):
        def exact(x):
            z = x * y.item() / sigma ** 2
            v = L - 1
            log_i = math.log(ive(v, z)) + z
            return x * x / (2 * sigma ** 2) + v * math.log(x) - log_i
        x1, x2 = 1.5, 2.5
        ours = [float(fid.negative_log_likelihood(torch.tensor([x], dtype=torch.float64), y, sigma, "chi", L))
                for x in (x1, x2)]
        assert abs((ours[1] - ours[0]) - (exact(x2) - exact(x1))) < 2e-2


def test_gaussian_fidelity_is_half_squared_error_in_noise_units_and_complex_works():
    pred = torch.tensor([1.0, 2.0])
    y = torch.tensor([0.0, 2.0])
    assert float(fid.negative_log_likelihood(pred, y, 0.5, "gaussian")) == pytest.approx(0.5 * 0.5 * 4)
    c = torch.tensor([1 + 1j, 0j])
    assert float(fid.negative_log_likelihood(c, torch.zeros(2, dtype=torch.complex64), 1.0, "gaussian")) == \
        pytest.approx(0.5)


def test_noise_floor_fidelity_does_not_fit_the_floor():
    # Pure noise floor (x = 0) of an 8-channel sum of squares: least squares wants x ~ floor, chi wants x ~ 0.
    g = torch.Generator().manual_seed(0)
    sigma, L = 1.0, 8
    y = torch.sqrt((torch.randn(2 * L, 4000, generator=g) ** 2).sum(0)) * sigma
    xs = torch.linspace(0.0, 6.0, 61)
    chi = [float(fid.negative_log_likelihood(torch.full_like(y, float(x)), y, sigma, "chi", L)) for x in xs]
    ls = [float(fid.negative_log_likelihood(torch.full_like(y, float(x)), y, sigma, "gaussian")) for x in xs]
    assert xs[int(np.argmin(chi))] < 1.0
    assert xs[int(np.argmin(ls))] > 3.0


def test_channel_estimate_from_background_floor():
    rng = np.random.default_rng(0)
    L, sigma = 16, 2.0
    shape = (40, 40)
    noise = rng.standard_normal((2 * L,) + shape) * sigma
    signal = np.zeros(shape)
    signal[12:28, 12:28] = 60.0
    noise[0] += signal
    y = np.sqrt((noise ** 2).sum(0))
    support = signal > 0
    est = fid.estimate_channels(y, support, sigma)
    assert abs(est - L) <= 2


def test_fidelity_rejects_bad_sigma_and_kind():
    with pytest.raises(InputError):
        fid.negative_log_likelihood(torch.ones(2), torch.ones(2), 0.0)
    with pytest.raises(InputError):
        fid.resolve_kind("poisson", True, True)


def test_bias_start_field_is_rescaled_to_mean_log_zero_and_refined():
    shape = (6, 8, 10)
    support = np.zeros(shape, bool)
    support[1:5, 1:7, 2:9] = True
    bias = BiasField(shape, support, degree=2)
    field = np.exp(np.linspace(-0.3, 0.5, int(np.prod(shape))).reshape(shape)).astype(np.float32)
    factor = bias.set_start(field)
    b = bias().detach().numpy()
    assert abs(np.log(b)[support].mean()) < 1e-5
    np.testing.assert_allclose(b * factor, field, rtol=1e-5)  # b * x is kept when x is multiplied by factor
    with torch.no_grad():
        bias.coefficients.add_(0.1)
    assert not np.allclose(bias().detach().numpy(), b) and abs(bias.log_field()[torch.from_numpy(support)].mean()) < 1e-5


def test_tissue_classes_separate_a_proton_intensity_shared_by_two_sodium_levels():
    """One proton intensity, two sodium levels (the phantom's dark CSF and dark skull): with sodium classes the
    regression finds the smooth bias; from the proton intensity alone it cannot."""
    from SodiumDIPLib.physics.bias import proton_regression_init

    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    support = zz ** 2 + yy ** 2 + xx ** 2 < 0.9
    tissue = rng.integers(0, 3, size=(6, 6, 6)).repeat(4, 0).repeat(4, 1).repeat(4, 2)
    proton = np.choose(tissue, [0.2, 0.2, 1.0])  # classes 0 and 1 look alike in the proton image
    sodium = np.choose(tissue, [20.0, 140.0, 40.0])
    log_bias = 0.3 * xx + 0.2 * yy * zz
    log_bias -= log_bias[support].mean()
    image = sodium * np.exp(log_bias) * (1 + 0.02 * rng.standard_normal(shape))
    basis = legendre_basis(shape, support, degree=3)
    corr = {}
    for classes in (1, 4):
        c = proton_regression_init(image, proton, support, basis, classes=classes, smoothing_vox=0.0)
        est = np.tensordot(c, basis, 1)
        corr[classes] = np.corrcoef(est[support], log_bias[support])[0, 1]
    assert corr[4] > 0.9 and corr[4] > corr[1] + 0.2, corr
    with pytest.raises(InputError):
        proton_regression_init(image, proton, support, basis, classes=0)
