"""No output may destroy an input or an earlier result (issue 11, classes HIGH/MEDIUM of the output kind).

Every refusal happens in the pre-flight, before anything is read or computed: exit 2, one line naming the
option and what was expected, nothing written anywhere, inputs byte-identical. One real (small, fast) run
checks the positive side: all files in place, permissions from the umask, a detached header naming its final
data file, and an earlier result replaced only when the new one is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safety_helpers import assert_refused, run_cli, snapshot, write_pair


@pytest.fixture
def case(tmp_path):
    sodium, proton = write_pair(tmp_path / "in")
    (tmp_path / "out").mkdir()
    return tmp_path, sodium, proton


def _denoise(sodium, proton, *extra):
    return ["denoise", "--sodium", sodium, "--proton", proton, "--method", "tv", "--preset", "fast",
            "--device", "cpu", "--quiet", *extra]


def _refused(tmp, capfd, argv, *words):
    before = snapshot(tmp)
    code, _, err = run_cli(argv, capfd)
    line = assert_refused(code, err, *words)
    assert snapshot(tmp) == before, "a refused run wrote or changed a file"
    return line


def test_output_equal_to_sodium_is_refused(case, capfd):
    tmp, sodium, proton = case
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", sodium), "output", "sodium", "overwrite")


def test_output_reaching_an_input_through_a_symlink_or_dotdot_is_refused(case, capfd):
    tmp, sodium, proton = case
    (tmp / "out" / "link.nii.gz").symlink_to(sodium)
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", tmp / "out" / "link.nii.gz"), "sodium")
    dotdot = tmp / "out" / ".." / "in" / "proton.nii.gz"
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", dotdot), "proton")


def test_hard_link_to_an_input_is_refused(case, capfd):
    tmp, sodium, proton = case
    os.link(proton, tmp / "out" / "hard.nii.gz")
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", tmp / "out" / "hard.nii.gz"), "proton")


def test_metrics_json_equal_to_an_input_is_refused(case, capfd):
    tmp, sodium, proton = case
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", tmp / "out" / "d.nii.gz", "--metrics-json", proton),
             "metrics-json", "proton")


def test_bias_field_equal_to_proton_or_output_is_refused(case, capfd):
    tmp, sodium, proton = case
    out = tmp / "out" / "d.nii.gz"
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", out, "--bias-field", proton), "bias-field", "proton")
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", out, "--bias-field", out), "bias-field", "output")


def test_params_file_that_the_run_would_rewrite_is_refused(case, capfd):
    tmp, sodium, proton = case
    params = tmp / "in" / "den.params.json"
    params.write_text('{"params": {"iterations": 5}}')
    _refused(tmp, capfd, _denoise(sodium, proton, "--params", params, "--output", tmp / "in" / "den.nii.gz"),
             "params", "overwrite")


def test_metrics_command_json_equal_to_its_image_is_refused(case, capfd):
    tmp, sodium, _ = case
    _refused(tmp, capfd, ["metrics", "--image", sodium, "--json", sodium], "--json", "image")


def test_bias_field_with_a_method_without_one_is_refused_before_the_run(case, capfd):
    tmp, sodium, proton = case
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", tmp / "out" / "d.nii.gz", "--set",
                                  "bias_correction=none", "--bias-field", tmp / "out" / "b.nii.gz"),
             "--bias-field", "does not estimate")


def test_report_problems_are_found_before_the_run(case, capfd):
    tmp, sodium, proton = case
    out = tmp / "out" / "d.nii.gz"
    (tmp / "out" / "afile").write_text("x")
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", out, "--report", tmp / "out" / "afile"), "--report")
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", out, "--report", tmp / "out" / "rep",
                                  "--report-point", "900,900,900"), "report point", "outside")
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", out, "--report", tmp / "out" / "rep",
                                  "--report-point", "1,nan,2"), "--report-point")


def test_long_file_name_is_refused_before_the_run(case, capfd):
    tmp, sodium, proton = case
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", tmp / "out" / ("x" * 300 + ".nii.gz")),
             "output", "too long")


def test_unwritable_metrics_json_keeps_the_previous_result(case, capfd):
    """The earlier bug: a --metrics-json that cannot be written was found after the run, and the rollback
    deleted the PREVIOUS file at --output. Now it is refused first, and the previous result is untouched."""
    tmp, sodium, proton = case
    previous = tmp / "out" / "d.nii.gz"
    previous.write_bytes(b"an earlier result")
    _refused(tmp, capfd, _denoise(sodium, proton, "--output", previous, "--metrics-json",
                                  tmp / "missing" / "m.json"), "metrics-json", "does not exist")
    assert previous.read_bytes() == b"an earlier result"


def test_a_failed_commit_restores_every_destination(tmp_path, monkeypatch):
    """All-or-nothing at the last step: when a move fails part-way, earlier destinations get their previous
    content back and no new file is left."""
    from SodiumDIPLib.data import safewrite

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("old a")
    staging = safewrite.Staging()
    safewrite.write_text_file(staging.path_for(first), "new a")
    safewrite.write_text_file(staging.path_for(second), "new b")
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if Path(dst) == second:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(safewrite.os, "replace", failing_replace)
    with pytest.raises(OSError):
        staging.commit()
    monkeypatch.setattr(safewrite.os, "replace", real_replace)
    assert first.read_text() == "old a" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no staging folder left


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_real_run_writes_everything_with_umask_permissions(case, capfd, umask):
    tmp, sodium, proton = case
    out = tmp / "out" / "d.nhdr"
    previous_mask = os.umask(umask)
    try:
        code, stdout, err = run_cli(_denoise(sodium, proton, "--output", out, "--metrics-json",
                                             tmp / "out" / "m.json", "--bias-field", tmp / "out" / "b.mha"), capfd)
    finally:
        os.umask(previous_mask)
    assert code == 0, err
    names = sorted(p.name for p in (tmp / "out").iterdir())
    assert names == ["b.mha", "d.nhdr", "d.params.json", "d.raw.gz", "m.json"]  # no hidden staging left over
    assert "data file: d.raw.gz" in out.read_text()  # the header names the final data file
    for name in names:
        assert (tmp / "out" / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_parameter_that_names_an_output_file_cannot_overwrite_an_input(case, capfd):
    """c2s's model_out is a file the run writes: the pre-flight treats it like --output (issue 11)."""
    tmp, sodium, proton = case
    argv = ["denoise", "--sodium", sodium, "--proton", proton, "--method", "c2s", "--preset", "fast",
            "--device", "cpu", "--quiet", "--output", str(tmp / "out" / "den.nii.gz"), "--set", f"model_out={sodium}"]
    _refused(tmp, capfd, argv, "model_out")
    argv[-1] = f"model_in={tmp / 'out' / 'missing.pt'}"
    _refused(tmp, capfd, argv, "model_in")
