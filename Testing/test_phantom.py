"""Built-in phantom: determinism, geometry, masks, contrasts, bias, noise level, writing."""

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.metrics.quality import background_sigma
from SodiumDIPLib.data.phantom import HEAD_TSC, make_phantom, write_case

SMALL = (32, 32, 32)


@pytest.fixture(scope="module")
def head():
    return make_phantom("head", seed=0, shape=SMALL)


@pytest.fixture(scope="module")
def breast():
    return make_phantom("breast", seed=0, shape=SMALL)


def _ring(mask, brain, width=2):
    return ndi.binary_dilation(mask, iterations=width) & ~mask & brain


def _contrast(img, inside, ring):
    return img[inside].mean() / img[ring].mean() - 1.0


def _fine(mask, factor):
    """Sodium-grid mask onto the proton grid (same extent, factor x finer): exact by repetition."""
    for axis in range(mask.ndim):
        mask = np.repeat(mask, factor, axis=axis)
    return mask


def test_same_seed_same_case_and_other_seed_other_noise(head):
    again = make_phantom("head", seed=0, shape=SMALL)
    for name in ("sodium", "sodium_truth", "proton", "bias_field", "brain", "lesion", "proton_only"):
        np.testing.assert_array_equal(getattr(head, name).array, getattr(again, name).array, err_msg=name)
    other = make_phantom("head", seed=1, shape=SMALL)
    assert not np.allclose(other.sodium.array, head.sodium.array)
    assert not np.allclose(other.proton.array, head.proton.array)
    # the seed draws the noise only: the anatomy (truth) is shared, so seeds are comparable
    np.testing.assert_array_equal(other.sodium_truth.array, head.sodium_truth.array)


@pytest.mark.parametrize("shape", [SMALL, (40, 36)])
def test_geometry_same_extent_lps_and_nontrivial_origin(shape):
    case = make_phantom("head", shape=shape, voxel_mm=3.0, proton_factor=2)
    na, h = case.sodium, case.proton
    assert na.shape == tuple(shape)
    assert h.shape == tuple(2 * s for s in shape)
    assert np.allclose(h.spacing[:2], np.array(na.spacing[:2]) / 2)
    lo_na, hi_na = na.physical_bounds()
    lo_h, hi_h = h.physical_bounds()
    np.testing.assert_allclose(lo_h, lo_na, atol=1e-6)
    np.testing.assert_allclose(hi_h, hi_na, atol=1e-6)
    assert np.linalg.norm(na.origin) > 1.0  # not the trivial origin
    for vol in (case.sodium_truth, case.bias_field, case.brain, case.lesion, case.proton_only):
        assert vol.shape == na.shape and vol.origin == na.origin and vol.spacing == na.spacing
    if len(shape) == 2:
        assert na.ndim == 2 and h.ndim == 2 and na.origin[2] == h.origin[2]


def test_masks_are_sane(head, breast):
    for case in (head, breast):
        brain, lesion, po, support = (case.brain.array > 0, case.lesion.array > 0, case.proton_only.array > 0,
                                      case.support.array > 0)
        assert case.brain.array.dtype == np.uint8 and set(np.unique(case.brain.array)) <= {0, 1}
        assert lesion.sum() >= 7 and po.sum() >= 7  # a blob of a few voxels radius
        assert not (lesion & ~brain).any(), "lesion leaves the brain/breast mask"
        assert not (po & ~brain).any()
        assert not (lesion & po).any()
        assert not (brain & ~support).any()
        assert 0.05 < brain.mean() < 0.7
    no_lesion = make_phantom("head", seed=0, shape=SMALL, lesion=False)
    assert no_lesion.lesion.array.sum() == 0
    changed = no_lesion.sodium_truth.array != head.sodium_truth.array
    assert changed.any() and not (changed & ~ndi.binary_dilation(head.lesion.array > 0, iterations=2)).any()


def test_lesion_is_sodium_only_and_proton_only_is_proton_only(head, breast):
    for case in (head, breast):
        brain = case.brain.array > 0
        lesion, po = case.lesion.array > 0, case.proton_only.array > 0
        truth = case.sodium_truth.array
        p = case.params["proton_factor"]
        # sodium truth: lesion clearly elevated, proton-only structure absent
        assert _contrast(truth, lesion, _ring(lesion, brain)) > 0.5
        assert abs(_contrast(truth, po, _ring(po, brain))) < 0.01
        # proton: lesion absent (only proton noise), proton-only structure ~40 % darker
        proton = case.proton.array
        les_f, les_ring_f = _fine(lesion, p), _fine(_ring(lesion, brain), p)
        po_f, po_ring_f = _fine(po, p), _fine(_ring(po, brain), p)
        assert abs(_contrast(proton, les_f, les_ring_f)) < 0.02
        c = _contrast(proton, po_f, po_ring_f)
        assert -case.proton_only_contrast - 0.05 < c < -case.proton_only_contrast + 0.1


def test_tsc_values_in_mM(head, breast):
    t, brain = head.sodium_truth.array, head.brain.array > 0
    for tissue, min_count in (("white", 1000), ("grey", 300), ("csf", 20)):
        assert np.isclose(t, HEAD_TSC[tissue]).sum() >= min_count, tissue
    assert (HEAD_TSC["csf"], HEAD_TSC["grey"], HEAD_TSC["white"]) == (140.0, 40.0, 30.0)
    assert t[brain].max() == pytest.approx(140.0)
    assert 55 < t[head.lesion.array > 0].mean() <= 70  # 70 mM lesion with partial volume at its rim
    outside = ~ndi.binary_dilation(head.support.array > 0)  # beyond the partial-volume rim: empty
    assert t[outside].max() == 0
    bt, btum = breast.sodium_truth.array, breast.lesion.array > 0
    fat = np.isclose(bt, 12.0) & (breast.brain.array > 0)
    assert fat.sum() > 100 and bt[btum].mean() > 2.5 * bt[fat].mean()


def test_bias_field_mean_log_zero_and_smooth(head):
    b, support = head.bias_field.array, head.support.array > 0
    assert b.min() > 0
    assert abs(np.log(b[support]).mean()) < 1e-6
    span = np.log(b[support]).max() - np.log(b[support]).min()
    assert span == pytest.approx(2 * head.params["bias_strength"], rel=1e-6)
    assert np.abs(np.diff(np.log(b), axis=2)).max() < 0.1  # smooth: small change per voxel
    clean = make_phantom("head", shape=(24, 24, 24), snr=np.inf, bias_strength=0.3)
    np.testing.assert_allclose(clean.sodium.array, clean.sodium_truth.array * clean.bias_field.array, rtol=1e-5)
    flat = make_phantom("head", shape=(24, 24, 24), bias_strength=0.0)
    np.testing.assert_array_equal(flat.bias_field.array, 1.0)


def test_noise_sigma_matches_rayleigh_background_and_snr(head):
    background = ~ndi.binary_dilation(head.support.array > 0, iterations=2)
    assert background.sum() > 2000
    est = background_sigma(head.sodium.array, background)
    assert est == pytest.approx(head.noise_sigma, rel=0.05)
    brain_mean = head.sodium_truth.array[head.brain.array > 0].mean()
    assert brain_mean / head.noise_sigma == pytest.approx(head.params["snr"], rel=1e-5)
    noisier = make_phantom("head", shape=SMALL, snr=5.0)
    assert noisier.noise_sigma == pytest.approx(2 * head.noise_sigma, rel=1e-5)


def test_generation_is_fast():
    start = time.perf_counter()
    make_phantom("head", seed=2, shape=(48, 48, 48))
    make_phantom("breast", seed=2, shape=(48, 48, 48))
    assert time.perf_counter() - start < 10.0  # ~1 s on an idle core; generous on a shared machine


def test_single_slice_preview():
    case = make_phantom("head", shape=(48, 48))
    assert case.sodium.ndim == 2 and case.lesion.array.sum() > 0 and case.proton_only.array.sum() > 0
    assert case.proton.shape == (96, 96)


@pytest.mark.parametrize("fmt", ["nrrd", "nii.gz"])
def test_write_case_roundtrip(tmp_path, fmt):
    case = make_phantom("head", seed=5, shape=(16, 20, 24))
    paths = write_case(case, tmp_path / "case", fmt=fmt)
    assert {"sodium", "proton", "reference", "bias_field", "brain", "lesion", "proton_only", "case"} <= set(paths)
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == sorted(p.name for p in paths.values())
    img = sitk.ReadImage(str(paths["sodium"]))
    np.testing.assert_allclose(img.GetOrigin(), case.sodium.origin, atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), case.sodium.spacing, atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), case.sodium.array, rtol=1e-6)
    h = sitk.ReadImage(str(paths["proton"]))
    np.testing.assert_allclose(h.GetSpacing(), case.proton.spacing, atol=1e-5)
    m = sitk.ReadImage(str(paths["lesion"]))
    assert m.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(m), case.lesion.array)
    info = json.loads(paths["case"].read_text())
    assert info["seed"] == 5 and info["noise_sigma"] == pytest.approx(case.noise_sigma)
    assert info["proton_only_contrast"] == case.proton_only_contrast and info["params"]["shape"] == [16, 20, 24]


def test_bad_arguments_raise_input_error(tmp_path):
    for kwargs, words in ((dict(kind="knee"), "kind"), (dict(shape=(4, 4, 4)), "shape"),
                          (dict(shape=(8, 8, 8, 8)), "shape"), (dict(snr=0), "snr"),
                          (dict(proton_factor=0), "proton_factor"), (dict(seed=-1), "seed"),
                          (dict(voxel_mm=-2), "voxel_mm")):
        with pytest.raises(InputError, match=words):
            make_phantom(**kwargs)
    case = make_phantom(shape=(16, 16))
    with pytest.raises(InputError, match="format"):
        write_case(case, tmp_path, fmt="png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError):
        write_case(case, blocker / "sub")
