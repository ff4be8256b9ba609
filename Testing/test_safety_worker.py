"""The worker answers every bad job with one ``error`` event of kind ``input`` and exit 2, never a bare
traceback, and writes nothing (issue 11, worker class). Real subprocesses, as the Slicer module runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safety_helpers import snapshot, write_pair

REPO = Path(__file__).resolve().parents[1]


def _run_worker(job_path: Path):
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "SodiumDIPLib.apps.worker", str(job_path)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=job_path.parent)
    events = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return res.returncode, events, res.stderr


@pytest.fixture
def case(tmp_path):
    sodium, proton = write_pair(tmp_path / "in")
    return tmp_path, sodium, proton


def _job(sodium, proton, out, **extra):
    job = {"inputs": {"sodium": str(sodium), "proton": str(proton)}, "method": "tv", "preset": "fast",
           "device": "cpu", "output_dir": str(out), "snapshot_interval_s": 0}
    job.update(extra)
    return job


def _assert_input_error(tmp, job_text: str, *words):
    path = tmp / "job.json"
    path.write_text(job_text)
    before = snapshot(tmp)
    code, events, stderr = _run_worker(path)
    assert code == 2, (code, events, stderr)
    assert [e["event"] for e in events] == ["error"], events
    assert events[0]["kind"] == "input" and "Traceback" not in stderr, (events, stderr)
    for w in words:
        assert w.lower() in events[0]["message"].lower(), events[0]["message"]
    assert snapshot(tmp) == before
    return events[0]["message"]


def test_non_finite_values_are_input_errors(case):
    tmp, sodium, proton = case
    text = json.dumps(_job(sodium, proton, tmp / "out", params={"lambda_sigma": 0.5})).replace("0.5", "1e400")
    _assert_input_error(tmp, text, "1e400", "finite")
    text = json.dumps(_job(sodium, proton, tmp / "out", seed=7)).replace('"seed": 7', '"seed": 1e400')
    _assert_input_error(tmp, text, "finite")


def test_deep_nesting_is_an_input_error(case):
    tmp, sodium, proton = case
    text = json.dumps(_job(sodium, proton, tmp / "out", params={"lambda_sigma": 0})).replace(
        '"lambda_sigma": 0', '"lambda_sigma": ' + "[" * 100000 + "]" * 100000)
    _assert_input_error(tmp, text, "nested")


@pytest.mark.parametrize("params,words", [({"lambda_sigma": None}, ("lambda_sigma", "null")),
                                          ({"iterations": 0}, ("iterations",)),
                                          ({"nosuch": 1}, ("nosuch",))])
def test_bad_parameters_are_input_errors_before_any_work(case, params, words):
    tmp, sodium, proton = case
    _assert_input_error(tmp, json.dumps(_job(sodium, proton, tmp / "out", params=params)), *words)


def test_unwritable_output_folder_is_an_input_error(case):
    tmp, sodium, proton = case
    (tmp / "afile").write_text("x")
    _assert_input_error(tmp, json.dumps(_job(sodium, proton, tmp / "afile" / "out")), "output_dir")


def test_output_folder_holding_an_input_it_would_overwrite_is_refused(case):
    tmp, sodium, proton = case
    out = tmp / "in"
    (out / "output.nrrd").write_bytes(b"the user's own file")
    job = _job(out / "output.nrrd", proton, out)
    _assert_input_error(tmp, json.dumps(job), "output_dir", "overwrite")
