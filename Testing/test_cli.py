"""The sodiumdip command line: bad input gets exit 2 and one clear line, nothing written, inputs untouched."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SodiumDIPLib.apps.cli import main
from SodiumDIPLib.data.io import read_volume, write_volume
from SodiumDIPLib.data.volume import Volume


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pair(tmp_path, uhf_dir):
    """Copies of the real sodium/proton pair in a scratch folder (hashes recorded to prove they stay intact)."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("c2p_naa_6.nii", "gre_2.nii"):
        shutil.copy(uhf_dir / name, src / name)
    hashes = {p.name: digest(p) for p in src.iterdir()}
    yield src / "c2p_naa_6.nii", src / "gre_2.nii"
    assert {p.name: digest(p) for p in src.iterdir() if p.is_file()} == hashes, "inputs were modified"


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(code, err, *words):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sodiumdip: error:"), err
    for w in words:
        assert w.lower() in err.lower(), (w, err)


def test_help_everywhere(capsys):
    for cmd in ([], ["denoise"], ["phantom"], ["metrics"], ["methods"], ["demo"]):
        with pytest.raises(SystemExit) as exc:
            main(cmd + ["--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("sodiumdip")
    res = subprocess.run([str(exe), "methods"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "tv" in res.stdout


@pytest.mark.parametrize("case", ["missing", "unreadable", "nan", "zero", "4d"])
def test_bad_sodium_file(tmp_path, pair, capsys, case):
    _, proton = pair
    bad = tmp_path / "bad.nii"
    if case == "unreadable":
        bad.write_bytes(b"\x00garbage" * 10)
    elif case == "nan":
        a = np.ones((10, 10, 10), np.float32)
        a[5, 5, 5] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(a), str(bad))
    elif case == "zero":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 10, 10), np.float32)), str(bad))
    elif case == "4d":
        sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.ones((6, 6, 6), np.float32))] * 3), str(bad))
    out = tmp_path / "out.nii.gz"
    code, _, err = run_cli(["denoise", "--sodium", bad, "--proton", proton, "--output", out, "--method", "tv"], capsys)
    words = {"missing": ["not found"], "unreadable": ["cannot read sodium"], "nan": ["NaN"],
             "zero": ["all zero"], "4d": ["4D"]}[case]
    assert_bad_input(code, err, "sodium", *words)
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_non_overlapping_proton_is_refused(tmp_path, pair, capsys):
    sodium, proton = pair
    far = read_volume(proton)
    far = Volume(far.array, far.spacing, np.asarray(far.origin) + [0, 0, 900.0], far.direction)
    write_volume(far, tmp_path / "far.nrrd")
    out = tmp_path / "out.nii.gz"
    code, _, err = run_cli(["denoise", "--sodium", sodium, "--proton", tmp_path / "far.nrrd", "--output", out,
                            "--method", "tv"], capsys)
    assert_bad_input(code, err, "do not overlap")
    assert not out.exists()


@pytest.mark.parametrize("output,words", [("nofolder/out.nii.gz", ["does not exist"]), ("out.txt", ["unknown file type"])])
def test_unwritable_output(tmp_path, pair, capsys, output, words):
    sodium, proton = pair
    code, _, err = run_cli(["denoise", "--sodium", sodium, "--proton", proton, "--output", tmp_path / output,
                            "--method", "tv"], capsys)
    assert_bad_input(code, err, *words)


def test_read_only_folder(tmp_path, pair, capsys):
    import os

    if os.geteuid() == 0:
        # root writes anywhere: use a path under /proc, which nobody can write
        target = Path("/proc/sodiumdip_out.nii.gz")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out.nii.gz"
    sodium, proton = pair
    code, _, err = run_cli(["denoise", "--sodium", sodium, "--proton", proton, "--output", target, "--method", "tv"],
                           capsys)
    assert_bad_input(code, err, "not writable")


@pytest.mark.parametrize("flag,value,words", [("--method", "nosuch", ["unknown method", "nosuch"]),
                                              ("--preset", "turbo", ["unknown preset", "turbo"]),
                                              ("--device", "tpu", ["unknown device"])])
def test_unknown_method_preset_device(tmp_path, pair, capsys, flag, value, words):
    sodium, proton = pair
    args = ["denoise", "--sodium", sodium, "--proton", proton, "--output", tmp_path / "o.nrrd", "--method", "tv"]
    args += [flag, value]
    code, _, err = run_cli(args, capsys)
    assert_bad_input(code, err, *words)
    assert not (tmp_path / "o.nrrd").exists()


def test_unknown_parameter_override(tmp_path, pair, capsys):
    sodium, proton = pair
    code, _, err = run_cli(["denoise", "--sodium", sodium, "--proton", proton, "--output", tmp_path / "o.nrrd",
                            "--method", "tv", "--set", "no_such_weight=1"], capsys)
    assert_bad_input(code, err, "no_such_weight")


def test_denoise_real_pair_end_to_end(tmp_path, pair, capsys):
    sodium, proton = pair
    out = tmp_path / "den.nii.gz"
    mj = tmp_path / "m.json"
    code, stdout, err = run_cli(["denoise", "--sodium", sodium, "--proton", proton, "--output", out, "--method", "tv",
                                 "--preset", "fast", "--metrics-json", mj, "--quiet"], capsys)
    assert code == 0, err
    res, src = read_volume(out), read_volume(sodium)
    np.testing.assert_allclose(res.origin, src.origin, atol=1e-4)
    np.testing.assert_allclose(res.spacing, src.spacing, atol=1e-5)
    assert res.shape == src.shape
    # denoising smooths: less high-frequency energy than the input, same overall level
    lap = lambda a: np.var(np.diff(a, 2, axis=0))  # noqa: E731
    assert lap(res.array) < lap(src.array)
    assert abs(res.array.mean() - src.array.mean()) < 0.1 * src.array.mean()
    record = json.loads(mj.read_text())
    assert record["method"] == "tv" and "laplacian_focus_global" in record["metrics"]
    params = json.loads((tmp_path / "den.params.json").read_text())
    assert params["method"] == "tv" and params["params"]
    assert "wrote output" in stdout
    assert not list(tmp_path.glob(".tmp-*"))


def test_phantom_command_writes_a_case(tmp_path, capsys):
    code, out, err = run_cli(["phantom", "--out", tmp_path / "case", "--shape", "24", "--seed", "3"], capsys)
    assert code == 0, err
    sodium = read_volume(tmp_path / "case" / "sodium.nrrd")
    assert sodium.shape == (24, 24, 24)
    assert (tmp_path / "case" / "proton.nrrd").exists()
