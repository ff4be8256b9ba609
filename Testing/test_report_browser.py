"""The HTML report in a real browser: Debian's chromium, headless, driven by Playwright, opened from file://.

CI installs chromium with .ci/browser_setup.sh (apt) and Playwright (pip, test extras); Playwright's own
browser download is never used. Skipped only when no chromium executable exists on the machine.
"""

import base64
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("SODIUMDIP_CHROMIUM") or shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it with "
                                "`sh .ci/browser_setup.sh`; locally: apt-get install -y chromium)")


def _ras_storage(vol):
    """The same physical volume with its i and j axes reversed in storage (direction diag(-1, -1, 1) in LPS)."""
    from SodiumDIPLib.data.volume import Volume

    cols = vol.direction * np.asarray(vol.spacing)
    n = vol.size_ijk
    origin = np.asarray(vol.origin) + cols[:, 0] * (n[0] - 1) + cols[:, 1] * (n[1] - 1)
    direction = vol.direction.copy()
    direction[:, :2] *= -1
    return Volume(np.ascontiguousarray(vol.array[:, ::-1, ::-1]), vol.spacing, tuple(origin), direction)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    from SodiumDIPLib.data.phantom import make_phantom
    from SodiumDIPLib.pipeline import denoise_volumes
    from SodiumDIPLib.apps.report import make_report

    case = make_phantom(kind="head", seed=0, shape=(20, 20, 20))
    # stored the NIfTI way (i towards Right, j towards Anterior), so the page has to flip both screen axes
    vols = {k: _ras_storage(getattr(case, k)) for k in ("sodium", "proton", "sodium_truth", "brain", "lesion")}
    runs = [denoise_volumes(vols["sodium"], vols["proton"], method=m, preset="fast", device="cpu",
                            reference=vols["sodium_truth"], mask=vols["brain"], lesion=vols["lesion"])
            for m in ("tv", "dtv")]
    paths = make_report(runs, tmp_path_factory.mktemp("browser") / "report")
    return Path(paths["html"])


@pytest.fixture(scope="module")
def page(report_html):
    from playwright.sync_api import sync_playwright  # in the test extras (pip install -e .[test])

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.sodiumdip_requests = []
        pg.sodiumdip_errors = []
        pg.on("request", lambda r: pg.sodiumdip_requests.append(r.url))
        pg.on("pageerror", lambda e: pg.sodiumdip_errors.append(str(e)))
        pg.on("console", lambda m: pg.sodiumdip_errors.append(m.text) if m.type == "error" else None)
        pg.goto(report_html.as_uri())
        pg.wait_for_function("window.sodiumdipViewer !== undefined")
        yield pg
        browser.close()


def _payload(html_path: Path) -> dict:
    text = html_path.read_text()
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def _expected_slice(payload: dict, key: str, plane: str, index: int) -> np.ndarray:
    """What the page should show, cut in Python by the same layout (views.PlaneView) from the embedded data."""
    from SodiumDIPLib.apps.report.views import PlaneView

    panel = next(p for p in payload["panels"] if p["key"] == key)
    ni, nj, nk = payload["size"]
    vol = np.frombuffer(base64.b64decode(panel["data"]), np.uint8).reshape(nk, nj, ni)
    pl = payload["planes"][plane]
    view = PlaneView(plane, pl["fixed"], pl["row"], pl["col"], pl["flipRow"], pl["flipCol"], pl["nSlices"],
                     pl["nRows"], pl["nCols"], pl["rowMm"], pl["colMm"], pl["letters"])
    return view.cut(vol, index)


def _canvases(pg) -> dict:
    return pg.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('#panels-main canvas'))"
                       ".map(c => [c.id, c.toDataURL()]))")


def test_page_loads_offline_without_errors(page, report_html):
    assert page.sodiumdip_errors == []
    assert page.sodiumdip_requests and all(u == report_html.as_uri() or u.startswith("data:")
                                           for u in page.sodiumdip_requests), page.sodiumdip_requests
    ids = page.evaluate("Array.from(document.querySelectorAll('#panels-main canvas')).map(c => c.id)")
    assert ids == ["canvas-input", "canvas-result-tv", "canvas-result-dtv", "canvas-proton", "canvas-reference",
                   "canvas-error-tv", "canvas-error-dtv"]
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


def test_slider_moves_every_panel_in_step(page, report_html):
    payload = _payload(report_html)
    state = page.evaluate("window.sodiumdipViewer.state()")
    assert state["plane"] == "axial" and state["slice"] == payload["planes"]["axial"]["start"]
    assert payload["planes"]["axial"]["flipRow"] and payload["planes"]["axial"]["flipCol"]
    assert payload["planes"]["axial"]["start"] >= 3
    before = _canvases(page)
    label_before = page.inner_text("#slice-label")
    page.focus("#slice-slider")
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    after = _canvases(page)
    state = page.evaluate("window.sodiumdipViewer.state()")
    assert state["slice"] == payload["planes"]["axial"]["start"] - 3
    assert page.inner_text("#slice-label") != label_before
    changed = [k for k in before if before[k] != after[k]]
    assert sorted(changed) == sorted(before), f"panels that did not follow the slider: {set(before) - set(changed)}"
    # every panel shows exactly the slice Python cuts from the same data at the new position
    for key in ("input", "result-tv", "result-dtv", "error-dtv"):
        shown = np.array(page.evaluate(f"window.sodiumdipViewer.slice('{key}')"), np.uint8)
        expected = _expected_slice(payload, key, "axial", state["slice"])
        assert np.array_equal(shown, expected.ravel()), key


def test_plane_selector_keeps_physical_aspect(page, report_html):
    payload = _payload(report_html)
    page.select_option("#plane-select", "sagittal")
    pl = payload["planes"]["sagittal"]
    w, h = page.evaluate("[document.getElementById('canvas-input').width, document.getElementById('canvas-input').height]")
    assert h / w == pytest.approx(pl["nRows"] * pl["rowMm"] / (pl["nCols"] * pl["colMm"]), abs=0.02)
    before = page.evaluate("window.sodiumdipViewer.slice('result-tv')")
    page.hover("#canvas-result-tv")
    page.mouse.wheel(0, 120)  # the wheel over any image also moves every panel
    assert page.evaluate("window.sodiumdipViewer.state()")["slice"] == pl["start"] + 1
    assert page.evaluate("window.sodiumdipViewer.slice('result-tv')") != before


def test_metric_table_sorts_on_header_click(page):
    header = page.locator("#metrics-table th", has_text=re.compile(r"^psnr_mask$"))
    col = int(header.get_attribute("data-col"))

    def column():
        return [float(v) for v in page.evaluate(
            f"Array.from(document.querySelectorAll('#metrics-table tbody tr')).map(r => r.cells[{col}].getAttribute('data-value'))")]

    assert len(set(column())) == 2, "expected two different PSNRs to sort"
    header.click()
    assert column() == sorted(column()) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert column() == sorted(column(), reverse=True) and header.get_attribute("aria-sort") == "descending"
    methods = page.evaluate("Array.from(document.querySelectorAll('#metrics-table tbody tr')).map(r => r.cells[0].textContent)")
    assert sorted(methods) == ["dtv", "tv"]
