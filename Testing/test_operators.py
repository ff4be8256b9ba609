"""One list of operators through one set of generic properties: adjointness, linearity, the norm estimate, a
device round trip, and autograd (the gradient of 0.5 |A x - y|^2 is Re A^H (A x - y)). Every operator the
engine builds (and every new one) belongs in OPERATORS."""

import numpy as np
import pytest
import torch

from SodiumDIPLib.physics.density import DensityWeighted
from SodiumDIPLib.physics.base import Compose, Diag, Identity, RealImages
from SodiumDIPLib.physics.cartesian import CentredFFT, CoilSensitivities, MultiCoilCartesian, fftc
from SodiumDIPLib.physics.differences import DirectionalProjection, FiniteDifference
from SodiumDIPLib.physics.radial import RadialNUFFT, radial_trajectory
from SodiumDIPLib.physics.sampling import cartesian_mask


def crandn(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex128)


def unit_field(shape, seed=3):
    xi = torch.as_tensor(np.random.default_rng(seed).standard_normal((len(shape),) + shape))
    return xi / torch.sqrt((xi * xi).sum(0)).clamp_min(1.0)


def _cartesian(shape):
    return MultiCoilCartesian(crandn((3,) + shape), cartesian_mask(shape, 2, seed=1))


def _radial(shape):
    return RadialNUFFT(radial_trajectory(shape, n_spokes=24), shape, crandn((2,) + shape))


# name -> (factory, complex measurement?, double-precision tolerance of the adjoint test)
OPERATORS = {
    "identity": (lambda: Identity((5, 6, 7)), False, 1e-12),
    "diag-real (receive bias)": (lambda: Diag(torch.rand(5, 6, 7, dtype=torch.float64) + 0.5), False, 1e-12),
    "diag-complex": (lambda: Diag(torch.as_tensor(crandn((4, 5)))), True, 1e-12),
    "finite-difference 3D anisotropic": (lambda: FiniteDifference((5, 6, 7), (2.0, 1.0, 3.5)), False, 1e-12),
    "finite-difference 2D": (lambda: FiniteDifference((8, 9)), False, 1e-12),
    "P_xi": (lambda: DirectionalProjection(unit_field((5, 6, 7)), 0.9), False, 1e-12),
    "dTV analysis P_xi D": (lambda: DirectionalProjection(unit_field((6, 7)), 0.95) @ FiniteDifference((6, 7)),
                            False, 1e-12),
    "coil sensitivities S": (lambda: CoilSensitivities(torch.as_tensor(crandn((3, 5, 6)))), True, 1e-12),
    "centred FFT F": (lambda: CentredFFT((2, 6, 8), 2), True, 1e-12),
    "Cartesian SENSE P F S 2D": (lambda: _cartesian((12, 10)), True, 1e-12),
    "Cartesian SENSE P F S 3D": (lambda: _cartesian((6, 8, 10)), True, 1e-12),
    "radial NUFFT 2D": (lambda: _radial((16, 14)), True, 1e-10),
    "radial NUFFT 3D": (lambda: _radial((8, 10, 8)), True, 1e-10),
    "density-weighted W^1/2 N S": (lambda: DensityWeighted(_radial((12, 12)), torch.rand(2, 24, 1) + 0.1), True,
                                   1e-10),
    "gained Cartesian A diag(g) on real images": (lambda: _cartesian((8, 6)) @ Diag(torch.rand(8, 6) + 0.5)
                                                  @ RealImages((8, 6)), True, 1e-12),
    "adjoint of Cartesian (A^H)": (lambda: _cartesian((8, 6)).H, False, 1e-12),
}


def _image(op, seed=1):
    return torch.as_tensor(np.random.default_rng(seed).standard_normal(op.ishape))


def _measurement(op, is_complex, seed=2):
    if is_complex:
        return torch.as_tensor(crandn(op.oshape, seed))
    return torch.as_tensor(np.random.default_rng(seed).standard_normal(op.oshape))


def _rinner(a, b):
    return float((torch.conj(a) * b).real.sum()) if a.is_complex() or b.is_complex() else float((a * b).sum())


@pytest.mark.parametrize("name", list(OPERATORS))
def test_adjoint(name):
    factory, is_complex, tol = OPERATORS[name]
    op = factory()
    if name.startswith("adjoint of"):  # A^H maps complex k-space to complex images
        x, y = torch.as_tensor(crandn(op.ishape, 1)), torch.as_tensor(crandn(op.oshape, 2))
    else:
        x, y = _image(op), _measurement(op, is_complex)
    lhs, rhs = _rinner(op @ x, y), _rinner(x, op.H @ y)
    assert abs(lhs - rhs) <= tol * max(abs(lhs), 1e-30), (lhs, rhs)


@pytest.mark.parametrize("name", [n for n in OPERATORS if not n.startswith("adjoint of")])
def test_linearity_and_norm_bound(name):
    op = OPERATORS[name][0]()
    x1, x2 = _image(op, 4), _image(op, 5)
    a, b = 0.7, -1.9
    combo = op @ (a * x1 + b * x2)
    assert torch.allclose(combo, a * (op @ x1) + b * (op @ x2), rtol=1e-9, atol=1e-9 * float(combo.abs().max()))
    norm = op.norm(n_iter=40, dtype=torch.float64)
    for x in (x1, x2, _image(op, 6)):  # the estimate is an upper bound of |A x| / |x|
        assert float(torch.linalg.vector_norm(op @ x)) <= norm * float(torch.linalg.vector_norm(x)) * (1 + 1e-9)


def test_norm_estimates_match_known_values():
    w = torch.linspace(0.5, 3.0, 60, dtype=torch.float64).reshape(3, 4, 5)
    assert Diag(w).norm(dtype=torch.float64) == pytest.approx(1.01 * 3.0, rel=1e-3)
    assert Identity((4, 4)).norm() == 1.0
    full = MultiCoilCartesian(None, None, image_shape=(8, 8))  # one uniform coil, fully sampled: unitary
    assert full.norm(dtype=torch.float64) == pytest.approx(1.01, rel=1e-6)
    # |D| on a large 1-voxel-spacing grid approaches sqrt(4 d) from below
    assert FiniteDifference((32, 32)).norm(n_iter=200, dtype=torch.float64) == pytest.approx(1.01 * np.sqrt(8), rel=0.02)


@pytest.mark.parametrize("name", [n for n in OPERATORS if not n.startswith("adjoint of")])
def test_autograd_gradient_is_the_adjoint_residual(name):
    factory, is_complex, _ = OPERATORS[name]
    op = factory().to("cpu")  # the device round trip: .to returns a working operator
    x = _image(op).requires_grad_(True)
    y = _measurement(op, is_complex, 7)
    r = (op @ x) - y
    loss = 0.5 * ((r.abs() ** 2).sum() if r.is_complex() else (r * r).sum())
    loss.backward()
    expected = op.H @ r.detach()
    expected = expected.real if expected.is_complex() else expected
    assert torch.allclose(x.grad, expected, rtol=1e-6, atol=1e-8 * float(expected.abs().max()))


def test_cartesian_reads_as_its_equation():
    """MultiCoilCartesian is the composition P F S and equals the explicit formula mask * FFT(S x)."""
    sens, mask = crandn((3, 10, 12)), cartesian_mask((10, 12), 3, seed=2)
    op = MultiCoilCartesian(sens, mask)
    assert isinstance(op.model, Compose) and [type(o).__name__ for o in op.model.ops] == \
        ["Diag", "CentredFFT", "CoilSensitivities"]
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((10, 12)))
    explicit = torch.as_tensor(mask.astype(np.float64)) * fftc(torch.as_tensor(sens) * x, 2)
    assert torch.allclose(op @ x, explicit, atol=1e-12)
    assert op.H.H is op


def test_composition_flattens_and_its_adjoint_reverses():
    a, b, c = Diag(torch.full((4,), 2.0)), Diag(torch.arange(1.0, 5.0)), Diag(torch.full((4,), -1.0))
    abc = a @ (b @ c)
    assert len(abc.ops) == 3
    x = torch.ones(4)
    assert torch.equal(abc @ x, torch.tensor([-2.0, -4.0, -6.0, -8.0]))
    assert torch.equal(abc.H @ x, abc @ x)  # real diagonal factors commute and are self-adjoint


def test_projection_rejects_gamma_outside_unit_interval():
    from SodiumDIPLib.errors import InputError

    with pytest.raises(InputError, match="gamma"):
        DirectionalProjection(unit_field((4, 4)), 1.5)
