"""The browser app: a trame-slicer server with Slicer's slice views and the SodiumDIP panel.

Rendering is on the server (VTK, offscreen: EGL or OSMesa) and streamed to the browser as images (trame
RCA); the page needs nothing outside this server. The panel drives ``app.session.Session`` (the scene-side
logic shared with Slicer's panel: ``scene.SceneRun``, ``jobs``, the worker subprocess); this module only
binds it to widgets, the views and the layouts.

Layouts: "main" = Red (axial) | Yellow (sagittal) | Green (coronal), linked, sodium or the selected result
in the background, the proton as foreground layer; "compare" = axial views side by side, linked: input |
result | proton, or up to four results of the session's history.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.apps.web import parameters
from SodiumDIPLib.apps.web.session import Session

MAIN_VIEWS = (("Red", "Axial", "#F34A33"), ("Yellow", "Sagittal", "#EDD54C"), ("Green", "Coronal", "#6EB04B"))
#: Compare views (axial, side by side); at most this many results are compared at once.
COMPARE_TAGS = ("Compare1", "Compare2", "Compare3", "Compare4")
POLL_INTERVAL_S = 0.2
#: Seconds after a layout change at which the new views are fitted again (once the browser sized them).
REFIT_DELAYS_S = (0.3, 0.7, 1.0, 2.0)


class SodiumDIPApp:
    """Server state, UI and callbacks around one ``Session`` (call from the server's event loop only)."""

    def __init__(self, data_folder, methods: dict, server=None, python_executable: Optional[str] = None,
                 phantom_shape: int = 24):
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = get_server(server, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        self.session = Session(self.scene, data_folder, methods, python_executable=python_executable)
        self.phantom_shape = phantom_shape
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        self._register_layouts()
        self._init_state()
        self._build_ui()
        self.layout_manager.set_layout("main")
        self._poller = None
        self._pending_fit, self._resize_observed = set(), set()
        self.ctrl.on_server_exited.add(lambda **_: self.session.shutdown())

    # --- layouts and views -----------------------------------------------------------------------------

    def _register_layouts(self) -> None:
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        main = [ViewLayoutDefinition.slice_view(o, label=tag, color=color) for tag, o, color in MAIN_VIEWS]
        self.layout_manager.register_layout("main", Layout(LayoutDirection.Horizontal, main))
        for n in (2, 3, 4):
            views = [ViewLayoutDefinition.slice_view("Axial", label=tag, color="#8888FF") for tag in COMPARE_TAGS[:n]]
            self.layout_manager.register_layout(f"compare{n}", Layout(LayoutDirection.Horizontal, views),
                                                lazy_initialization=True)

    def _composite(self, tag: str):
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            if node.GetLayoutName() == tag:
                return node
        return None

    def _view(self, tag: str):
        return self.slicer_app.view_manager.get_view(tag)

    def _show(self, tag: str, background=None, foreground=None, opacity: Optional[float] = None) -> None:
        """Set a view's layers (node or None), link it, and render."""
        comp = self._composite(tag)
        if comp is None:
            return
        comp.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        comp.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        if opacity is not None:
            comp.SetForegroundOpacity(float(opacity))
        comp.SetLinkedControl(True)
        comp.SetHotLinkedControl(True)

    def _reset_views(self, tags) -> None:
        """Fit the views to their volumes now and again once the browser has sized them (a view shown for
        the first time has no size until its image element reports one)."""
        from trame_server.utils.asynchronous import create_task

        tags = list(tags)
        self._pending_fit.update(tags)
        for tag in tags:
            self._observe_resize(tag)
        self._fit(tags)

        async def refit():
            for delay in REFIT_DELAYS_S:
                await asyncio.sleep(delay)
                self._fit(tags)
            self._pending_fit.difference_update(tags)  # from now on a resize keeps the user's zoom

        create_task(refit())

    def _observe_resize(self, tag: str) -> None:
        """Fit a view again when the browser reports its size, until the user interacts with a new layout."""
        from vtkmodules.vtkCommonCore import vtkCommand

        view = self._view(tag)
        if view is None or tag in self._resize_observed:
            return
        self._resize_observed.add(tag)

        def on_resize(*_):
            if tag in self._pending_fit:
                self._fit([tag])

        view.interactor().AddObserver(vtkCommand.WindowResizeEvent, on_resize)

    def _fit(self, tags) -> None:
        for tag in tags:
            view = self._view(tag)
            if view is not None:
                view.fit_view_to_content()
                view.schedule_render()

    def _render(self, tags=None) -> None:
        for tag in tags or [t for t, _, _ in MAIN_VIEWS]:
            view = self._view(tag)
            if view is not None:
                view.schedule_render()

    def show_main(self, reset: bool = False) -> None:
        """Main layout: background = the selected result (or the sodium input), foreground = proton."""
        background = self._selected_output() or self.session.inputs.get("sodium")
        proton = self.session.inputs.get("proton") if self.state.show_proton else None
        for tag, _, _ in MAIN_VIEWS:
            self._show(tag, background, proton, self.state.fg_opacity)
        self._sync_window_level(background)
        if self.layout_manager.layout_id != "main":
            self.layout_manager.set_layout("main")
        self.state.layout = "main"
        if reset:
            self._reset_views([t for t, _, _ in MAIN_VIEWS])
        self._render()

    def show_compare(self) -> None:
        """Compare layout: input | result | proton, or the chosen runs side by side (linked axial views)."""
        s = self.session
        if self.state.compare_mode == "runs":
            numbers = [int(n) for n in (self.state.compare_runs or [])][: len(COMPARE_TAGS)]
            nodes = [s.entry(n).nodes.get("output") for n in numbers]
            nodes = [n for n in nodes if n is not None]
            if len(nodes) < 2:
                raise InputError("choose at least two finished runs to compare side by side")
            titles = [f"run #{n}" for n in numbers]
        else:
            if "sodium" not in s.inputs:
                raise InputError("no sodium volume loaded; load a file or the phantom first")
            result = self._selected_output()
            if result is None:
                raise InputError("no result yet: run a method first (Apply)")
            nodes = [s.inputs["sodium"], result] + ([s.inputs["proton"]] if "proton" in s.inputs else [])
            titles = ["input", "result", "proton"][: len(nodes)]
        layout_id = f"compare{len(nodes)}"
        self.layout_manager.set_layout(layout_id)
        tags = COMPARE_TAGS[: len(nodes)]
        for tag, node in zip(tags, nodes):
            self._show(tag, node, None)
        # one window/level for the sodium panels (input and results) so that they compare fairly
        window, level = self._auto_window_level(nodes[0])
        for node in nodes[1:]:
            if node is s.inputs.get("proton"):
                self._auto_window_level(node)
            else:
                node.GetDisplayNode().SetAutoWindowLevel(False)
                node.GetDisplayNode().SetWindowLevel(window, level)
        self.state.layout = "compare"
        self.state.compare_titles = titles
        self._reset_views(tags)

    # --- window / level ----------------------------------------------------------------------------------

    @staticmethod
    def _auto_window_level(node) -> tuple:
        """Window/level from the 1st-99.9th percentiles of the voxels (set on the node's display node)."""
        import slicer

        display = node.GetDisplayNode()
        if display is None:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
        lo, hi = np.percentile(slicer.util.arrayFromVolume(node), [1.0, 99.9])
        window = max(float(hi - lo), 1e-6)
        level = float(lo + hi) / 2.0
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(window, level)
        return window, level

    def _sync_window_level(self, node) -> None:
        if node is None:
            return
        window, level = self._auto_window_level(node)
        self.state.window_max = _round(3 * window)
        self.state.level_min, self.state.level_max = _round(level - 2 * window), _round(level + 2 * window)
        self.state.window, self.state.level = _round(window), _round(level)

    def set_window_level(self, window, level) -> None:
        node = self._selected_output() or self.session.inputs.get("sodium")
        if node is None or node.GetDisplayNode() is None:
            return
        node.GetDisplayNode().SetAutoWindowLevel(False)
        node.GetDisplayNode().SetWindowLevel(max(float(window), 1e-6), float(level))
        self._render()

    # --- state and UI --------------------------------------------------------------------------------------

    def _init_state(self) -> None:
        st = self.state
        methods = self.session.methods
        names = [n for n, m in methods.items() if m.get("available", True)]
        st.update({
            "methods": [{"title": f"{n}: {methods[n].get('description', '')}"[:80], "value": n} for n in names],
            "method": "tv" if "tv" in names else names[0], "preset": "fast", "presets": [],
            "fields": [], "form": {}, "data_files": self.session.data_files(),
            "sodium_file": None, "proton_file": None, "error": "", "info": "", "running": False,
            "progress": 0, "progress_text": "", "iteration": 0, "max_iterations": 0, "eta": None,
            "history": [], "selected_run": None, "compare_mode": "input", "compare_runs": [],
            "compare_titles": [], "layout": "main", "metrics_header": [], "metrics_rows": [],
            "plot_svg": "", "window": 1.0, "level": 0.5, "window_max": 1.0, "level_min": 0.0, "level_max": 1.0,
            "fg_opacity": 0.3, "show_proton": True, "save_name": "", "loaded": "", "preview_updates": 0,
        })
        self._method_changed()
        st.change("method")(lambda **_: self._guard(self._method_changed))
        st.change("preset")(lambda **_: self._guard(self._preset_changed))
        st.change("window", "level")(lambda window, level, **_: self._guard(self.set_window_level, window, level))
        st.change("fg_opacity", "show_proton")(lambda **_: self._guard(self._refresh_layers))
        st.change("selected_run")(lambda **_: self._guard(self._selected_changed))

    def _method_changed(self) -> None:
        method = self.session.methods[self.state.method]
        presets = list(method.get("presets") or {})
        self.state.presets = presets
        if self.state.preset not in presets:
            self.state.preset = "fast" if "fast" in presets else presets[0]
        self.state.fields = parameters.form_fields(method)
        self._preset_changed()

    def _preset_changed(self) -> None:
        method = self.session.methods[self.state.method]
        self.state.form = parameters.form_values(method, self.state.preset)

    def _refresh_layers(self) -> None:
        if self.state.layout == "main" and self.session.inputs:
            self.show_main()

    def _selected_changed(self) -> None:
        if self.state.layout == "main":
            self.show_main()
        else:
            self.show_compare()

    def _selected_output(self):
        number = self.state.selected_run
        if number is None:
            return None
        try:
            return self.session.entry(int(number)).nodes.get("output")
        except InputError:
            return None

    def _guard(self, fn, *args):
        """Run a callback; an InputError (or a failed worker start) becomes the panel's error line."""
        try:
            self.state.error = ""
            return fn(*args)
        except (InputError, RuntimeError, OSError) as exc:
            self.state.error = str(exc)
            return None

    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame.widgets import html, vuetify3 as v

        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("SodiumDIP")
            layout.root.theme = "dark"
            with layout.toolbar:
                v.VSpacer()
                v.VBtn("Main views", id="layout-main", click=lambda: self._guard(self.show_main, True),
                       variant="text")
                v.VSelect(v_model=("compare_mode",), id="compare-mode", density="compact", hide_details=True,
                          items=("[{title: 'input | result | proton', value: 'input'}, "
                                 "{title: 'runs side by side', value: 'runs'}]",), style="max-width: 230px")
                v.VBtn("Compare", id="layout-compare", click=lambda: self._guard(self.show_compare),
                       variant="text")
            with layout.drawer as drawer:
                drawer.width = 420
                with v.VContainer(classes="pa-2", style="font-size: 0.85rem"):
                    self._inputs_ui(v)
                    self._run_ui(v, html)
                    self._results_ui(v, html)
            with layout.content:
                with html.Div(style="height: 100%; display: flex; flex-direction: column"):
                    with html.Div(v_if="layout === 'compare'", id="compare-titles",
                                  style="display: flex; color: #ddd; font-size: 0.8rem"):
                        html.Div("{{ t }}", v_for="t in compare_titles", style="flex: 1; text-align: center")
                    with html.Div(style="flex: 1; display: flex"):
                        self.layout_manager.initialize_layout_grid(layout)
        self.ui = layout

    def _inputs_ui(self, v) -> None:
        v.VAlert("{{ error }}", v_if="error", id="error", type="error", density="compact", classes="mb-2",
                 closable=True, click_close="error = ''")
        v.VAlert("{{ info }}", v_if="info", id="info", type="info", density="compact", classes="mb-2")
        v.VBtn("Load phantom", id="load-phantom", block=True, classes="mb-2",
               click=lambda: self._guard(self.load_phantom), disabled=("running",))
        v.VSelect(label="sodium file (data folder)", id="sodium-file", v_model=("sodium_file",),
                  items=("data_files",), density="compact", clearable=True)
        v.VSelect(label="proton file (data folder)", id="proton-file", v_model=("proton_file",),
                  items=("data_files",), density="compact", clearable=True)
        v.VBtn("Load files", id="load-files", block=True, classes="mb-2", disabled=("running",),
               click=lambda: self._guard(self.load_files))
        v.VSlider(v_model=("window",), label="window", id="window", min=0, max=("window_max",),
                  step=("window_max / 200",), density="compact", hide_details=True)
        v.VSlider(v_model=("level",), label="level", id="level", min=("level_min",), max=("level_max",),
                  step=("(level_max - level_min) / 200",), density="compact", hide_details=True)
        v.VCheckbox(v_model=("show_proton",), label="proton as foreground layer", id="show-proton",
                    density="compact", hide_details=True)
        v.VSlider(v_model=("fg_opacity",), label="proton opacity", id="fg-opacity", min=0, max=1, step=0.05,
                  density="compact", hide_details=True)
        v.VDivider(classes="my-2")

    def _run_ui(self, v, html) -> None:
        v.VSelect(label="method", id="method", v_model=("method",), items=("methods",), density="compact")
        v.VSelect(label="preset", id="preset", v_model=("preset",), items=("presets",), density="compact")
        with v.VExpansionPanels(density="compact", classes="mb-2"):
            with v.VExpansionPanel(title="parameters", id="parameters"):
                with v.VExpansionPanelText():
                    with html.Div(v_for="f in fields", key="f.name"):
                        v.VCheckbox(v_if="f.type === 'bool'", v_model="form[f.name]", label=("f.label",),
                                    density="compact", hide_details=True, title=("f.hint",), id=("`param-${f.name}`",),
                                    update_modelValue="flushState('form')")
                        v.VSelect(v_else_if="f.type === 'choice'", v_model="form[f.name]", label=("f.label",),
                                  items=("f.choices",), density="compact", hint=("f.hint",), persistent_hint=True,
                                  id=("`param-${f.name}`",),
                                  update_modelValue="flushState('form')")
                        v.VTextField(v_else=True, v_model="form[f.name]", label=("f.label",), density="compact",
                                     hint=("f.hint",), persistent_hint=True, id=("`param-${f.name}`",),
                                     update_modelValue="flushState('form')")
        with html.Div(style="display: flex; gap: 8px"):
            v.VBtn("Apply", id="apply", color="primary", disabled=("running",), style="flex: 1",
                   click=(self.on_apply, "[form]"))
            v.VBtn("Cancel", id="cancel", color="error", disabled=("!running",), style="flex: 1",
                   click=lambda: self._guard(self.cancel))
        v.VProgressLinear(model_value=("progress",), id="progress", height=18, color="primary", classes="mt-2",
                          indeterminate=("running && !max_iterations",))
        html.Div("{{ progress_text }}", id="progress-text", style="min-height: 1.2em")
        v.VDivider(classes="my-2")

    def _results_ui(self, v, html) -> None:
        v.VSelect(label="show run", id="selected-run", v_model=("selected_run",), density="compact",
                  items=("history.filter(h => h.has_output).map(h => ({title: h.label, value: h.number}))",))
        v.VSelect(label="runs to compare", id="compare-runs", v_model=("compare_runs",), multiple=True,
                  chips=True, density="compact",
                  items=("history.filter(h => h.has_output).map(h => ({title: '#' + h.number + ' ' + h.method, "
                         "value: h.number}))",))
        with html.Div(style="display: flex; gap: 8px"):
            v.VTextField(v_model=("save_name",), label="file name (data folder)", id="save-name",
                         density="compact", hide_details=True)
            v.VBtn("Save", id="save", disabled=("selected_run === null",), click=lambda: self._guard(self.save))
        html.Div("History", classes="text-subtitle-2 mt-2")
        with html.Ul(id="history", style="padding-left: 1.2em"):
            html.Li("{{ h.label }}{{ h.error ? ': ' + h.error : '' }}", v_for="h in history", key="h.number")
        html.Div("Metrics (scene table)", classes="text-subtitle-2 mt-2")
        with html.Div(style="overflow-x: auto"):
            with html.Table(id="metrics", style="font-size: 0.75rem; border-collapse: collapse"):
                with html.Tr():
                    html.Th("{{ c }}", v_for="c in metrics_header", style="padding: 0 4px; text-align: left")
                with html.Tr(v_for="(r, i) in metrics_rows", key="i"):
                    html.Td("{{ x }}", v_for="x in r", style="padding: 0 4px")
        html.Div("Convergence (scene plot)", classes="text-subtitle-2 mt-2")
        html.Div(v_html=("plot_svg",), id="plot")

    # --- actions --------------------------------------------------------------------------------------------

    def load_phantom(self) -> None:
        self.session.load_phantom(shape=self.phantom_shape)
        self.state.loaded = f"phantom {self.phantom_shape}^3 (sodium, proton, reference, brain mask, lesion)"
        self.state.info = f"loaded the {self.state.loaded}"
        self.state.selected_run = None
        self.show_main(reset=True)

    def load_files(self) -> None:
        if not self.state.sodium_file:
            raise InputError("choose a sodium file from the data folder")
        self.session.load_file("sodium", self.state.sodium_file)
        if self.state.proton_file:
            self.session.load_file("proton", self.state.proton_file)
        self.state.loaded = ", ".join(f for f in (self.state.sodium_file, self.state.proton_file) if f)
        self.state.info = f"loaded {self.state.loaded}"
        self.state.selected_run = None
        self.show_main(reset=True)

    def on_apply(self, form=None) -> None:
        self._guard(self.apply, form)

    def apply(self, form=None) -> None:
        if form is not None:
            self.state.form = form
        entry = self.session.start(self.state.method, self.state.preset, dict(self.state.form or {}))
        self.state.running, self.state.progress, self.state.info = True, 0, ""
        self.state.max_iterations, self.state.iteration, self.state.preview_updates = 0, 0, 0
        self.state.progress_text = f"run #{entry.number}: starting the worker"
        self._update_history()
        from trame_server.utils.asynchronous import create_task

        self._poller = create_task(self._poll_loop())

    def cancel(self) -> None:
        self.state.progress_text = "cancelling: the worker writes its best result so far"
        self.state.flush()
        self.session.cancel()

    async def _poll_loop(self) -> None:
        while True:
            with self.state:
                try:
                    self._poll_once()
                except (InputError, RuntimeError, OSError) as exc:
                    self.state.error = str(exc)
                if not self.session.running:
                    self._run_ended()
                    return
            await asyncio.sleep(POLL_INTERVAL_S)

    def _poll_once(self) -> None:
        entry = self.session.current
        events = self.session.poll()
        run = entry.run
        if run.max_iterations:
            self.state.max_iterations = int(run.max_iterations)
            self.state.progress = min(100.0, 100.0 * run.iteration / run.max_iterations)
        self.state.iteration = int(run.iteration or 0)
        self.state.eta = run.eta
        if run.running:
            self.state.progress_text = _progress_text(entry.number, run)
        if any(e.kind == "snapshot" for e in events) and run.preview is not None and run.preview.node is not None:
            for tag, _, _ in MAIN_VIEWS:  # Slicer's panel shows the live result as an opaque foreground
                self._show(tag, self.session.inputs.get("sodium"), run.preview.node, 1.0)
            self.state.preview_updates += 1
            self._render()

    def _run_ended(self) -> None:
        entry = self.session.current
        run = entry.run
        self.state.running = False
        if "output" in entry.nodes:
            what = "cancelled; kept the best result so far" if run.state == "cancelled" else "done"
            record = entry.record or {}
            seconds = record.get("seconds")
            self.state.progress = 100 if run.state == "finished" else self.state.progress
            self.state.progress_text = (f"run #{entry.number} {what}: {record.get('iterations')} iterations"
                                        + (f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""))
            self.state.selected_run = entry.number
            self._update_results(entry)
        else:
            self.state.progress_text = f"run #{entry.number} {run.state}"
            self.state.error = f"run #{entry.number} ({entry.method}) failed: {run.error or run.state}"
        self._update_history()
        if self.state.layout == "main":
            self.show_main()
        else:
            self.show_compare()

    def _update_history(self) -> None:
        self.state.history = [e.summary() for e in self.session.history]

    def _update_results(self, entry) -> None:
        from SodiumDIPLib.apps import scene as sc

        rows = sc.table_rows(self.session.table_node)
        header = [c for c in ("method", "preset", "iterations", "seconds") if rows and c in rows[0]]
        metric_cols = [c for c in (rows[0] if rows else {}) if c not in sc.TABLE_COLUMNS]
        preferred = [c for c in metric_cols if c.startswith(("psnr", "ssim", "nrmse"))][:6] or metric_cols[:6]
        self.state.metrics_header = header + preferred
        self.state.metrics_rows = [[_cell(r.get(c)) for c in header + preferred] for r in rows]
        self.state.plot_svg = convergence_svg(entry.nodes.get("plot_table"))

    def save(self) -> None:
        if self.state.selected_run is None:
            raise InputError("choose a run to save")
        paths = self.session.save(int(self.state.selected_run), self.state.save_name or "")
        self.state.info = "saved " + ", ".join(Path(p).name for p in paths)
        self.state.data_files = self.session.data_files()
        self._update_history()


# --- helpers -------------------------------------------------------------------------------------------

def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def _progress_text(number: int, run) -> str:
    total = f"/{run.max_iterations}" if run.max_iterations else ""
    text = f"run #{number}: iteration {run.iteration}{total}"
    if run.loss is not None:
        text += f", loss {run.loss:.4g}"
    if run.eta is not None:
        text += f", ETA {int(run.eta) // 60}:{int(run.eta) % 60:02d}"
    return text


def convergence_svg(plot_table_node, width: int = 380, height: int = 140) -> str:
    """The run's convergence curves (the scene's plot table) as a small SVG: each curve scaled to its range."""
    if plot_table_node is None:
        return ""
    table = plot_table_node.GetTable()
    x_col = table.GetColumnByName("iteration")
    if x_col is None or table.GetNumberOfRows() < 2:
        return ""
    n = table.GetNumberOfRows()
    xs = np.array([x_col.GetValue(i) for i in range(n)], float)
    colors = ("#e0562a", "#2a8be0", "#78b030", "#b05ad0", "#e0b020")
    lines, legend = [], []
    names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    for k, name in enumerate(c for c in names if c != "iteration"):
        col = table.GetColumnByName(name)
        ys = np.array([col.GetValue(i) for i in range(n)], float)
        ok = np.isfinite(ys)
        if ok.sum() < 2:
            continue
        lo, hi = float(ys[ok].min()), float(ys[ok].max())
        span = (hi - lo) or 1.0
        xspan = (xs.max() - xs.min()) or 1.0
        pts = " ".join(f"{5 + (width - 10) * (x - xs.min()) / xspan:.1f},{height - 18 - (height - 28) * (y - lo) / span:.1f}"
                       for x, y in zip(xs[ok], ys[ok]))
        color = colors[len(lines) % len(colors)]
        lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        legend.append(f'<tspan fill="{color}">{_escape(name)} [{lo:.3g}, {hi:.3g}]  </tspan>')
    if not lines:
        return ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'style="background:#111">{"".join(lines)}<text x="4" y="{height - 4}" font-size="9">'
            f'{"".join(legend[:4])}</text></svg>')


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def serve(data_folder, host: str = "127.0.0.1", port: int = 8080, python_executable: Optional[str] = None,
          phantom_shape: int = 24) -> int:
    """Build the app and serve it until interrupted (blocking). Prints one line with the URL when ready."""
    from SodiumDIPLib.apps.jobs import describe_methods

    t0 = time.perf_counter()
    folder = Path(data_folder)
    if not folder.is_dir():
        raise InputError(f"--data {data_folder}: not a folder; expected a folder of volume files")
    try:
        methods = describe_methods(python_executable)
    except RuntimeError as exc:
        raise InputError(f"cannot list the methods: {exc}") from None
    app = SodiumDIPApp(folder, methods, python_executable=python_executable, phantom_shape=phantom_shape)

    def ready(**_):
        print(f"SodiumDIP app ready at http://{host}:{port}/ (start {time.perf_counter() - t0:.2f} s)",
              flush=True)

    app.ctrl.on_server_ready.add(ready)
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame reads its own options from sys.argv: give it none
    try:
        app.server.start(port=port, host=host, open_browser=False, show_connection_info=False, timeout=0)
    finally:
        sys.argv = argv
        app.session.shutdown()
    return 0
