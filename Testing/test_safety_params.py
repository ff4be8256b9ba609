"""Every parameter parsed and range-checked before any work (issue 11, exit-code class): values that are not
finite, null, not UTF-8, absurd seeds -- each exit 2 with one line naming the parameter, nothing written."""

from __future__ import annotations

import pytest

from safety_helpers import assert_refused, run_cli, snapshot, write_pair


@pytest.fixture
def case(tmp_path):
    sodium, proton = write_pair(tmp_path / "in")
    (tmp_path / "out").mkdir()
    return tmp_path, sodium, proton


def _refused(tmp, capfd, argv, *words):
    before = snapshot(tmp)
    code, _, err = run_cli(argv, capfd)
    assert_refused(code, err, *words)
    assert snapshot(tmp) == before


def _denoise(tmp, sodium, proton, method, *extra):
    return ["denoise", "--sodium", sodium, "--proton", proton, "--output", tmp / "out" / "d.nii.gz",
            "--method", method, "--preset", "fast", "--device", "cpu", "--quiet", *extra]


@pytest.mark.parametrize("method,setting,words", [
    ("tv", "lambda_sigma=1e400", ("lambda_sigma", "finite")),
    ("tv", "lambda_sigma=nan", ("lambda_sigma", "finite")),
    ("tv", "iterations=1e400", ("iterations",)),
    ("tv", "iterations=-3", ("iterations", ">= 1")),
    ("dipfusion", "lr=inf", ("lr", "finite")),
    ("dipfusion", "iterations=0", ("iterations",)),
    ("dtv", "bias_correction=maybe", ("bias_correction",)),
    ("tv", "lambda_sigma=\udcff\udcfe", ("lambda_sigma", "utf-8")),
])
def test_bad_set_values_are_refused(case, capfd, method, setting, words):
    tmp, sodium, proton = case
    _refused(tmp, capfd, _denoise(tmp, sodium, proton, method, "--set", setting), *words)


@pytest.mark.parametrize("name,text,words", [
    ("p.yaml", "lambda_sigma: .inf\n", ("lambda_sigma", "finite")),
    ("p.yaml", "lambda_sigma: null\n", ("lambda_sigma", "null")),
    ("p.json", '{"lambda_sigma": 1e400}', ("lambda_sigma", "finite")),
    ("p.json", '{"lambda_sigma": NaN}', ("lambda_sigma", "finite")),
    ("p.json", "[" * 100000 + "]" * 100000, ("p.json",)),
])
def test_bad_parameter_files_are_refused(case, capfd, name, text, words):
    tmp, sodium, proton = case
    path = tmp / "in" / name
    path.write_text(text)
    _refused(tmp, capfd, _denoise(tmp, sodium, proton, "tv", "--params", path), *words)


def test_non_utf8_parameter_file_is_refused(case, capfd):
    tmp, sodium, proton = case
    path = tmp / "in" / "p.yaml"
    path.write_bytes(b"lambda_sigma: \xff\xfe0.3\n")
    _refused(tmp, capfd, _denoise(tmp, sodium, proton, "tv", "--params", path), "p.yaml", "utf-8")


@pytest.mark.parametrize("seed", ["1" * 25, "-" + "9" * 25, "abc"])
def test_absurd_seed_is_refused(case, capfd, seed):
    tmp, sodium, proton = case
    _refused(tmp, capfd, _denoise(tmp, sodium, proton, "tv", "--seed", seed), "--seed")


@pytest.mark.parametrize("argv,words", [
    (["phantom", "--out", "{out}", "--snr", "1e400"], ("--snr",)),
    (["phantom", "--out", "{out}", "--snr", "-1"], ("--snr", "positive")),
    (["phantom", "--out", "{out}", "--shape", "100000"], ("--shape",)),
    (["metrics", "--image", "{sodium}", "--proton-only-contrast", "inf"], ("--proton-only-contrast",)),
    (["demo", "--out", "{out}", "--methods", "tv,nosuch"], ("nosuch",)),
])
def test_bad_scalar_options_are_refused(case, capfd, argv, words):
    tmp, sodium, _ = case
    argv = [a.format(out=tmp / "out" / "new", sodium=sodium) for a in argv]
    _refused(tmp, capfd, argv, *words)
