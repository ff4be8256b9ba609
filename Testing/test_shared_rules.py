"""Rules the engine keeps in one place (issue 12): the normalisation of every Problem, the input rule of a
method, the JSON cleaner."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from SodiumDIPLib.data.io import json_ready
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.methods import get_method
from SodiumDIPLib.methods.base import list_methods
from SodiumDIPLib.physics.base import Identity
from SodiumDIPLib.problem import SCALE_PERCENTILE, intensity_scale, normalised_problem


def _blob(shape=(16, 16, 16)):
    z, y, x = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    r = np.sqrt(((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2))
    return (np.where(r < 5, 40.0, 0.0) + np.random.default_rng(0).rayleigh(2.0, shape)).astype(np.float32), r < 6


def test_normalised_problem_divides_every_intensity_by_the_one_scale():
    img, support = _blob()
    proton = 3.0 * img + 1.0
    problem, scale = normalised_problem(img, Identity(img.shape), img, (2.0, 2.0, 2.0), support, noise_sigma=2.0,
                                        proton=proton, reference=img)
    assert scale == pytest.approx(float(np.percentile(img[support], SCALE_PERCENTILE)))
    assert float(np.percentile(problem.initial[support], SCALE_PERCENTILE)) == pytest.approx(1.0, rel=1e-6)
    assert problem.noise_sigma == pytest.approx(2.0 / scale)
    assert np.allclose(problem.measurement.numpy(), img / scale) and np.allclose(problem.reference, img / scale)
    assert float(np.percentile(problem.proton, 99.9)) == pytest.approx(1.0, rel=1e-6)  # the guide's own rule


def test_intensity_scale_without_support_is_the_maximum_and_refuses_no_signal():
    img, _ = _blob()
    assert intensity_scale(img, None) == float(img.max())
    assert intensity_scale(img, np.zeros(img.shape, bool)) == float(img.max())
    with pytest.raises(InputError, match="k-space: no positive signal"):
        intensity_scale(np.zeros((8, 8)), None, role="k-space")


def test_input_rule_comes_from_the_method_declaration():
    with pytest.raises(InputError, match="needs a proton volume"):
        get_method("dtv").check_inputs(has_proton=False)
    get_method("dtv").check_inputs(has_proton=True, kspace=True)
    get_method("tv").check_inputs(has_proton=False, kspace=True)
    bm4d = next(m for m in list_methods() if m.name == "bm4d")  # its declaration, installed or not
    with pytest.raises(InputError, match="images only"):
        bm4d.check_inputs(has_proton=True, kspace=True)


def test_json_ready_gives_strict_json():
    record = {"a": np.float32("nan"), "b": np.arange(3), 4: (np.int64(2), Path("x"), np.bool_(True)),
              "c": [math.inf, 1.5, None, "s"], "d": np.array([1.0, np.nan])}
    clean = json_ready(record)
    assert clean == {"a": None, "b": [0, 1, 2], "4": [2, "x", True], "c": [None, 1.5, None, "s"], "d": [1.0, None]}
    json.dumps(clean, allow_nan=False)
