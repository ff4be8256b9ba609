"""Quality against acceleration on the phantom's simulated multi-coil k-space (small 2D case)."""

import pytest

from SodiumDIPLib.apps.acceleration import format_acceleration_table, run_acceleration_benchmark
from SodiumDIPLib.errors import InputError


@pytest.fixture(scope="module")
def table():
    return run_acceleration_benchmark(methods=("zero-filled", "tv"), factors=(2, 4), shape=(64, 64), n_coils=4,
                                      preset="fast", seed=0, device="cpu")


def test_rows_cover_every_factor_and_method(table):
    assert [(r["R"], r["method"]) for r in table["rows"]] == [(2, "zero-filled"), (2, "tv"), (4, "zero-filled"), (4, "tv")]
    for row in table["rows"]:
        assert abs(row["achieved_R"] - row["R"]) < 0.25 * row["R"]
        assert row["seconds"] >= 0 and row["iterations"] >= 1


def test_quality_falls_with_acceleration_and_regularisation_helps(table):
    psnr = {(r["R"], r["method"]): r["psnr_mask"] for r in table["rows"]}
    assert table["full"]["psnr_mask"] > psnr[(2, "zero-filled")] > psnr[(4, "zero-filled")]
    assert psnr[(2, "tv")] > psnr[(2, "zero-filled")] + 1.0
    assert psnr[(4, "tv")] > psnr[(4, "zero-filled")] + 1.0
    text = format_acceleration_table(table)
    assert "zero-filled" in text and "tv" in text and "fully sampled" in text


def test_bad_factors_and_methods():
    with pytest.raises(InputError, match=">= 1"):
        run_acceleration_benchmark(methods=("zero-filled",), factors=(0.5,), shape=(32, 32))
    with pytest.raises(InputError, match="k-space"):
        run_acceleration_benchmark(methods=("bm4d",), factors=(2,), shape=(32, 32))


def test_benchmark_command_acceleration_mode(tmp_path, capsys):
    import json

    from SodiumDIPLib.apps.cli import main

    out = tmp_path / "acc.json"
    code = main(["benchmark", "--acceleration", "2", "--methods", "zero-filled,tv", "--shape", "48x48",
                 "--device", "cpu", "--quiet", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "fully sampled zero-filled" in text and "ssim_mask" in text
    record = json.loads(out.read_text())
    assert {r["method"] for r in record["rows"]} == {"zero-filled", "tv"}
    assert main(["benchmark", "--acceleration", "0.5", "--methods", "tv", "--shape", "32x32"]) == 2
