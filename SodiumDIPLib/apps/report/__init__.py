"""Reports a person looks at: PNG figures and one self-contained HTML page for one or more runs.

``make_report(runs, folder)`` writes everything; ``figures`` has the same pictures as matplotlib Figures
for the Slicer module and notebooks; ``html`` builds the page; ``cli`` adds ``sodiumdip compare``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.io import json_default
from SodiumDIPLib.apps.report.content import as_runs, gather
from SodiumDIPLib.apps.report.figures import (bias_figure, curves_figure, extras_figure, field_figure, metrics_table_figure,
                      montage_figure, pilot_figure, point_text)

__all__ = ["make_report", "panel_boxes", "montage_figure", "field_figure", "bias_figure", "pilot_figure",
           "extras_figure", "curves_figure", "metrics_table_figure", "REPORT_FILES"]

#: File names a report folder may hold (a later report into the same folder removes its own stale ones).
REPORT_FILES = {"html": "report.html", "json": "report.json", "montage": "montage.png", "fields": "fields.png",
                "bias": "bias.png", "pilot": "pilot.png", "extras": "extras.png", "curves": "curves.png",
                "metrics": "metrics.png"}
_MARKER = "sodiumdip-report"


def panel_boxes(fig) -> dict:
    """Pixel box [x0, y0, x1, y1] (origin top-left, as in the PNG saved at ``fig.dpi``) of every image panel of a
    figure from this package (montage, field, bias, pilot, extras), keyed "panel-key@plane"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return _boxes(fig, canvas)


def _boxes(fig, canvas) -> dict:
    height = fig.bbox.height
    boxes = {}
    for (key, plane), ax in getattr(fig, "sodiumdip_axes", {}).items():
        # the image's own extent (the axes box may be larger than the picture when the aspect is kept)
        bb = ax.get_images()[0].get_window_extent(canvas.get_renderer()) if ax.get_images() else ax.get_window_extent()
        boxes[f"{key}@{plane}"] = [int(round(bb.x0)), int(round(height - bb.y1)), int(round(bb.x1)),
                                   int(round(height - bb.y0))]
    return boxes


def _render_png(fig) -> tuple:
    """(PNG bytes, panel boxes) from one Agg draw of the figure (the PNG is exactly what the boxes describe)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buf = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buf, format="png", optimize=False)
    return buf.getvalue(), _boxes(fig, canvas)


def _check_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"report folder {folder} is an existing file; expected a folder name")
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    from SodiumDIPLib.data.preflight import can_create_in

    if not can_create_in(parent):
        raise InputError(f"report folder {folder}: {parent} is not writable")


def make_report(runs, folder, point=None, point_space: str = "lps", title: Optional[str] = None,
                planes=None, dpi: int = 100) -> dict:
    """Write a report of one or more runs (``pipeline.RunOutput``) into ``folder``; returns {part: path}.

    runs:   a RunOutput or a list of them on the same case (the first run's output grid is the display grid).
    folder: created if missing (parents too). Everything is rendered into a hidden temporary folder beside it
            and moved in only when complete, so an error leaves no half-written report (and an earlier report
            in the folder intact). Files of an earlier report that this one does not produce are removed;
            other files in the folder are left alone.
    point:  where the three planes cross, in ``point_space`` "lps" (mm, default), "ras" (mm) or "index"
            (i, j, k); None: the lesion mask's centroid when the runs carry one, else the grid centre.
    title:  page title (default names the methods).
    planes: subset of ("axial", "coronal", "sagittal") (default: all that apply).
    dpi:    resolution of the PNGs (50..300).

    Parts: html (report.html: viewer, figures, sortable metric table, parameters, provenance), json
    (report.json: metrics, parameters, curves, the montage's panel boxes), montage, curves, metrics, and
    where a run provides them fields (guide field), bias, pilot, extras.
    """
    folder = Path(folder)
    tmp, written = _render(runs, folder, point, point_space, title, planes, dpi)
    try:
        _commit(tmp, folder, written)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: str(folder / fname) for name, fname in written.items()}


def stage_report(staging, runs, folder, point=None, point_space: str = "lps", title: Optional[str] = None,
                 planes=None, dpi: int = 100) -> dict:
    """Like ``make_report`` but nothing reaches ``folder`` before ``staging.commit()`` (a
    ``safewrite.Staging`` that also holds the run's other outputs, so the run is written all-or-nothing)."""
    tmp, written = _render(runs, folder, point, point_space, title, planes, dpi)
    folder = Path(folder)
    names = sorted(written.values(), key=lambda n: n == REPORT_FILES["html"])  # the page last
    for fname in names:
        staging.adopt(tmp / fname, folder / fname, cleanup=tmp)
    stale = _stale_files(folder) - set(written.values())
    staging.after_commit(lambda: [(folder / f).unlink(missing_ok=True) for f in stale])
    return {name: str(folder / fname) for name, fname in written.items()}


def _render(runs, folder, point, point_space, title, planes, dpi) -> tuple:
    """Render every part of the report into a new hidden folder beside ``folder``: (that folder, written)."""
    from SodiumDIPLib import __version__
    from SodiumDIPLib.apps.report.html import build_html

    runs = as_runs(runs)
    if not (50 <= int(dpi) <= 300):
        raise InputError(f"report dpi must be in 50..300, got {dpi}")
    folder = Path(folder)
    _check_folder(folder)
    content = gather(runs, point=point, point_space=point_space, planes=planes)
    title = title or "SodiumDIP report: " + ", ".join(content.labels)

    anchor = folder.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name[:40]}.tmp-", dir=anchor))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the report folder is an ordinary one
    try:
        figures = {"montage": montage_figure(content, dpi=dpi), "fields": field_figure(content, dpi=dpi),
                   "bias": bias_figure(content, dpi=dpi), "pilot": pilot_figure(content, dpi=dpi),
                   "extras": extras_figure(content, dpi=dpi), "curves": curves_figure(runs, dpi=dpi),
                   "metrics": metrics_table_figure(runs, dpi=dpi)}
        rendered = {name: _render_png(fig) for name, fig in figures.items() if fig is not None}
        boxes = {name: b for name, (_, b) in rendered.items() if b}
        images = {name: (rendered[name][0] if name in rendered else None) for name in figures}
        written = {}
        for name, png in images.items():
            if png is not None:
                (tmp / REPORT_FILES[name]).write_bytes(png)
                written[name] = REPORT_FILES[name]
        where = point_text(content)
        (tmp / REPORT_FILES["html"]).write_text(build_html(content, runs, images, title, where), encoding="utf-8")
        written["html"] = REPORT_FILES["html"]
        written["json"] = REPORT_FILES["json"]
        record = {
            "kind": _MARKER, "title": title, "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "point": {"index_ijk": list(content.index), "source": content.point_source, "text": where},
            "planes": content.planes, "labels": content.labels, "files": written, "montage_panels": boxes["montage"],
            "figure_panels": boxes,
            "runs": [_summary(r, lab) for r, lab in zip(runs, content.labels)],
        }
        (tmp / REPORT_FILES["json"]).write_text(json.dumps(record, indent=2, default=json_default), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, written


def _stale_files(folder: Path) -> set:
    """Files of an earlier report in ``folder`` (named in its report.json), which a new report replaces."""
    old = folder / REPORT_FILES["json"]
    if old.is_file():
        try:
            prev = json.loads(old.read_text(encoding="utf-8"))
            if prev.get("kind") == _MARKER:
                return set(prev.get("files", {}).values()) & set(REPORT_FILES.values())
        except (OSError, ValueError):
            pass
    return set()


def _summary(run, label: str) -> dict:
    if hasattr(run, "summary"):
        out = run.summary()
    else:
        out = {k: getattr(run, k, None) for k in ("method", "preset", "params", "metrics", "stop_rule",
                                                   "stop_iteration", "iterations", "seconds", "peak_memory_mb",
                                                   "device", "seed", "version", "history")}
    out["label"] = label
    return out


def _commit(tmp: Path, folder: Path, written: dict) -> None:
    """Move a complete report into place: a rename of the whole folder when it is new, else file by file
    (each an atomic rename) followed by removal of the previous report's files this one did not write."""
    if not folder.exists():
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, folder)
            return
        except OSError:
            folder.mkdir(parents=True, exist_ok=True)  # raced with someone creating it: merge below
    stale = _stale_files(folder)
    # the HTML last: whoever opens the folder mid-way sees the previous page until the new one is complete
    names = sorted(written.values(), key=lambda n: n == REPORT_FILES["html"])
    for fname in names:
        os.replace(tmp / fname, folder / fname)
    for fname in stale - set(written.values()):
        (folder / fname).unlink(missing_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
