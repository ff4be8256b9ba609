"""Report pictures as matplotlib Figures, reusable from the Slicer module and from notebooks.

Every function takes one run or a list of runs (``pipeline.RunOutput``) and returns a ``Figure`` (or None
when there is nothing of that kind to show, e.g. no method estimated a bias field). Figures are built with
the object API (``matplotlib.figure.Figure``), never through pyplot's global state, so they are safe in a
GUI, a worker thread and headless; save them with ``fig.savefig(path)``.

Geometry: images are drawn in millimetres (correct aspect for anisotropic voxels), with a scale bar and the
patient-direction letters of each edge (see ``views``). Intensity windows are robust percentiles, one per
montage row, shared by the input, every result and the reference.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from SodiumDIPLib.apps.report.content import Content, gather, as_runs, run_labels
from SodiumDIPLib.apps.report.views import PlaneView, intensity_window, nice_length, plane_view, robust_window

CMAPS = {"intensity": "gray", "proton": "gray", "error": "magma", "bias": "viridis", "magnitude": "gray",
         "scalar": "gray"}
_RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
#: Per-iteration keys that are bookkeeping, not curves.
_NOT_CURVES = {"iteration", "elapsed", "time", "seconds", "lr", "learning_rate"}


def _content(runs, point, point_space, planes) -> Content:
    if isinstance(runs, Content):
        return runs
    return gather(runs, point=point, point_space=point_space, planes=planes)


def row_windows(content: Content, plane: str, panels) -> dict:
    """Display window per panel kind for one plane (row): robust percentiles of that row's slices.

    intensity: from the reference when there is one, else the sodium input (else the first result), so
    every method is judged on the same grey scale; error: 0 .. 99.5th percentile of all error slices.
    """
    view = plane_view(content.grid, plane)
    s = content.index[view.fixed]
    by_key = {p.key: p for p in content.montage}
    src = by_key.get("reference") or by_key.get("input") or next((p for p in content.montage if p.kind == "intensity"), None)
    win = {}
    if src is not None:
        lesion = None if content.lesion is None else view.cut(content.lesion, s)
        win["intensity"] = intensity_window(view.cut(src.array, s), lesion)
    for kind in ("proton", "error", "bias", "magnitude"):
        cuts = [view.cut(p.array if hasattr(p, "array") else p.magnitude, s) for p in panels
                if getattr(p, "kind", "magnitude") == kind]
        if cuts:
            lo, hi = robust_window(cuts, 0.5 if kind != "error" else 0.0, 99.5)
            win[kind] = (0.0, max(hi, 1e-12)) if kind in ("error", "magnitude") else (lo, hi)
    return win


def draw_slice(ax, image: np.ndarray, view: PlaneView, cmap: str = "gray", window: Optional[tuple] = None,
               annotate: bool = True, title: Optional[str] = None):
    """Show one displayed slice in millimetres on ``ax`` (scale bar and orientation letters when annotate)."""
    extent = (0.0, view.width_mm, view.height_mm, 0.0)
    kw = {} if image.ndim == 3 else {"cmap": cmap, "vmin": window[0] if window else None,
                                      "vmax": window[1] if window else None}
    im = ax.imshow(image, extent=extent, interpolation="nearest", aspect="equal", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    if annotate:
        annotate_view(ax, view)
    return im


def annotate_view(ax, view: PlaneView) -> None:
    """Orientation letters at the four edges and a scale bar (bottom right) in mm."""
    w, h = view.width_mm, view.height_mm
    outline = [patheffects.withStroke(linewidth=1.5, foreground="black")]  # readable on white too
    style = dict(color="yellow", fontsize=7, fontweight="bold", ha="center", va="center", path_effects=outline)
    ax.text(0.03 * w + 1, h / 2, view.letters["left"], **style)
    ax.text(0.97 * w - 1, h / 2, view.letters["right"], **style)
    ax.text(w / 2, 0.05 * h + 1, view.letters["top"], **style)
    ax.text(w / 2, 0.95 * h - 1, view.letters["bottom"], **style)
    length = nice_length(0.3 * w)
    x1 = 0.95 * w
    y = 0.9 * h
    ax.add_patch(Rectangle((x1 - length, y - 0.012 * h), length, 0.024 * h, facecolor="white", edgecolor="black",
                           linewidth=0.5))
    ax.text(x1 - length / 2, y - 0.035 * h, f"{length:g} mm", color="white", fontsize=6, ha="center", va="bottom",
            path_effects=outline)


def _grid_figure(content: Content, columns: list, panel_inches: float, dpi: int, title: str = "",
                 bottom_inches: float = 0.05, min_width: float = 4.8):
    """A figure with one row per plane and ``len(columns)`` columns; rows sized to their physical aspect."""
    views = [plane_view(content.grid, p) for p in content.planes]
    ratios = [min(max(v.height_mm / v.width_mm, 0.25), 4.0) for v in views]
    ncols = max(1, len(columns))
    label_w = 0.45
    panel_inches = max(panel_inches, (min_width - label_w) / ncols)  # room for the title of a narrow figure
    width = label_w + ncols * panel_inches
    head = 0.6 if title else 0.3
    gap = 0.12  # inches between rows
    height = head + sum(r * panel_inches for r in ratios) + gap * (len(views) - 1) + bottom_inches
    fig = Figure(figsize=(width, height), dpi=dpi)
    avg = sum(r * panel_inches for r in ratios) / len(views)
    gs = fig.add_gridspec(len(views), ncols, height_ratios=ratios, left=label_w / width, right=0.995,
                          top=1 - head / height, bottom=bottom_inches / height, hspace=gap / avg, wspace=0.04)
    axes = [[fig.add_subplot(gs[r, c]) for c in range(ncols)] for r in range(len(views))]
    fig.sodiumdip_axes = {}  # (panel key, plane) -> Axes: see report.panel_boxes
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.08 / height, va="top", wrap=True)
    return fig, views, axes


def _plane_label(content: Content, view: PlaneView) -> str:
    s = content.index[view.fixed]
    return f"{view.plane}\nslice {s + 1}/{view.n_slices}"


def point_text(content: Content) -> str:
    """One line naming where the planes cross (voxel index, RAS mm, and why there)."""
    from SodiumDIPLib.data.volume import lps_to_ras

    ras = lps_to_ras(content.grid.index_to_physical(np.asarray(content.index, dtype=float)))
    i, j, k = content.index
    return (f"planes through voxel (i, j, k) = ({i}, {j}, {k}), RAS ({ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f}) mm"
            f" [{content.point_source}]")


def montage_figure(runs, point=None, point_space: str = "lps", planes=None, panel_inches: float = 2.0,
                   dpi: int = 100) -> Figure:
    """Three planes through a point: sodium input | each result | proton | reference | |error| of each result.

    point / point_space: see ``content.gather`` (default: lesion centroid, else centre). One intensity window
    per row (from the reference, else the input) shared by input, results and reference; errors share one
    window per row (title gives its top). ``fig.sodiumdip_axes`` maps (panel key, plane) -> Axes, for tests and
    for callers that want to add marks.
    """
    content = _content(runs, point, point_space, planes)
    panels = content.montage
    fig, views, axes = _grid_figure(content, panels, panel_inches, dpi, "sodium input | results | proton | "
                                    "reference | |error|   —   " + point_text(content))
    for r, view in enumerate(views):
        win = row_windows(content, view.plane, panels)
        s = content.index[view.fixed]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            window = win.get(panel.kind) or robust_window([view.cut(panel.array, s)])
            draw_slice(ax, view.cut(panel.array, s), view, CMAPS[panel.kind], window, annotate=(c == 0),
                       title=panel.title if r == 0 else None)
            if panel.kind == "error":
                ax.text(0.02 * view.width_mm, 0.98 * view.height_mm, f"0–{window[1]:.3g}", color="white",
                        fontsize=6, va="bottom")
            fig.sodiumdip_axes[(panel.key, view.plane)] = ax
        lo, hi = win.get("intensity", (math.nan, math.nan))
        axes[r][0].set_ylabel(f"{_plane_label(content, view)}\nwindow {lo:.3g}–{hi:.3g}", fontsize=7)
    return fig


def field_figure(runs, point=None, point_space: str = "lps", planes=None, panel_inches: float = 2.0,
                 dpi: int = 100) -> Optional[Figure]:
    """The fused guide field of each run that has one: magnitude (grey, 0..1) | direction as colour.

    Colour: RGB = |RAS components| of the field (red left-right, green anterior-posterior, blue
    superior-inferior), brightness = field strength. None when no run returned a field.
    """
    content = _content(runs, point, point_space, planes)
    if not content.fields:
        return None
    columns = []
    for f in content.fields:
        columns.append(("magnitude", f))
        if f.colour is not None:
            columns.append(("colour", f))
    fig, views, axes = _grid_figure(content, columns, panel_inches, dpi,
                                    "guide field: strength |xi| (grey) and direction (RGB = |R-L|, |A-P|, |S-I|)")
    for r, view in enumerate(views):
        s = content.index[view.fixed]
        for c, (what, f) in enumerate(columns):
            fig.sodiumdip_axes[(f"{f.key}-{what}", view.plane)] = axes[r][c]
            if what == "magnitude":
                top = float(np.nanmax(f.magnitude))
                hi = 1.0 if top <= 1.0 + 1e-6 else robust_window([f.magnitude], 0, 99.5)[1]
                draw_slice(axes[r][c], view.cut(f.magnitude, s), view, "gray", (0.0, hi), annotate=(c == 0),
                           title=f"|xi| {f.title}" if r == 0 else None)
            else:
                rgb = view.cut(np.moveaxis(f.colour, -1, 0), s)  # (3, rows, cols)
                draw_slice(axes[r][c], np.moveaxis(rgb, 0, -1), view, annotate=False,
                           title=f"direction {f.title}" if r == 0 else None)
        axes[r][0].set_ylabel(_plane_label(content, view), fontsize=7)
    return fig


def _scalar_panels_figure(content: Content, panels, title: str, panel_inches: float, dpi: int,
                          shared_window: Optional[tuple], cmap: str, colorbar: bool) -> Figure:
    fig, views, axes = _grid_figure(content, panels, panel_inches, dpi, title, bottom_inches=0.45 if colorbar else 0.05)
    im = None
    for r, view in enumerate(views):
        s = content.index[view.fixed]
        win_row = row_windows(content, view.plane, content.montage)
        for c, panel in enumerate(panels):
            window = shared_window or (win_row.get("intensity") if panel.kind == "intensity" else None) or \
                robust_window([panel.array])
            im = draw_slice(axes[r][c], view.cut(panel.array, s), view, cmap or CMAPS[panel.kind], window,
                            annotate=(c == 0), title=panel.title if r == 0 else None)
            fig.sodiumdip_axes[(panel.key, view.plane)] = axes[r][c]
        axes[r][0].set_ylabel(_plane_label(content, view), fontsize=7)
    if colorbar and im is not None:
        h = fig.get_figheight()
        cax = fig.add_axes([0.25, 0.22 / h, 0.5, 0.1 / h])
        fig.colorbar(im, cax=cax, orientation="horizontal").ax.tick_params(labelsize=6)
    return fig


def bias_figure(runs, point=None, point_space: str = "lps", planes=None, panel_inches: float = 2.0,
                dpi: int = 100) -> Optional[Figure]:
    """The multiplicative receive-bias field estimated by each run that has one (one shared colour scale)."""
    content = _content(runs, point, point_space, planes)
    if not content.biases:
        return None
    window = robust_window([p.array for p in content.biases], 0.5, 99.5)
    return _scalar_panels_figure(content, content.biases, "estimated bias field (multiplicative; 1 = no bias)",
                                 panel_inches, dpi, window, "viridis", colorbar=True)


def pilot_figure(runs, point=None, point_space: str = "lps", planes=None, panel_inches: float = 2.0,
                 dpi: int = 100) -> Optional[Figure]:
    """The pilot sodium estimate of each run that made one, beside the input (same intensity window)."""
    content = _content(runs, point, point_space, planes)
    if not content.pilots:
        return None
    panels = [p for p in content.montage if p.key == "input"] + content.pilots
    return _scalar_panels_figure(content, panels, "pilot sodium estimate (fast first estimate used for guidance)",
                                 panel_inches, dpi, None, None, colorbar=False)


def extras_figure(runs, point=None, point_space: str = "lps", planes=None, panel_inches: float = 2.0,
                  dpi: int = 100) -> Optional[Figure]:
    """Any other image a method returned (each with its own robust window)."""
    content = _content(runs, point, point_space, planes)
    if not content.extras:
        return None
    return _scalar_panels_figure(content, content.extras, "other images returned by the methods", panel_inches,
                                 dpi, None, "gray", colorbar=False)


def _flat(row: dict, prefix: str = "") -> dict:
    """One history row with nested dicts (e.g. the loss terms) flattened to 'terms.fidelity' keys."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _history(run) -> list:
    return [_flat(h) for h in (getattr(run, "history", None) or []) if isinstance(h, dict)]


def curve_keys(runs) -> list:
    """Per-iteration numeric quantities present in any run's history (loss first)."""
    keys = []
    for run in as_runs(runs):
        for row in _history(run):
            for k, v in row.items():
                if k in _NOT_CURVES or k in keys:
                    continue
                if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                    keys.append(k)
    keys.sort(key=lambda k: (k != "loss", k))
    return keys


def curves_figure(runs, dpi: int = 100) -> Figure:
    """Loss and every monitored metric against iteration, one panel per quantity, the stopping point marked.

    A run without per-iteration history (a one-shot method) is named in the figure rather than left out.
    """
    runs = as_runs(runs)
    labels = run_labels(runs)
    keys = curve_keys(runs)
    n = max(1, len(keys))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows + 0.5), dpi=dpi)
    fig.suptitle("per-iteration curves (dashed line, ring: where each run stopped)", fontsize=9)
    flat = [run for run in runs if not (getattr(run, "history", None) or [])]
    if not keys:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no per-iteration history:\n" + ", ".join(labels) + "\n(non-iterative methods)",
                ha="center", va="center", fontsize=9)
        return fig
    for q, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, q + 1)
        positive = True
        for n_run, (run, lab) in enumerate(zip(runs, labels)):
            rows = [h for h in _history(run) if isinstance(h.get(key), (int, float, np.floating, np.integer))
                    and "iteration" in h and math.isfinite(float(h[key]))]
            if not rows:
                continue
            it = np.array([float(h["iteration"]) for h in rows])
            val = np.array([float(h[key]) for h in rows])
            positive &= bool(np.all(val > 0))
            colour = _RUN_COLOURS[n_run % len(_RUN_COLOURS)]
            ax.plot(it, val, color=colour, lw=1.2, label=lab)
            stop = getattr(run, "stop_iteration", None)
            if stop is not None and len(it):
                ax.axvline(float(stop), color=colour, ls="--", lw=0.8)
                near = int(np.argmin(np.abs(it - float(stop))))
                ax.plot([it[near]], [val[near]], "o", mfc="none", mec=colour, ms=7)
        if key == "loss" and positive:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("iteration", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if q == 0:
            ax.legend(fontsize=6)
    if flat:
        fig.text(0.01, 0.005, "no history: " + ", ".join(lab for run, lab in zip(runs, labels)
                                                  if any(run is f for f in flat)),
                 fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 0.95))
    return fig


def format_value(v) -> str:
    """Metric cell text: 4 significant digits for numbers; strings (e.g. 'unavailable: ...') as they are."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if not math.isfinite(float(v)) else f"{float(v):.4g}"
    return str(v)


def metric_names(runs) -> list:
    names = []
    for run in as_runs(runs):
        for k in (getattr(run, "metrics", None) or {}):
            if k not in names:
                names.append(k)
    return names


def metrics_table_figure(runs, dpi: int = 100) -> Figure:
    """The metric table as a picture: one row per metric, one column per run (plus time and iterations)."""
    runs = as_runs(runs)
    labels = run_labels(runs)
    names = metric_names(runs)
    rows = [[format_value((r.metrics or {}).get(k, "-"))[:40] for r in runs] for k in names]
    rows.append([f"{r.seconds:.1f}" for r in runs])
    rows.append([str(r.iterations) for r in runs])
    rows.append([f"{r.stop_rule} @ {r.stop_iteration}" for r in runs])
    row_labels = names + ["seconds", "iterations", "stop"]
    fig = Figure(figsize=(2.2 + 1.6 * len(runs), 0.6 + 0.22 * len(row_labels)), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    table = ax.table(cellText=rows, rowLabels=row_labels, colLabels=labels, loc="center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1.0, 1.1)
    ax.set_title("metrics (_mask: inside the support mask, _global: whole volume)", fontsize=8)
    return fig
