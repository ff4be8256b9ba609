"""The benchmark command: phantom table + JSON, real-pair evaluation, speed mode (tiny settings: fast)."""

import argparse
import json
from pathlib import Path

import numpy as np

import pytest

from SodiumDIPLib.apps import benchmark

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "uhf23na"
TINY = dict(channels="4,8", skip_channels="2,2", input_channels=2, iterations=4, precision="fp32")


def test_phantom_and_real_report_every_number(tmp_path):
    params = {"dip": TINY, "dipfusion": TINY}
    report = benchmark.run_benchmark(["dipfusion", "dip"], data=DATA, shape=(24, 24), params=params,
                                     verbose=False)
    for name in ("dipfusion", "dip"):
        row = report["phantom"][name]
        for key in ("psnr_mask", "ssim_mask", "nrmse_mask", "lesion_crc", "proton_leakage"):
            assert isinstance(row["metrics"][key], float)
        assert row["iterations"] == 4
        # dipfusion's safeguard names the stage it returned: the held-out choice or the pilot
        assert row["stop_rule"] == ("fixed" if name == "dip" else row["stop_rule"]) and row["stop_rule"] in (
            "fixed", "held-out", "held-out: pilot")
        assert row["seconds"] > 0 and row["peak_memory_mb"] > 0
        assert len(row["curves"]["loss"]) == 4 and len(row["curves"]["psnr_support"]) == 4
        real = report["real"][name]
        assert real["mse_estimate"] > 0 and "gain_db" in real
    assert "bias_corr_measured" in report["real"]["dipfusion"]
    assert "bias_corr_measured" not in report["real"]["dip"]  # plain DIP has no bias field
    table = benchmark.format_table(report)
    assert "dipfusion" in table and "real 7 T pair" in table
    json.dumps(report)  # JSON-ready (no numpy types, no NaN)


def test_speed_mode_measures_a_ratio_in_one_run():
    out = benchmark.run_speed(shape=(16, 16), budget_s=3.0, verbose=False,
                              params={"dipfusion": dict(TINY, iterations=30)})
    assert out["dip_original"]["iterations"] >= 1
    assert out["target_psnr_support"] == max(out["dip_original"]["psnr_support"])
    assert out["speedup"] is None or out["speedup"] > 0


def test_cli_subcommand_writes_json(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    benchmark.register_commands(sub)
    path, params = tmp_path / "bench.json", tmp_path / "params.json"
    params.write_text(json.dumps({"dip": TINY}))
    args = parser.parse_args(["benchmark", "--methods", "dip", "--shape", "16x16", "--json", str(path),
                              "--params", str(params), "--quiet"])
    assert args.func(args) == 0
    report = json.loads(path.read_text())
    assert report["methods"] == ["dip"] and report["phantom"]["dip"]["iterations"] == 4


def test_bad_shape_is_an_input_error():
    from SodiumDIPLib.errors import InputError

    with pytest.raises(InputError):
        benchmark._shape("4")


def test_benchmark_writes_a_report(tmp_path, capsys):
    from SodiumDIPLib.apps.cli import main

    code = main(["benchmark", "--methods", "tv,dtv", "--shape", "32x32", "--device", "cpu", "--quiet",
                 "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0, out
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "tv" in html and "dtv" in html
    assert (tmp_path / "rep" / "montage.png").exists()
    (tmp_path / "a_file").write_text("x")
    assert main(["benchmark", "--methods", "tv", "--shape", "32x32", "--report", str(tmp_path / "a_file")]) == 2
    assert main(["benchmark", "--methods", "tv", "--shape", "32x32", "--report", "/proc/sodiumdip_report"]) == 2


def test_real_pair_scores_a_noise_floor_aware_result(uhf_dir):
    """A result fitted without the magnitude noise floor (c2s, Rician/chi DIP) is also scored against the repeat
    through the floor's expectation E[y | x] (the repeat contains the floor)."""
    from types import SimpleNamespace

    from SodiumDIPLib.apps.cases import real_pair

    pair = real_pair(uhf_dir)
    image = np.asarray(pair.problem.initial, np.float32)
    plain = pair.score(SimpleNamespace(image=image, bias_field=None, diagnostics={}))
    floor = pair.score(SimpleNamespace(image=image, bias_field=None,
                                       diagnostics={"fidelity": "rician", "noise_sigma": 0.02, "n_channels": 1}))
    assert plain["gain_db"] == pytest.approx(0.0, abs=1e-3)  # the input scored against itself: no gain
    assert floor["mse_estimate_signal"] == pytest.approx(plain["mse_estimate"])  # the signal itself, as before
    assert np.isfinite(floor["mse_estimate"]) and floor["mse_estimate"] != plain["mse_estimate"]  # E[y | x] scored
