"""The validation suite (benchmark --suite), the MNI152 atlas cases, and the guarantees it checks."""

import json

import numpy as np
import pytest
from scipy.special import gammaln

from SodiumDIPLib.data import atlas
from SodiumDIPLib.apps import suite
from SodiumDIPLib.errors import InputError

TINY = dict(channels="4,8", skip_channels="2,2", input_channels=2, iterations=20, precision="fp32")
needs_atlas = pytest.mark.skipif(atlas.available() is not None, reason="nilearn (extra 'suite') not installed")


def test_fast_suite_reports_every_number_and_dipfusion_never_falls_below_its_pilot(tmp_path):
    rows = []
    report = suite.run_suite("fast", ["dipfusion", "dtv"], params={"dipfusion": TINY}, data_dir=tmp_path,
                             on_row=lambda case, name, row: rows.append((case.name, name)))
    assert report["cases"], report["skipped"]
    for case in report["cases"]:
        for name in ("input", "dipfusion", "dtv"):
            r = case["rows"][name]
            for key in ("psnr", "ssim", "crc"):
                assert isinstance(r[key], float), (case["name"], name, key)
        dip = case["rows"]["dipfusion"]
        assert dip["stage"] in ("pilot", "dip")
        # the safeguard: never more than 0.1 dB below the pilot it started from (decided without the truth)
        assert dip["psnr"] >= dip["pilot_psnr"] - 0.1, case["name"]
    assert len(rows) == 3 * len(report["cases"])
    text = suite.format_suite_table(report)
    assert "dipfusion" in text and "summary" in text
    json.dumps(report["summary"])


def test_unknown_suite_is_an_input_error():
    with pytest.raises(InputError):
        suite.suite_cases("nope")


def test_every_full_case_declares_its_split():
    cases = suite.suite_cases("full")
    assert {c.split for c in cases} == {suite.TUNING, suite.HELD_OUT}
    assert {"head", "breast", "atlas", "real"} <= {c.family for c in cases}
    assert len({c.name for c in cases}) == len(cases)


def test_noncentral_chi_noise_floor_matches_theory():
    rng = np.random.default_rng(0)
    for coils in (1, 4):
        floor = atlas.noisy_magnitude(np.zeros(200000, np.float32), 2.0, coils, rng).mean()
        expected = 2.0 * np.sqrt(2) * np.exp(gammaln(coils + 0.5) - gammaln(coils))
        assert abs(floor / expected - 1) < 0.01


@needs_atlas
def test_atlas_brain_is_deterministic_and_places_findings_by_seed():
    a = atlas.make_atlas_brain(seed=3, voxel_mm=6.0, snr=8.0)
    b = atlas.make_atlas_brain(seed=3, voxel_mm=6.0, snr=8.0)
    c = atlas.make_atlas_brain(seed=4, voxel_mm=6.0, snr=8.0)
    assert np.array_equal(a.sodium.array, b.sodium.array)
    assert not np.array_equal(a.lesion.array, c.lesion.array)
    assert a.lesion.array.any() and a.proton_only.array.any()
    assert a.proton.array.shape == tuple(2 * n for n in a.sodium.array.shape)
    truth, brain = a.sodium_truth.array, a.brain.array.astype(bool)
    assert 30 < float(np.median(truth[brain])) < 140  # tissue, between white matter and CSF
    assert not (a.lesion.array.astype(bool) & a.proton_only.array.astype(bool)).any()
    with pytest.raises(InputError):
        atlas.make_atlas_brain(voxel_mm=1.0)
