"""``sodiumdip app`` end to end: the real server in a subprocess, Debian's chromium driven by Playwright as a user.

The server (trame-slicer, Slicer's slice views rendered offscreen on the server) runs on 127.0.0.1 on a free
port with a temporary data folder; the page loads the built-in phantom (24^3), runs ``tv`` (fast preset),
watches the progress bar, sees the result view change, cancels a long ``dipfusion`` run and gets its best
result, opens the compare layout and saves a result. Screenshots of the views are checked by pixel
statistics. Every request the page makes is recorded and must stay on the loopback server. The server is
stopped by its PID at the end. Skipped without chromium or without the [app] extra (trame-slicer).
"""

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the app needs the [app] extra: pip install -e \".[app]\"")
CHROMIUM = os.environ.get("SODIUMDIP_CHROMIUM") or shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (sh .ci/browser_setup.sh)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parent.parent
from SodiumDIPLib.apps.web.server import REFIT_DELAYS_S  # noqa: E402  (after the skip: needs trame)
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """A data folder with one input file the picker must list and the app must never overwrite."""
    from SodiumDIPLib.data.io import write_volume
    from SodiumDIPLib.data.phantom import make_phantom

    folder = tmp_path_factory.mktemp("appdata")
    case = make_phantom(shape=(16, 16, 16), seed=3)
    write_volume(case.sodium, folder / "sodium16.nrrd")
    (folder / "not_a_volume.nrrd").write_text("this is not NRRD")
    return folder


@pytest.fixture(scope="module")
def server(data_folder):
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(data_folder.parent / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "SodiumDIPLib", "app", "--data", str(data_folder),
                             "--port", str(port), "--host", "127.0.0.1", "--phantom-shape", "24"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        log.seek(0)
        if "SodiumDIP app ready" in log.read():
            break
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the app server exited with {proc.returncode}: {log.read()[-2000:]}")
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the app server did not report ready")
    yield {"url": f"http://127.0.0.1:{port}/", "proc": proc, "log": log}
    os.kill(proc.pid, signal.SIGTERM)  # stopped by its PID
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 950})
        requests, blocked = [], []

        def route(r):
            host = urlparse(r.request.url).hostname
            if r.request.url.startswith(("blob:", "data:")) or host == "127.0.0.1":
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        pg.route("**/*", route)
        pg.on("request", lambda r: requests.append(r.url))
        pg.sodiumdip = {"requests": requests, "blocked": blocked}
        pg.goto(server["url"])
        pg.wait_for_function("window.trame && window.trame.state && window.trame.state.get('methods')")
        yield pg
        browser.close()


# --- helpers -------------------------------------------------------------------------------------------

def state(pg, key):
    return pg.evaluate(f"window.trame.state.get({key!r})")


def wait_state(pg, expression, timeout_s=RUN_TIMEOUT_S):
    """Wait until a JS expression over ``s`` (trame's state getter) is true."""
    pg.wait_for_function(f"(() => {{ const s = k => window.trame.state.get(k); return {expression}; }})()",
                         timeout=timeout_s * 1000, polling=200)


def choose(pg, select_id, text):
    """Pick an entry of a Vuetify select as a user does: open it, click the item."""
    pg.click(f"#{select_id}", force=True)
    pg.locator(".v-overlay--active .v-list-item", has_text=text).first.click()
    pg.keyboard.press("Escape")


def view_pixels(pg, index=0) -> np.ndarray:
    """Grey levels (float, 0..255) of the index-th slice view, from a real screenshot."""
    from PIL import Image

    time.sleep(1.0)  # let the server push the latest frame
    png = pg.locator(".layout-grid-item").nth(index).screenshot()
    if os.environ.get("SODIUMDIP_APP_DEBUG"):
        Path(os.environ["SODIUMDIP_APP_DEBUG"], f"view{index}-{time.time():.0f}.png").write_bytes(png)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    return rgb.mean(axis=2)[12:-30, 12:-12]  # without the border, the icons and the slider


def pixels_when(pg, index, predicate, timeout_s=30.0) -> np.ndarray:
    """The index-th view's grey levels once ``predicate(grey)`` holds (frames stream in asynchronously);
    the last screenshot if it never does, so the caller's assertion shows what was on screen."""
    deadline = time.monotonic() + timeout_s
    grey = view_pixels(pg, index)
    while not predicate(grey) and time.monotonic() < deadline:
        grey = view_pixels(pg, index)
    return grey


def roughness(grey: np.ndarray) -> float:
    """Mean absolute Laplacian, sampled about once per voxel, in the central half of the head (inside the
    bright rim): voxel-to-voxel noise makes it large, a denoised result small."""
    grey = grey[30:]  # below the view's icons
    ys, xs = np.nonzero(grey > 40)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    hy, hx = (ys.max() - ys.min()) // 4, (xs.max() - xs.min()) // 4
    step = max(1, (xs.max() - xs.min()) // 24)
    g = grey[cy - hy:cy + hy:step, cx - hx:cx + hx:step]
    return float(np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean())


def set_param(pg, name, value):
    panel = pg.locator("#parameters .v-expansion-panel-title")
    if pg.locator(f"#param-{name}").count() == 0 or not pg.locator(f"#param-{name}").is_visible():
        panel.click()
    pg.fill(f"#param-{name}", str(value))
    wait_state(pg, f"s('form')[{name!r}] === {str(value)!r}", 10)


# --- the tests (in order: one user session) ------------------------------------------------------------

def test_apply_without_input_names_the_problem(page):
    page.click("#apply")
    page.wait_for_selector("#error")
    assert "no sodium volume loaded" in page.inner_text("#error")


def test_picker_lists_the_data_folder_and_rejects_a_bad_file(page, data_folder):
    assert state(page, "data_files") == ["not_a_volume.nrrd", "sodium16.nrrd"]
    choose(page, "sodium-file", "not_a_volume.nrrd")
    page.click("#load-files")
    wait_state(page, "s('error').includes('not_a_volume')", 30)
    assert "not_a_volume" in page.inner_text("#error")


def test_load_phantom_shows_it_in_three_linked_views(page):
    page.click("#load-phantom")
    wait_state(page, "s('loaded').startsWith('phantom')", 60)
    assert state(page, "error") == ""
    for i in range(3):
        grey = pixels_when(page, i, lambda g: g.std() > 15)
        assert grey.std() > 15, f"view {i} looks blank"
        assert (grey > 40).mean() > 0.05


def test_bad_parameter_is_refused_before_a_run(page):
    assert state(page, "method") == "tv" and state(page, "preset") == "fast"
    set_param(page, "lambda_sigma", "-1")
    page.click("#apply")
    wait_state(page, "s('error').includes('lambda_sigma')", 30)
    assert ">= 0" in page.inner_text("#error")
    assert state(page, "history") == []


def test_tv_run_shows_progress_and_changes_the_result_view(page, data_folder):
    set_param(page, "lambda_sigma", "1.5")
    choose(page, "param-lambda_select", "fixed")  # a choice parameter: the weight as given, no SURE search
    wait_state(page, "s('form').lambda_select === 'fixed'", 10)
    before = view_pixels(page, 0)
    page.click("#apply")
    wait_state(page, "s('history').length === 1", 30)
    assert state(page, "error") == ""
    wait_state(page, "s('progress_text').includes('iteration') || s('running') === false")
    seen_progress = state(page, "progress_text")
    wait_state(page, "s('running') === false")
    assert state(page, "error") == "", state(page, "error")
    assert "iteration" in seen_progress or "done" in state(page, "progress_text")
    assert re.search(r"run #1 done: \d+ iterations", page.inner_text("#progress-text"))
    history = state(page, "history")
    assert history[0]["state"] == "finished" and history[0]["has_output"]
    assert history[0]["label"].startswith("#1 tv (fast; lambda_select=fixed, lambda_sigma=1.5)")
    after = pixels_when(page, 0, lambda g: np.abs(g - before).mean() > 1.0)
    assert np.abs(after - before).mean() > 1.0, "the view did not change to the result"
    # results in the scene: a metrics row (with the phantom's truth as reference) and a convergence plot
    header = state(page, "metrics_header")
    rows = state(page, "metrics_rows")
    assert rows[0][0] == "tv" and "psnr_global" in header
    assert page.locator("#plot svg polyline").count() >= 1


def test_cancel_keeps_the_best_dipfusion_result(page):
    choose(page, "method", "dipfusion")
    wait_state(page, "s('method') === 'dipfusion' && s('fields').some(f => f.name === 'pilot')", 10)
    time.sleep(0.5)  # the preset's form values arrive with the fields
    set_param(page, "iterations", "5000")
    before = view_pixels(page, 0)
    page.click("#apply")
    wait_state(page, "s('history').length === 2", 30)
    wait_state(page, "s('iteration') >= 3 && s('preview_updates') >= 1")
    assert state(page, "max_iterations") == 5000
    text = page.inner_text("#progress-text")
    assert re.search(r"iteration \d+/5000", text) and "ETA" in text, text
    live = pixels_when(page, 0, lambda g: np.abs(g - before).mean() > 1.0)
    assert np.abs(live - before).mean() > 1.0, "the live result did not show in the view"
    page.click("#cancel")
    wait_state(page, "s('running') === false", 60)
    assert "cancelled; kept the best result so far" in page.inner_text("#progress-text")
    entry = state(page, "history")[1]
    assert entry["state"] == "cancelled" and entry["has_output"], entry
    assert state(page, "selected_run") == 2
    assert [r[0] for r in state(page, "metrics_rows")] == ["tv", "dipfusion"]


def test_compare_layout_input_result_proton(page):
    choose(page, "selected-run", "#1 tv")
    wait_state(page, "s('selected_run') === 1", 10)
    page.click("#layout-compare")
    wait_state(page, "s('layout') === 'compare'", 30)
    assert state(page, "compare_titles") == ["input", "result", "proton"]
    assert page.locator(".layout-grid-item").count() == 3
    time.sleep(sum(REFIT_DELAYS_S) + 0.5)  # the new views are fitted once the browser has sized them
    sodium, result, proton = (pixels_when(page, i, lambda g: g.std() > 15) for i in range(3))
    for grey in (sodium, result, proton):
        assert grey.std() > 15
    # same window/level in both panels: the denoised result is smoother voxel to voxel than its input
    assert roughness(result) < 0.85 * roughness(sodium), (roughness(result), roughness(sodium))
    assert np.abs(proton - sodium).mean() > 2.0
    # linked views: scrolling the input panel moves the result panel to the same slice
    page.locator(".layout-grid-item").nth(0).hover()
    for _ in range(4):
        page.mouse.wheel(0, 120)
        time.sleep(0.2)
    moved_sodium = pixels_when(page, 0, lambda g: np.abs(g - sodium).mean() > 1.0)
    moved_result = pixels_when(page, 1, lambda g: np.abs(g - result).mean() > 1.0)
    assert np.abs(moved_sodium - sodium).mean() > 1.0, "the wheel did not move the input panel"
    assert np.abs(moved_result - result).mean() > 1.0, "the result panel is not linked to the input panel"
    for _ in range(4):
        page.mouse.wheel(0, -120)
        time.sleep(0.2)
    target = os.environ.get("SODIUMDIP_APP_SCREENSHOT")  # the README's picture, from this very session
    if target:
        Path(target).write_bytes(page.screenshot())


def test_compare_runs_side_by_side(page):
    choose(page, "compare-mode", "runs side by side")
    choose(page, "compare-runs", "#1 tv")
    choose(page, "compare-runs", "#2 dipfusion")
    wait_state(page, "s('compare_runs').length === 2", 10)
    page.click("#layout-compare")
    wait_state(page, "s('compare_titles').join() === 'run #1,run #2'", 30)
    assert page.locator(".layout-grid-item").count() == 2
    first = pixels_when(page, 0, lambda g: g.std() > 15)
    second = pixels_when(page, 1, lambda g: g.std() > 15 and np.abs(g - first).mean() > 0.5)
    assert first.std() > 15 and second.std() > 15 and np.abs(first - second).mean() > 0.5
    page.click("#layout-main")
    wait_state(page, "s('layout') === 'main'", 30)
    assert page.locator(".layout-grid-item").count() == 3


def test_save_writes_new_files_and_never_an_input(page, data_folder):
    from SodiumDIPLib.data.io import read_volume

    original = (data_folder / "sodium16.nrrd").read_bytes()
    page.fill("#save-name", "sodium16")  # the name of an input: must not be overwritten
    page.click("#save")
    wait_state(page, "s('info').startsWith('saved')", 60)
    saved = sorted(p.name for p in data_folder.iterdir() if p.name.startswith("sodium16_"))
    assert "sodium16_1.nii.gz" in saved and "sodium16_1.json" in saved, saved
    assert (data_folder / "sodium16.nrrd").read_bytes() == original
    assert read_volume(data_folder / "sodium16_1.nii.gz", "saved").array.shape == (24, 24, 24)
    assert not [p for p in data_folder.iterdir() if p.name.startswith(".tmp")]


def test_every_request_stayed_on_the_loopback_server(page, server):
    assert page.sodiumdip["blocked"] == []
    hosts = {urlparse(u).hostname for u in page.sodiumdip["requests"] if not u.startswith(("blob:", "data:"))}
    assert hosts == {"127.0.0.1"}, hosts
    assert server["proc"].poll() is None, "the server died during the session"
