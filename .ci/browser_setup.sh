#!/bin/sh
# What the browser tests (Testing/test_report_browser.py, Testing/test_app_browser.py) need on a fresh Debian
# machine: Debian's own chromium (apt), Mesa's EGL / OpenGL libraries for the app's server-side VTK rendering
# (offscreen, no X server; libosmesa6 for the OSMesa fallback), and Playwright for Python (pip, in the [test]
# extras). The test launches /usr/bin/chromium through
# Playwright's executable_path, headless; Playwright's browser download (`playwright install`) is never used.
# Usage (repository root): sh .ci/browser_setup.sh  -- before or after the venv exists; with a venv active
# (or PYTHON=/path/to/python) it also makes sure Playwright is installed there.
set -eu

# Mesa: EGL for VTK's offscreen render windows (sodiumdip app), OSMesa as the fallback
# (VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow); libxrender1 / libxt6: libraries the VTK wheel links.
RENDER_PACKAGES="libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libglx-mesa0 libosmesa6 libxrender1 libxt6"
missing_render=""
for pkg in $RENDER_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing_render="$missing_render $pkg"
done
if ! command -v chromium >/dev/null 2>&1 || [ -n "$missing_render" ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium $RENDER_PACKAGES
fi
chromium --version 2>/dev/null || true

# Outside a virtual environment Debian's Python refuses pip installs (PEP 668): Playwright then comes with
# `pip install -e ".[test]"` in the project's venv.
if [ -n "${PYTHON:-}" ] || [ -n "${VIRTUAL_ENV:-}" ]; then
    PY="${PYTHON:-$VIRTUAL_ENV/bin/python}"
    if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
        "$PY" -m pip install "playwright>=1.40"
    fi
    "$PY" -c "import playwright.sync_api; print('playwright for python: ok')"
else
    echo "no virtual environment active: Playwright for Python will come from the [test] extras"
fi
