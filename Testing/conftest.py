"""Shared fixtures: where the real data live, small synthetic volumes."""

import os
from pathlib import Path

# OpenMP threads that spin while waiting (torch, ITK) steal the other core on a 2-core CI machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
UHF = DATA / "uhf23na"
MULTICOIL = DATA / "multicoil"


@pytest.fixture(scope="session")
def uhf_dir():
    if not UHF.is_dir():
        pytest.fail(f"real data folder missing: {UHF} (../shared/data must sit beside the repository)")
    return UHF


@pytest.fixture
def oblique_volume():
    """A small 3D volume with anisotropic spacing, a non-trivial origin and an oblique direction."""
    from SodiumDIPLib.data.volume import Volume

    rng = np.random.default_rng(1)
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    return Volume(rng.random((5, 6, 7)).astype(np.float32) + 0.1, spacing=(1.5, 2.0, 3.25),
                  origin=(-10.0, 20.5, 33.0), direction=rot)
