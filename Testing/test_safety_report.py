"""``compare`` with a method without iteration history beside one with (issue 11): the curves figure used to
crash after all the runs (``run in flat`` compared dataclasses holding arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from safety_helpers import run_cli, write_pair


def _run(method, history):
    from SodiumDIPLib.pipeline import RunOutput
    from SodiumDIPLib.data.volume import Volume

    vol = Volume(np.ones((8, 8, 8), np.float32))
    return RunOutput(output=vol, bias_field=None, metrics={"psnr": 1.0}, method=method, preset="fast", params={},
                     history=history, stop_rule="fixed", stop_iteration=3, iterations=3, seconds=0.1,
                     peak_memory_mb=1.0)


def test_curves_figure_with_and_without_history():
    from SodiumDIPLib.apps.report.figures import curves_figure

    runs = [_run("tv", [{"iteration": i, "loss": 1.0 / (i + 1)} for i in range(4)]), _run("bm4d", [])]
    fig = curves_figure(runs)
    assert any("bm4d" in t.get_text() for t in fig.texts)


def test_compare_tv_with_bm4d_writes_a_report(tmp_path, capfd):
    pytest.importorskip("bm4d")
    sodium, proton = write_pair(tmp_path / "in")
    code, out, err = run_cli(["compare", "--sodium", sodium, "--proton", proton, "--methods", "tv,bm4d",
                              "--preset", "fast", "--device", "cpu", "--quiet", "--report", tmp_path / "rep",
                              "--output-dir", tmp_path / "res"], capfd)
    assert code == 0, err
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "curves.png").is_file()
    assert {"tv.nrrd", "bm4d.nrrd", "tv.metrics.json", "bm4d.metrics.json"} <= {p.name for p in (tmp_path / "res").iterdir()}
    assert not [p for p in tmp_path.rglob(".*") if p.name.startswith((".sodiumdip-staging", ".rep.tmp"))]
