"""The pipeline: volumes in, result out, with geometry, scaling, progress and all-or-nothing writes."""

import json

from pathlib import Path

import numpy as np
import pytest
import torch

from SodiumDIPLib import pipeline
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.io import read_volume
from SodiumDIPLib.pipeline import (denoise_volumes, load_params_file, prepare_denoising, resolve_device,
                                   write_outputs)
from SodiumDIPLib.data.volume import Volume


@pytest.fixture(scope="module")
def small_case():
    from SodiumDIPLib.data.phantom import make_phantom

    return make_phantom(kind="head", seed=0, shape=(24, 24, 24))


def test_problem_is_normalised_and_proton_on_grid(small_case):
    problem, scale, inputs = prepare_denoising(small_case.sodium, small_case.proton)
    assert problem.image_shape == small_case.sodium.shape
    assert problem.proton.shape == small_case.sodium.shape
    assert 0.5 < float(np.percentile(problem.initial[problem.support], 99.5)) <= 1.0 + 1e-6
    assert 0.8 < np.percentile(problem.proton, 99.9) <= 1.0 + 1e-6
    np.testing.assert_allclose(problem.initial * scale, small_case.sodium.array, rtol=1e-5)
    # the estimated noise level is close to the one the phantom used
    assert abs(problem.noise_sigma * scale - small_case.noise_sigma) < 0.35 * small_case.noise_sigma
    assert inputs["proton_on_grid"].shape == small_case.sodium.shape


def test_denoise_keeps_geometry_reports_progress_and_metrics(small_case):
    events = []
    run = denoise_volumes(small_case.sodium, small_case.proton, method="tv", preset="fast",
                          reference=small_case.sodium_truth, mask=small_case.brain, lesion=small_case.lesion,
                          on_progress=lambda ev, img: events.append((ev, img() if img else None)))
    assert run.output.shape == small_case.sodium.shape
    np.testing.assert_allclose(run.output.origin, small_case.sodium.origin)
    assert run.metrics["psnr_mask"] > pipeline_input_psnr(small_case)
    assert run.seconds > 0 and run.peak_memory_mb > 0
    assert events and all("iteration" in ev for ev, _ in events)
    snap = [img for _, img in events if img is not None]
    assert snap and snap[-1].shape == small_case.sodium.shape
    # snapshots are in the input's units, not normalised ones
    assert 0.3 < snap[-1].max() / small_case.sodium.array.max() < 3


def pipeline_input_psnr(case):
    from SodiumDIPLib.metrics.quality import psnr

    return psnr(case.sodium.array, case.sodium_truth.array, mask=case.brain.array > 0)


def test_single_slice_input(small_case):
    k = small_case.sodium.shape[0] // 2
    s = small_case.sodium
    origin = s.index_to_physical([0, 0, k])
    slice3d = Volume(s.array[k:k + 1], s.spacing, origin, s.direction)
    run = denoise_volumes(slice3d, small_case.proton, method="tv", preset="fast")
    assert run.output.shape == slice3d.shape
    slice2d = Volume(s.array[k], s.spacing[:2], origin[:2])
    run2 = denoise_volumes(slice2d, None, method="tv", preset="fast")
    assert run2.output.shape == slice2d.shape


def test_write_outputs_is_all_or_nothing(tmp_path, small_case, monkeypatch):
    """A failure while the files are being rendered (the last one, the metrics JSON) leaves nothing new and the
    previous result at the destination untouched."""
    from SodiumDIPLib.data import safewrite

    run = denoise_volumes(small_case.sodium, small_case.proton, method="tv", preset="fast")
    (tmp_path / "out.nrrd").write_bytes(b"previous result")
    real_write = safewrite.write_text_file

    def boom(path, text):
        if Path(path).name == "m.json":
            raise OSError("disk full")
        real_write(path, text)

    monkeypatch.setattr(safewrite, "write_text_file", boom)
    with pytest.raises(OSError):
        write_outputs(run, tmp_path / "out.nrrd", metrics_json=tmp_path / "m.json")
    assert [p.name for p in tmp_path.iterdir()] == ["out.nrrd"]
    assert (tmp_path / "out.nrrd").read_bytes() == b"previous result"


def test_params_file_reproduces_the_run(tmp_path, small_case):
    run = denoise_volumes(small_case.sodium, small_case.proton, method="tv", preset="fast", params={"iterations": 7})
    paths = write_outputs(run, tmp_path / "out.nii.gz")
    params = load_params_file(paths["params"])
    assert params["iterations"] == 7
    again = denoise_volumes(small_case.sodium, small_case.proton, method="tv", preset="fast", params=params)
    np.testing.assert_array_equal(again.output.array, read_volume(tmp_path / "out.nii.gz").array)


def test_device_choice():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("quantum")


def test_bad_params_file(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_params_file(bad)
    (tmp_path / "p.yaml").write_text("lambda_dtv: 0.5\niterations: 3\n")
    assert load_params_file(tmp_path / "p.yaml") == {"lambda_dtv": 0.5, "iterations": 3}
    (tmp_path / "run.params.json").write_text(json.dumps({"method": "tv", "params": {"iterations": 4}}))
    assert load_params_file(tmp_path / "run.params.json") == {"iterations": 4}


def test_empty_mask_is_refused(small_case):
    empty = small_case.brain.with_array(np.zeros(small_case.brain.shape, np.uint8))
    with pytest.raises(InputError, match="mask"):
        prepare_denoising(small_case.sodium, small_case.proton, mask=empty)
