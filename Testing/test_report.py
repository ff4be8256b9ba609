"""Reports: geometry of the pictures (orientation, aspect), every part present, self-contained HTML, atomic
writing, the figure API and `sodiumdip compare`. Runs on real pipeline output of a small phantom."""

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from SodiumDIPLib import __version__
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.volume import Volume, ijk_to_ras_matrix, lps_to_ras
from SodiumDIPLib.apps.report import (bias_figure, curves_figure, field_figure, make_report, metrics_table_figure,
                                 montage_figure, panel_boxes, pilot_figure)
from SodiumDIPLib.apps.report.content import gather
from SodiumDIPLib.apps.report.views import plane_view, point_to_index, vector_to_ras_colour


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def case():
    from SodiumDIPLib.data.phantom import make_phantom

    return make_phantom(kind="head", seed=0, shape=(24, 24, 24))


def _denoise(case, method, params=None):
    from SodiumDIPLib.pipeline import denoise_volumes

    return denoise_volumes(case.sodium, case.proton, method=method, preset="fast", params=params, seed=3,
                           device="cpu", reference=case.sodium_truth, mask=case.brain, lesion=case.lesion,
                           proton_only=case.proton_only, proton_only_contrast=case.proton_only_contrast)


@pytest.fixture(scope="module")
def runs(case):
    """A classical baseline and a (very short) DIP-Fusion run: real outputs, bias field, pilot, guide field."""
    return [_denoise(case, "tv"), _denoise(case, "dipfusion", {"iterations": 3})]


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rep") / "report"
    paths = make_report(runs, folder)
    return folder, paths


class _Refs(HTMLParser):
    """Every URL-like attribute and every tag name of a page."""

    def __init__(self):
        super().__init__()
        self.refs, self.tags, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action", "formaction", "background", "xlink:href"):
                self.refs.append((tag, name, value or ""))
            if name == "id":
                self.ids.add(value)


# ------------------------------------------------------------------------------------------ geometry / views
def _cube(shape=(6, 7, 8), spacing=(1.0, 1.0, 1.0), direction=None, origin=(0.0, 0.0, 0.0)):
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return Volume(arr, spacing, origin, np.eye(3) if direction is None else direction)


def test_standard_orientation_letters_follow_slicer_views():
    vol = _cube()
    ax, co, sa = (plane_view(vol, p) for p in ("axial", "coronal", "sagittal"))
    assert ax.letters == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert co.letters == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert sa.letters == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert (ax.fixed, co.fixed, sa.fixed) == (2, 1, 0)  # k, j, i are cut in LPS-identity volumes
    # LPS identity: i grows to the patient's left (screen right), j to posterior (screen down in axial)
    s = ax.cut(vol.array, 2)
    assert s.shape == (7, 8) and np.array_equal(s, vol.array[2])


def _physical_equivalent(vol, perm, flips):
    """The same object stored differently: index axes permuted (perm[new] = old) and some flipped."""
    arr = vol.array
    for old_axis in flips:  # flip index axis old_axis (array axis 2 - old_axis)
        arr = np.flip(arr, axis=2 - old_axis)
    # index axis permutation -> array axis permutation
    arr = np.transpose(arr, [2 - perm[2 - a] for a in range(3)])
    cols = vol.direction * np.asarray(vol.spacing)
    origin = np.asarray(vol.origin, dtype=float)
    n = np.asarray(vol.size_ijk)
    for old_axis in flips:
        origin = origin + cols[:, old_axis] * (n[old_axis] - 1)
        cols[:, old_axis] = -cols[:, old_axis]
    cols = cols[:, list(perm)]
    spacing = np.linalg.norm(cols, axis=0)
    return Volume(np.ascontiguousarray(arr), tuple(spacing), tuple(origin), cols / spacing)


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (0,)), ((2, 0, 1), ()), ((1, 2, 0), (1, 2))])
def test_display_does_not_depend_on_storage_order(perm, flips):
    """Flipped or permuted storage of the same physical object shows the same pictures with the same letters."""
    vol = _cube(spacing=(1.0, 2.0, 3.0), origin=(5.0, -3.0, 7.0))
    other = _physical_equivalent(vol, perm, flips)
    point = vol.index_to_physical([3, 2, 1])
    assert np.allclose(other.index_to_physical(point_to_index(other, point)), point)
    for plane in ("axial", "coronal", "sagittal"):
        a, b = plane_view(vol, plane), plane_view(other, plane)
        assert a.letters == b.letters
        assert (a.width_mm, a.height_mm) == pytest.approx((b.width_mm, b.height_mm))
        sa = a.cut(vol.array, point_to_index(vol, point)[a.fixed])
        sb = b.cut(other.array, point_to_index(other, point)[b.fixed])
        assert np.array_equal(sa, sb), plane


def test_oblique_letters_name_the_true_direction():
    """A 90-degree in-plane rotation (i axis pointing anterior) is labelled A/P, not R/L."""
    rot = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # LPS: i -> -P = A, j -> -L = R
    vol = _cube(direction=rot)
    ax = plane_view(vol, "axial")
    ras = ijk_to_ras_matrix(vol)[:3, :3]
    assert ras[:, 0] @ np.array([0, 1, 0]) > 0.99  # i points anterior in RAS
    assert ax.letters == {"left": "R", "right": "L", "top": "A", "bottom": "P"}  # re-laid out, still radiological
    assert ax.col == 1 and ax.row == 0  # j runs across the screen, i up and down


def test_point_conversions_and_outside_point():
    vol = _cube(spacing=(2.0, 2.0, 4.0), origin=(10.0, 20.0, 30.0))
    ijk = (3, 4, 2)
    lps = vol.index_to_physical(ijk)
    assert point_to_index(vol, lps) == ijk
    assert point_to_index(vol, lps_to_ras(lps), "ras") == ijk
    assert point_to_index(vol, ijk, "index") == ijk
    with pytest.raises(InputError, match="outside"):
        point_to_index(vol, lps + 500.0)


def test_direction_colour_uses_ras_axes():
    """Red = left-right, green = anterior-posterior, whatever the storage orientation."""
    rot = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # i axis points A
    grid = _cube(direction=rot)
    field = np.zeros((3,) + grid.shape, np.float32)
    field[2] = 1.0  # component along array axis 2 = index axis i
    rgb = vector_to_ras_colour(field, grid)
    assert np.allclose(rgb[..., 1], 1.0) and np.allclose(rgb[..., 0], 0) and np.allclose(rgb[..., 2], 0)
    rgb = vector_to_ras_colour(field, _cube())  # identity LPS: i is left-right
    assert np.allclose(rgb[..., 0], 1.0) and np.allclose(rgb[..., 1:], 0)


# --------------------------------------------------------------------------------------- the full report
def test_report_contains_every_part(report, runs, case):
    folder, paths = report
    for part in ("html", "json", "montage", "curves", "metrics", "fields", "bias", "pilot"):
        assert Path(paths[part]).is_file() and Path(paths[part]).stat().st_size > 1000, part
    assert Path(paths["html"]).parent == folder
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".report.tmp")], "temporary folder left"

    record = json.loads(Path(paths["json"]).read_text())
    assert record["version"] == __version__
    assert [r["method"] for r in record["runs"]] == ["tv", "dipfusion"]
    for rec, run in zip(record["runs"], runs):
        assert rec["params"] == json.loads(json.dumps(run.params))
        assert rec["seed"] == 3 and rec["device"] == "cpu"
    # default point: the lesion's centroid, a voxel inside the lesion
    i, j, k = record["point"]["index_ijk"]
    assert record["point"]["source"] == "lesion centroid"
    assert case.lesion.array[k, j, i] > 0

    page = Path(paths["html"]).read_text()
    refs = _Refs()
    refs.feed(page)
    for needed in ("viewer", "plane-select", "slice-slider", "montage", "fields", "bias", "pilot", "curves",
                   "metrics", "metrics-table", "parameters", "provenance", "version", "seed", "device",
                   "montage-png", "fields-png", "bias-png", "pilot-png", "curves-png", "report-data"):
        assert needed in refs.ids, needed
    assert f">{__version__}<" in page
    # every parameter of every run, with its value
    for n, run in enumerate(runs):
        table = re.search(rf'<table id="params-{n}".*?</table>', page, re.S).group(0)
        for key, value in run.params.items():
            assert f"param: {key}" in table, key
            shown = value if isinstance(value, str) else json.dumps(value)
            assert f"<td>{shown}</td>" in table.replace("&#x27;", "'").replace("&quot;", '"'), key
    # the metric table holds each run's numbers (same 4-digit rounding)
    from SodiumDIPLib.apps.report.figures import format_value

    table = re.search(r'<table id="metrics-table".*?</table>', page, re.S).group(0)
    for run in runs:
        for key, value in run.metrics.items():
            assert key in table
            assert format_value(value) in table.replace("&#x27;", "'"), (key, value)
    # the viewer carries every montage panel plus the estimates (fields, bias, pilot)
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))
    keys = [p["key"] for p in data["panels"]]
    for key in ("input", "result-tv", "result-dipfusion", "proton", "reference", "error-tv", "error-dipfusion",
                "bias-dipfusion", "pilot-dipfusion", "field-dipfusion-magnitude"):
        assert key in keys, key
    assert set(data["planes"]) == {"axial", "coronal", "sagittal"}


def test_html_refers_to_nothing_outside_itself(report):
    page = Path(report[1]["html"]).read_text()
    refs = _Refs()
    refs.feed(page)
    assert refs.refs, "expected embedded images and in-page links"
    for tag, attr, value in refs.refs:
        assert value.startswith("data:") or value.startswith("#"), (tag, attr, value[:80])
    for m in re.finditer(r"url\(\s*['\"]?([^'\")]*)", page):
        assert m.group(1).startswith("data:") or m.group(1).startswith("#"), m.group(0)
    lowered = page.lower()
    for bad in ("http://", "https://", "@import", "<link", "<iframe", "<object", "<embed", "fetch(",
                "xmlhttprequest", "import(", "src=\"//", "src='//", "file:"):
        assert bad not in lowered, bad
    assert not re.search(r"<script[^>]*\ssrc=", page), "external script"


def test_montage_png_has_every_panel(report, runs):
    folder, paths = report
    record = json.loads(Path(paths["json"]).read_text())
    boxes = record["montage_panels"]
    image = imread(paths["montage"])
    fig = montage_figure(runs)
    w, h = fig.get_size_inches() * fig.dpi
    assert image.shape[:2] == (round(h), round(w))
    columns = ["input", "result-tv", "result-dipfusion", "proton", "reference", "error-tv", "error-dipfusion"]
    assert set(boxes) == {f"{c}@{p}" for c in columns for p in ("axial", "coronal", "sagittal")}
    for name, (x0, y0, x1, y1) in boxes.items():
        region = image[y0 + 2:y1 - 2, x0 + 2:x1 - 2, :3]
        assert region.size > 0 and region.std() > 0.01, f"panel {name} is empty"
    # panels of one plane sit in one row, in the column order above
    for plane in ("axial", "coronal", "sagittal"):
        xs = [boxes[f"{c}@{plane}"][0] for c in columns]
        assert xs == sorted(xs)
        assert len({boxes[f"{c}@{plane}"][1] for c in columns}) == 1


def test_estimate_pictures_have_content(report):
    """Guide field, bias field and pilot: one panel per plane each, none blank (a wrong window shows black)."""
    record = json.loads(Path(report[1]["json"]).read_text())
    for name, key in (("fields", "field-dipfusion-magnitude"), ("bias", "bias-dipfusion"),
                      ("pilot", "pilot-dipfusion"), ("pilot", "input")):
        image = imread(report[1][name])
        boxes = record["figure_panels"][name]
        for plane in ("axial", "coronal", "sagittal"):
            x0, y0, x1, y1 = boxes[f"{key}@{plane}"]
            region = image[y0 + 2:y1 - 2, x0 + 2:x1 - 2, :3]
            assert region.std() > 0.02, f"{name}: panel {key}@{plane} is blank"


def test_anisotropic_voxels_keep_their_physical_aspect():
    """3 mm slices with 1 mm in-plane voxels: coronal/sagittal panels are 3x taller per voxel than wide."""
    from SodiumDIPLib.pipeline import RunOutput

    rng = np.random.default_rng(0)
    shape = (10, 30, 30)
    arr = rng.random(shape).astype(np.float32) + 0.5
    vol = Volume(arr, spacing=(1.0, 1.0, 3.0))
    run = RunOutput(output=vol, bias_field=None, metrics={}, method="tv", preset="fast", params={}, history=[],
                    stop_rule="none", stop_iteration=0, iterations=0, seconds=0.0, peak_memory_mb=0.0,
                    inputs={"sodium": vol.with_array(arr * 1.1)})
    fig = montage_figure(run, dpi=80)
    boxes = panel_boxes(fig)
    for plane, expect in (("axial", 30 / 30), ("coronal", 10 * 3 / 30), ("sagittal", 10 * 3 / 30)):
        x0, y0, x1, y1 = boxes[f"input@{plane}"]
        assert (y1 - y0) / (x1 - x0) == pytest.approx(expect, rel=0.05), plane


def test_windows_do_not_saturate_the_lesion(runs, case):
    """One grey window per row from the reference, wide enough that the lesion keeps its contrast."""
    from SodiumDIPLib.apps.report.figures import row_windows
    from SodiumDIPLib.apps.report.html import viewer_windows

    content = gather(runs)
    ref = case.sodium_truth.array
    inside = np.percentile(ref[case.lesion.array > 0], 95)
    assert viewer_windows(content)["intensity"][1] >= inside
    for plane in content.planes:
        lo, hi = row_windows(content, plane, content.montage)["intensity"]
        assert lo <= np.percentile(ref, 1) and hi >= inside, plane


def test_viewer_subsamples_volumes_too_big_to_embed(runs):
    import base64

    from SodiumDIPLib.apps.report.html import viewer_payload

    content = gather(runs)
    full = viewer_payload(content)
    assert full["stride"] == 1 and full["size"] == [24, 24, 24]
    small = viewer_payload(content, max_bytes=sum(len(base64.b64decode(p["data"])) for p in full["panels"]) // 4)
    assert small["stride"] == 2 and small["size"] == [12, 12, 12] and small["spacing"][0] == 2 * full["spacing"][0]
    for p in small["panels"]:
        assert len(base64.b64decode(p["data"])) == 12 ** 3 * (3 if p["kind"] == "rgb" else 1)
    assert small["planes"]["axial"]["start"] == full["planes"]["axial"]["start"] // 2
    assert small["planes"]["axial"]["nSlices"] == 12


def test_volumes_on_other_grids_are_shown_in_place():
    """A coarse input beside a finer result (guided super-resolution) lands where it is in space, unsmoothed."""
    from SodiumDIPLib.pipeline import RunOutput

    fine = Volume(np.zeros((20, 20, 20), np.float32), spacing=(2.0, 2.0, 2.0), origin=(1.0, 1.0, 1.0))
    coarse_arr = np.zeros((10, 10, 10), np.float32)
    coarse_arr[2, 3, 4] = 5.0  # one coarse voxel = 2x2x2 fine voxels
    coarse = Volume(coarse_arr, spacing=(4.0, 4.0, 4.0), origin=(2.0, 2.0, 2.0))
    run = RunOutput(output=fine.with_array(np.ones(fine.shape, np.float32)), bias_field=None, metrics={},
                    method="tv", preset="fast", params={}, history=[], stop_rule="none", stop_iteration=0,
                    iterations=0, seconds=0.0, peak_memory_mb=0.0, inputs={"sodium": coarse})
    content = gather(run)
    shown = content.montage[0].array
    assert content.montage[0].key == "input" and shown.shape == fine.shape
    assert set(np.unique(shown)) == {0.0, 5.0} and (shown == 5).sum() == 8
    assert np.array_equal(np.argwhere(shown == 5).min(0), [4, 6, 8])  # k, j, i of the fine grid


def _plain(run):
    """The same run as a method that returns no bias field and no extra images."""
    import dataclasses

    return dataclasses.replace(run, bias_field=None, extras={})


def test_figure_api_returns_figures_or_none(runs):
    tv, dipfusion = runs
    for fn in (montage_figure, curves_figure, metrics_table_figure):
        assert isinstance(fn(runs), Figure)
    plain = _plain(tv)
    assert bias_figure(plain) is None and pilot_figure(plain) is None and field_figure(plain) is None
    assert isinstance(bias_figure(dipfusion), Figure) and isinstance(pilot_figure(dipfusion), Figure)
    assert isinstance(field_figure(dipfusion), Figure)
    # curves: one panel per monitored quantity, the stopping point marked on each
    fig = curves_figure(runs)
    loss_ax = [ax for ax in fig.axes if ax.get_title() == "loss"][0]
    stops = [ln for ln in loss_ax.get_lines() if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]
    assert sorted(float(ln.get_xdata()[0]) for ln in stops) == sorted(float(r.stop_iteration) for r in runs)


def test_guide_field_direction_drawn_in_colour(case, runs):
    """A method that returns its fused direction field gets a colour panel whose hue follows the edges."""
    import copy

    from SodiumDIPLib.priors.guidance import direction_field

    run = copy.copy(runs[0])
    proton = run.inputs["proton_on_grid"].array
    xi = direction_field(proton, eta=0.05, normalise=True).numpy()
    run.extras = {"fused_field_direction": xi}
    content = gather(run)
    (field,) = content.fields
    assert field.colour.shape == proton.shape + (3,)
    assert np.allclose(field.colour.max(-1) > 0, np.sqrt((xi ** 2).sum(0)) > 1e-6)
    assert isinstance(field_figure(run), Figure)


def test_single_slice_report(tmp_path):
    from SodiumDIPLib.data.phantom import make_phantom
    from SodiumDIPLib.pipeline import denoise_volumes

    c = make_phantom(kind="head", seed=1, shape=(24, 24))
    run = denoise_volumes(c.sodium, c.proton, method="tv", preset="fast", device="cpu", reference=c.sodium_truth)
    paths = make_report(run, tmp_path / "r2d")
    record = json.loads(Path(paths["json"]).read_text())
    assert record["planes"] == ["axial"]
    assert len(record["montage_panels"]) == 5  # input, tv, proton, reference, |error|


# ---------------------------------------------------------------------------------------- writing safely
def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_failure_leaves_no_half_written_report(runs, tmp_path, monkeypatch):
    import SodiumDIPLib.apps.report as report_pkg

    def broken(*a, **k):
        raise RuntimeError("simulated failure while drawing")

    monkeypatch.setattr(report_pkg, "curves_figure", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        make_report(runs, tmp_path / "new")
    assert list(tmp_path.iterdir()) == [], "a failed report left files behind"

    monkeypatch.undo()
    make_report(runs[:1], tmp_path / "old")
    before = _digest(tmp_path / "old")
    monkeypatch.setattr(report_pkg, "curves_figure", broken)
    with pytest.raises(RuntimeError):
        make_report(runs, tmp_path / "old")
    assert _digest(tmp_path / "old") == before, "a failed report changed the earlier one"
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_rewrite_replaces_own_files_and_keeps_others(runs, tmp_path):
    folder = tmp_path / "rep"
    make_report(runs, folder)
    assert (folder / "bias.png").is_file()
    (folder / "notes.txt").write_text("mine")
    paths = make_report(_plain(runs[0]), folder)  # no bias field, pilot or guide field this time
    assert not (folder / "bias.png").exists() and not (folder / "pilot.png").exists()
    assert (folder / "notes.txt").read_text() == "mine"
    assert set(paths) == {"html", "json", "montage", "curves", "metrics"}


def test_bad_report_arguments(runs, tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(InputError, match="existing file"):
        make_report(runs, afile)
    with pytest.raises(InputError, match="outside"):
        make_report(runs, tmp_path / "r", point=(1e4, 0, 0))
    with pytest.raises(InputError, match="at least one run"):
        make_report([], tmp_path / "r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


# -------------------------------------------------------------------------------------- sodiumdip compare
def test_compare_command_writes_one_report(tmp_path, capsys):
    from SodiumDIPLib.apps.cli import main
    from SodiumDIPLib.data.phantom import make_phantom, write_case

    files = write_case(make_phantom(kind="head", seed=2, shape=(16, 16, 16)), tmp_path / "case")
    args = ["compare", "--sodium", files["sodium"], "--proton", files["proton"], "--methods", "tv,dtv",
            "--preset", "fast", "--device", "cpu", "--seed", "5", "--reference", files["reference"],
            "--lesion", files["lesion"], "--report", tmp_path / "cmp", "--quiet"]
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert [r["method"] for r in record["runs"]] == ["tv", "dtv"]
    assert all(r["seed"] == 5 for r in record["runs"])
    assert "report.html" in out and "psnr_mask" in out

    # bad input: exit 2, one line naming the problem, nothing written
    code = main([str(a) for a in args[:6] + ["tv,nosuch", "--report", tmp_path / "bad"]])
    _, err = capsys.readouterr()
    assert code == 2 and "nosuch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    code = main([str(a) for a in args[:-3] + ["--report", files["sodium"]]])
    _, err = capsys.readouterr()
    assert code == 2 and "--report" in err
