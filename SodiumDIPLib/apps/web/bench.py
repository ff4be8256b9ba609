"""Time the browser app as a user meets it: ``python -m SodiumDIPLib.apps.web.bench [--repeat N]``.

Starts ``sodiumdip app`` on a free loopback port (temporary data folder), opens it in Debian's chromium
(Playwright) and prints, per repeat:

    start_s        launching the server process -> its "ready" line (includes the worker's method listing)
    first_frame_s  page opened and "Load phantom" clicked -> the Red view shows the phantom (pixels)
    update_s       "proton as foreground layer" toggled -> the Red view's pixels change (state round trip,
                   server render, image stream)
    run_view_s     Apply (tv, fast, 24^3 phantom) -> the result shown in the Red view (worker start included)

A measurement, not a test: numbers depend on the machine (report them with its core count and load).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _grey(page, index: int = 0) -> np.ndarray:
    from PIL import Image

    png = page.locator(".layout-grid-item").nth(index).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)[12:-30, 12:-12]


def _wait_pixels(page, predicate, timeout_s: float = 120.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if predicate(_grey(page)):
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise TimeoutError("the view did not change in time")


def measure_once(chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    root = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="sodiumdip-app-bench-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "SodiumDIPLib", "app", "--data", str(data), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = {}
    try:
        for line in proc.stdout:
            if "SodiumDIP app ready" in line:
                out["start_s"] = time.perf_counter() - t0
                break
        else:
            raise RuntimeError(f"the server exited ({proc.wait()}) before it was ready")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            t1 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#load-phantom")
            page.click("#load-phantom")
            _wait_pixels(page, lambda g: g.std() > 15)
            out["first_frame_s"] = time.perf_counter() - t1
            before = _grey(page)
            t2 = time.perf_counter()
            page.click("#show-proton")
            _wait_pixels(page, lambda g: g.shape == before.shape and np.abs(g - before).mean() > 0.5)
            out["update_s"] = time.perf_counter() - t2
            before = _grey(page)
            t3 = time.perf_counter()
            page.click("#apply")
            page.wait_for_function("window.trame.state.get('running') === false && "
                                   "window.trame.state.get('history').length === 1", timeout=300_000, polling=100)
            _wait_pixels(page, lambda g: g.shape == before.shape and np.abs(g - before).mean() > 0.5)
            out["run_view_s"] = time.perf_counter() - t3
            browser.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SodiumDIPLib.apps.web.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    rows = [measure_once(args.chromium) for _ in range(args.repeat)]
    keys = ("start_s", "first_frame_s", "update_s", "run_view_s")
    print(f"cores: {os.cpu_count()}  repeats: {len(rows)}")
    for key in keys:
        values = [r[key] for r in rows]
        print(f"{key:14s} median {np.median(values):6.2f}  min {min(values):6.2f}  max {max(values):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
