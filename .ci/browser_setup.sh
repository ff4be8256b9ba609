#!/bin/sh
# What Testing/test_report_browser.py needs on a fresh Debian machine: Debian's own chromium (apt) and
# Playwright for Python (pip, listed in the [test] extras). The test launches /usr/bin/chromium through
# Playwright's executable_path, headless; Playwright's browser download (`playwright install`) is never used.
# Usage (repository root): sh .ci/browser_setup.sh  -- before or after the venv exists; with a venv active
# (or PYTHON=/path/to/python) it also makes sure Playwright is installed there.
set -eu

if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
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
