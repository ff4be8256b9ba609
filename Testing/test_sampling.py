"""Undersampling patterns: acceleration, calibration centre, variable density, reproducibility, bad input."""

import numpy as np
import pytest

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.kspace import calibration_size
from SodiumDIPLib.physics.sampling import cartesian_mask, mask_acceleration, radial_spoke_subset


@pytest.mark.parametrize("shape", [(96, 64), (32, 40, 24)])
@pytest.mark.parametrize("r", [2, 3, 4, 6, 8])
def test_cartesian_mask_acceleration_and_centre(shape, r):
    m = cartesian_mask(shape, r, seed=5)
    assert m.shape == shape and m.dtype == bool
    assert abs(mask_acceleration(m) / r - 1) < 0.05
    # readout (last axis) fully sampled wherever a phase encode is taken
    pe = m.any(-1)
    assert np.array_equal(m, np.broadcast_to(pe[..., None], shape))
    # fully sampled calibration centre of at least 2 lines per phase-encode axis
    assert calibration_size(m) >= 2
    # variable density: the inner half of k-space is sampled more densely than the outer part
    grids = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for n in pe.shape], indexing="ij")
    d = np.sqrt(sum(g ** 2 for g in grids))
    # (density power max(1, log2 R - 1): the flattest density, at R <= 4 on a 2D phase-encode plane, gives ~1.5)
    assert pe[d < 0.5].mean() > 1.3 * pe[d >= 0.5].mean()


def test_density_power_default_and_explicit():
    from SodiumDIPLib.physics.sampling import default_density_power

    powers = [default_density_power(r) for r in (1, 2, 4, 6, 8, 16)]
    assert powers[:3] == [1.0, 1.0, 1.0] and powers[4] == 2.0 and powers == sorted(powers)
    assert np.array_equal(cartesian_mask((64, 64), 8, seed=3), cartesian_mask((64, 64), 8, seed=3, power=2.0))

    def outer_fraction(m):
        pe = m.any(-1)
        return pe[np.abs(np.arange(pe.size) - pe.size // 2) >= pe.size // 4].mean()

    # a steeper density keeps fewer outer phase encodes
    assert outer_fraction(cartesian_mask((128, 8), 4, seed=0, power=4.0)) < outer_fraction(cartesian_mask((128, 8), 4, seed=0, power=1.0))
    with pytest.raises(InputError):
        default_density_power(0.5)


def test_reproducible_from_seed():
    a = cartesian_mask((64, 64), 4, seed=1)
    assert np.array_equal(a, cartesian_mask((64, 64), 4, seed=1))
    assert not np.array_equal(a, cartesian_mask((64, 64), 4, seed=2))
    s = radial_spoke_subset(1000, 3, seed=7)
    assert np.array_equal(s, radial_spoke_subset(1000, 3, seed=7))
    assert not np.array_equal(s, radial_spoke_subset(1000, 3, seed=8))


def test_r1_is_full_and_r_below_1_rejected():
    assert cartesian_mask((16, 16), 1).all()
    for bad in (0.5, 0, -2, float("nan"), "fast"):
        with pytest.raises(InputError, match="acceleration"):
            cartesian_mask((16, 16), bad)
        with pytest.raises(InputError, match="acceleration"):
            radial_spoke_subset(100, bad)


def test_radial_subsets():
    for r in (2, 3, 4, 6, 8):
        idx = radial_spoke_subset(1000, r, seed=0)
        assert len(idx) == int(np.ceil(1000 / r)) and len(np.unique(idx)) == len(idx)
        assert idx.min() >= 0 and idx.max() < 1000
    even = radial_spoke_subset(100, 4, seed=0, ordering="uniform")
    gaps = np.diff(np.sort(even))
    assert gaps.max() - gaps.min() <= 1  # evenly spread for non-golden orderings


def test_calibration_size_argument():
    m = cartesian_mask((64, 64), 4, seed=0, calibration=10)
    assert calibration_size(m) >= 10
    with pytest.raises(InputError):
        cartesian_mask((64, 64), 4, calibration=-1)
    with pytest.raises(InputError):
        cartesian_mask((64,), 2)
