"""The MRML side of SodiumDIP, headless: volume nodes <-> engine Volumes, result nodes, metrics, plots.

Works with a plain ``vtkMRMLScene`` (the PyPI package ``slicer-core`` provides MRML without the Slicer
application), so it is tested outside Slicer; the module passes ``slicer.mrmlScene``. Nothing here imports
``qt``, ``ctk`` or ``slicer.app``.

Geometry goes through ``SodiumDIPLib.data.volume`` (``ijk_to_ras_matrix`` / ``volume_from_ijk_to_ras`` /
``to_vtk_matrix``), the one place that converts between Slicer's IJK-to-RAS and the engine's LPS.

``SceneRun`` ties a worker job (``SodiumDIPLib.apps.jobs``) to the scene: it exports the input nodes, shows
snapshots in a temporary preview node while the optimiser runs, and applies the results (output and
bias-field volumes, a metrics-table row, the convergence plot, the parameters used) only after the worker
reported success. A failed or cancelled-without-result run leaves the scene as it was.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.io import json_default
from SodiumDIPLib.data.volume import Volume, as_3d, ijk_to_ras_matrix, to_vtk_matrix, volume_from_ijk_to_ras

#: Node attribute holding the JSON record of the run that produced a volume (method, preset, parameters).
RUN_ATTRIBUTE = "SodiumDIP.run"
#: Parameter-node key holding the last run's record.
LAST_RUN_PARAMETER = "LastRun"
PREVIEW_NODE_NAME = "SodiumDIP live preview"
#: Where the worker's log of a failed run is kept (the run's temporary folder is removed).
LOG_FOLDER = Path(tempfile.gettempdir()) / "SodiumDIP-logs"
#: Fixed metrics-table columns (every metric gets its own column after these).
TABLE_COLUMNS = ("method", "preset", "mode", "parameters", "stop_rule", "iterations", "seconds")


def _slicer():
    import slicer  # slicer-core outside Slicer, the application's module inside it

    return slicer


def _vtk_matrix_to_numpy(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


# --- volumes -------------------------------------------------------------------------------------------

def node_ijk_to_world(node) -> np.ndarray:
    """4x4 IJK-to-world (RAS) matrix of a volume node, including a linear parent transform.

    Raises InputError when the node sits under a non-linear transform (it must be hardened first).
    """
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = _vtk_matrix_to_numpy(m)
    parent = node.GetParentTransformNode()
    if parent is None:
        return ijk_to_ras
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"volume {node.GetName()!r} is under the non-linear transform {parent.GetName()!r}; "
                         "harden the transform first (Data module: right-click > Harden transform)")
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return _vtk_matrix_to_numpy(to_world) @ ijk_to_ras


def volume_node_to_volume(node, role: str = "volume") -> Volume:
    """A scalar (or label-map) volume node as an engine Volume (float32 copy, world geometry)."""
    slicer = _slicer()
    if node is None:
        raise InputError(f"no {role} volume selected")
    if node.GetImageData() is None:
        raise InputError(f"{role} volume {node.GetName()!r} holds no image data")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{role} volume {node.GetName()!r} is a {node.GetClassName()}; expected a scalar volume")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    if array.ndim != 3:
        raise InputError(f"{role} volume {node.GetName()!r} has {array.ndim} dimensions; expected a scalar 3D volume")
    return volume_from_ijk_to_ras(array, node_ijk_to_world(node))


def update_volume_node(node, volume: Volume) -> None:
    """Write voxels and geometry of ``volume`` into ``node`` (IJK-to-RAS set exactly; no parent transform)."""
    slicer = _slicer()
    volume = as_3d(volume)
    if node.GetParentTransformNode() is not None:
        node.SetAndObserveTransformNodeID(None)  # the geometry written is already in world coordinates
    node.SetIJKToRASMatrix(to_vtk_matrix(ijk_to_ras_matrix(volume)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array, dtype=np.float32))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def get_or_create_node(scene, class_name: str, name: str, node=None):
    """``node`` when given (and of the right class), else a new node of ``class_name`` called ``name``."""
    if node is not None:
        if not node.IsA(class_name):
            raise InputError(f"node {node.GetName()!r} is a {node.GetClassName()}; expected {class_name}")
        return node
    return scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))


def set_run_record(node, record: dict) -> None:
    """Keep the run's description (method, preset, parameters, metrics) on the node that holds its result."""
    node.SetAttribute(RUN_ATTRIBUTE, json.dumps(record, default=json_default, sort_keys=True))


def get_run_record(node) -> Optional[dict]:
    text = node.GetAttribute(RUN_ATTRIBUTE) if node is not None else None
    return json.loads(text) if text else None


# --- parameters ----------------------------------------------------------------------------------------

def store_parameters(parameter_node, values: dict, key: str = LAST_RUN_PARAMETER) -> None:
    """Store a dict as JSON in a (vtkMRMLScriptedModuleNode) parameter node: it is saved with the scene."""
    parameter_node.SetParameter(key, json.dumps(values, default=json_default, sort_keys=True))


def load_parameters(parameter_node, key: str = LAST_RUN_PARAMETER) -> dict:
    text = parameter_node.GetParameter(key) if parameter_node is not None else ""
    return json.loads(text) if text else {}


# --- the panel's Advanced section <-> method parameters -------------------------------------------------

#: Advanced-section field of the module's parameter node -> the engine parameter name(s) it sets. A method
#: uses the first name it knows (``dtv`` calls the proton edge threshold ``eta``, DIP-Fusion ``eta_h``).
PANEL_PARAMETERS = {
    "weightDtv": ("weight_dtv",),
    "weightGc": ("weight_gc",),
    "weightBias": ("weight_bias",),
    "lambdaSigma": ("lambda_sigma",),
    "gamma": ("gamma",),
    "etaProton": ("eta_h", "eta"),
    "etaSodium": ("eta_na",),
    "fusionWeightProton": ("w_h",),
    "fusionWeightSodium": ("w_na",),
    "fusion": ("fusion",),
    "biasDegree": ("bias_degree",),
    "protonInput": ("proton_input",),
    "iterations": ("iterations",),
    "learningRate": ("lr",),
    "stopping": ("stopping",),
    "stopPatience": ("stop_patience",),
}


def engine_name(field: str, preset_params: dict) -> Optional[str]:
    """The engine parameter a panel field sets for a method (the first of its names the preset has)."""
    return next((n for n in PANEL_PARAMETERS[field] if n in preset_params), None)


_engine_name = engine_name


def panel_values(preset_params: dict) -> dict:
    """Panel field -> value of a preset (fields the method does not have are left out)."""
    out = {}
    for field in PANEL_PARAMETERS:
        name = _engine_name(field, preset_params)
        if name is not None:
            out[field] = preset_params[name]
    return out


def panel_overrides(preset_params: dict, values: dict) -> dict:
    """Engine overrides from panel values: only fields the method has and whose value differs from the preset."""
    overrides = {}
    for field, value in values.items():
        if field not in PANEL_PARAMETERS or value is None:
            continue
        name = _engine_name(field, preset_params)
        if name is None:
            continue
        default = preset_params[name]
        if isinstance(default, float) or isinstance(value, float):
            same = _is_number(default) and _is_number(value) and math.isclose(float(default), float(value),
                                                                                rel_tol=1e-9, abs_tol=1e-12)
        else:
            same = default == value
        if not same:
            overrides[name] = value
    return overrides


# --- metrics table ------------------------------------------------------------------------------------

def flatten_metrics(metrics: dict, prefix: str = "") -> dict:
    """Nested metric dicts as flat ``{"group.name": value}`` (numbers stay numbers, the rest text)."""
    flat = {}
    for key, value in (metrics or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=json_default)
        else:
            flat[name] = value
    return flat


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _column(table_node, name: str, numeric: bool):
    """The table's column ``name``, created (filled with empty values for earlier rows) if missing."""
    import vtk

    table = table_node.GetTable()
    column = table.GetColumnByName(name)
    if column is not None:
        return column
    column = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
    column.SetName(name)
    column.SetNumberOfTuples(table.GetNumberOfRows())
    for r in range(table.GetNumberOfRows()):
        if numeric:
            column.SetValue(r, math.nan)
        else:
            column.SetValue(r, "")
    table_node.AddColumn(column)
    return column


def append_metrics_row(table_node, record: dict) -> int:
    """Add one row for a run: method, preset, mode, parameters (JSON), stop rule, iterations, seconds, then
    one column per metric (flattened). Missing values of earlier/later runs stay empty (NaN). Returns the row.
    """
    metrics = flatten_metrics(record.get("metrics") or {})
    values = {
        "method": record.get("method", ""), "preset": record.get("preset", ""), "mode": record.get("mode", "volume"),
        "parameters": json.dumps(record.get("params") or {}, default=json_default, sort_keys=True),
        "stop_rule": record.get("stop_rule", ""), "iterations": record.get("iterations"),
        "seconds": record.get("seconds"),
    }
    values.update(metrics)
    wasModifying = table_node.StartModify()
    try:
        for name in TABLE_COLUMNS:
            _column(table_node, name, numeric=name in ("iterations", "seconds"))
        for name, value in metrics.items():
            _column(table_node, name, numeric=_is_number(value) or value is None)
        table = table_node.GetTable()
        row = table_node.AddEmptyRow()
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            name = column.GetName()
            value = values.get(name)
            if column.IsA("vtkDoubleArray"):
                column.SetValue(row, float(value) if _is_number(value) else math.nan)
            elif column.IsA("vtkStringArray"):
                column.SetValue(row, "" if value is None else (f"{value:.6g}" if _is_number(value) else str(value)))
        table.Modified()
    finally:
        table_node.EndModify(wasModifying)
    return row


def table_rows(table_node) -> list:
    """The table as a list of dicts (column name -> value; NaN for empty numbers). For tests and reports."""
    table = table_node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            row[column.GetName()] = column.GetValue(r)
        rows.append(row)
    return rows


# --- convergence plot ---------------------------------------------------------------------------------

#: Colours of the plot series, in order (RGB 0..1).
SERIES_COLORS = ((0.85, 0.33, 0.1), (0.0, 0.45, 0.74), (0.47, 0.67, 0.19), (0.49, 0.18, 0.56),
                 (0.93, 0.69, 0.13), (0.3, 0.75, 0.93), (0.64, 0.08, 0.18))


def history_columns(history: list) -> dict:
    """Per-iteration curves from a run's history: {"iteration": [...], name: [...]} (numeric keys only)."""
    names = []
    for entry in history:
        for k, v in entry.items():
            if k not in ("iteration", "elapsed") and _is_number(v) and k not in names:
                names.append(k)
    columns = {"iteration": [float(e.get("iteration", i)) for i, e in enumerate(history)]}
    for name in names:
        columns[name] = [float(e[name]) if _is_number(e.get(name)) else math.nan for e in history]
    return columns


def update_convergence_plot(scene, history: list, title: str = "SodiumDIP convergence", chart_node=None,
                            table_node=None):
    """Fill a table with the history's curves and show one plot series per curve against the iteration.

    Reuses ``chart_node`` / ``table_node`` when given (their old series are replaced). Returns
    (chart_node, table_node, [series nodes]).
    """
    import vtk

    columns = history_columns(history)
    table_node = get_or_create_node(scene, "vtkMRMLTableNode", f"{title} table", table_node)
    chart_node = get_or_create_node(scene, "vtkMRMLPlotChartNode", title, chart_node)
    table = table_node.GetTable()
    wasModifying = table_node.StartModify()
    try:
        table.Initialize()
        for name, values in columns.items():
            arr = vtk.vtkDoubleArray()
            arr.SetName(name)
            arr.SetNumberOfTuples(len(values))
            for i, v in enumerate(values):
                arr.SetValue(i, v)
            table.AddColumn(arr)
        table.Modified()
    finally:
        table_node.EndModify(wasModifying)
    for i in reversed(range(chart_node.GetNumberOfPlotSeriesNodes())):
        old = chart_node.GetNthPlotSeriesNode(i)
        chart_node.RemoveNthPlotSeriesNodeID(i)
        if old is not None and old.GetAttribute("SodiumDIP.series") == "1":
            scene.RemoveNode(old)
    series = []
    for i, name in enumerate(n for n in columns if n != "iteration"):
        s = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{title}: {name}")
        s.SetAttribute("SodiumDIP.series", "1")
        s.SetAndObserveTableNodeID(table_node.GetID())
        s.SetXColumnName("iteration")
        s.SetYColumnName(name)
        s.SetPlotType(s.PlotTypeScatter)
        s.SetMarkerStyle(s.MarkerStyleNone)
        s.SetColor(*SERIES_COLORS[i % len(SERIES_COLORS)])
        chart_node.AddAndObservePlotSeriesNodeID(s.GetID())
        series.append(s)
    chart_node.SetTitle(title)
    chart_node.SetXAxisTitle("iteration")
    chart_node.SetYAxisTitle("value")
    return chart_node, table_node, series


# --- compare layout -----------------------------------------------------------------------------------

#: Custom layout id (outside Slicer's built-in range) for sodium | result | proton + a table view.
COMPARE_LAYOUT_ID = 5823
COMPARE_VIEWS = (("Red", "#F34A33", "sodium"), ("Yellow", "#EDD54C", "result"), ("Green", "#6EB04B", "proton"))


def compare_layout_xml(orientation: str = "Axial") -> str:
    """Layout description: three linked slice views side by side above a table view."""
    views = "".join(
        f'<item><view class="vtkMRMLSliceNode" singletontag="{tag}">'
        f'<property name="orientation" action="default">{orientation}</property>'
        f'<property name="viewlabel" action="default">{tag[0]}</property>'
        f'<property name="viewcolor" action="default">{color}</property></view></item>'
        for tag, color, _ in COMPARE_VIEWS)
    return ('<layout type="vertical" split="true">'
            f'<item splitSize="700"><layout type="horizontal">{views}</layout></item>'
            '<item splitSize="300"><view class="vtkMRMLTableViewNode" singletontag="TableView1">'
            '<property name="viewlabel" action="default">T</property></view></item>'
            '</layout>')


def register_compare_layout(layout_node, orientation: str = "Axial") -> int:
    """Add (or refresh) the compare layout on a vtkMRMLLayoutNode and switch to it. Returns its id."""
    xml = compare_layout_xml(orientation)
    if layout_node.IsLayoutDescription(COMPARE_LAYOUT_ID):
        layout_node.SetLayoutDescription(COMPARE_LAYOUT_ID, xml)
    else:
        layout_node.AddLayoutDescription(COMPARE_LAYOUT_ID, xml)
    layout_node.SetViewArrangement(COMPARE_LAYOUT_ID)
    return COMPARE_LAYOUT_ID


def show_side_by_side(scene, sodium_node, result_node, proton_node=None, table_node=None,
                      orientation: str = "Axial") -> int:
    """Put sodium | result | proton in the Red | Yellow | Green views, link them, show the table.

    Works on the slice / slice composite / table view nodes present in the scene (the layout manager
    creates them when the compare layout is shown). The three views get ``orientation`` explicitly: a
    layout's "default" orientation applies only to views it creates, and Yellow / Green already exist
    (sagittal / coronal) in every session. Returns how many slice views were set.
    """
    volumes = {"Red": sodium_node, "Yellow": result_node, "Green": proton_node}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        slice_node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if slice_node.GetLayoutName() in volumes:
            slice_node.SetOrientation(orientation)
    count = 0
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        comp = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        name = comp.GetLayoutName()
        if name not in volumes:
            continue
        vol = volumes[name]
        comp.SetBackgroundVolumeID(vol.GetID() if vol is not None else None)
        comp.SetForegroundVolumeID(None)
        comp.SetLinkedControl(True)
        comp.SetHotLinkedControl(True)
        count += 1
    if table_node is not None:
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableViewNode")):
            scene.GetNthNodeByClass(i, "vtkMRMLTableViewNode").SetTableNodeID(table_node.GetID())
    return count


# --- the slice a view shows ---------------------------------------------------------------------------

def slice_for_view(volume_node, slice_node_or_matrix) -> tuple:
    """(axis, index) of the volume slice closest to what a slice view shows, for the 2D preview.

    ``slice_node_or_matrix``: a vtkMRMLSliceNode (its SliceToRAS) or a 4x4 SliceToRAS matrix. The axis is the
    volume's i/j/k axis most parallel to the view's normal; the index is the slice through the view's
    centre, clamped to the volume. Raises InputError when the view does not cut the volume.
    """
    if hasattr(slice_node_or_matrix, "GetSliceToRAS"):
        slice_to_ras = _vtk_matrix_to_numpy(slice_node_or_matrix.GetSliceToRAS())
    else:
        slice_to_ras = np.asarray(slice_node_or_matrix, dtype=float)
        if hasattr(slice_node_or_matrix, "GetElement"):
            slice_to_ras = _vtk_matrix_to_numpy(slice_node_or_matrix)
    ijk_to_world = node_ijk_to_world(volume_node)
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    axes = ijk_to_world[:3, :3] / np.linalg.norm(ijk_to_world[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(axes.T @ normal)))
    ijk = np.linalg.solve(ijk_to_world, np.append(slice_to_ras[:3, 3], 1.0))[:3]
    dims = volume_node.GetImageData().GetDimensions()
    index = int(round(ijk[axis]))
    if not -0.5 <= ijk[axis] <= dims[axis] - 0.5:
        raise InputError(f"the slice view does not cut the volume {volume_node.GetName()!r}; "
                         "move the Red view's slider into the sodium volume")
    return "ijk"[axis], min(max(index, 0), dims[axis] - 1)


# --- live preview -------------------------------------------------------------------------------------

class LivePreview:
    """A temporary volume node showing the optimiser's snapshots; removed when the run ends.

    The chosen output node is only written once the run succeeded, so a failed run leaves it untouched.
    """

    def __init__(self, scene, name: str = PREVIEW_NODE_NAME):
        self.scene = scene
        self.name = name
        self.node = None

    def update(self, volume: Volume):
        if self.node is None or self.scene.GetNodeByID(self.node.GetID()) is None:
            self.node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.name)
            self.node.SetHideFromEditors(False)
        update_volume_node(self.node, volume)
        return self.node

    def discard(self) -> None:
        if self.node is not None and self.scene.GetNodeByID(self.node.GetID()) is not None:
            remove_node(self.scene, self.node)
        self.node = None


def remove_node(scene, node) -> None:
    """Remove a displayable node with its display and storage nodes (RemoveNode alone leaves them)."""
    extras = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetStorageNode"):
        extras.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for extra in extras:
        if extra is not None and scene.GetNodeByID(extra.GetID()) is not None:
            scene.RemoveNode(extra)


# --- applying a finished run ------------------------------------------------------------------------

def read_result(result: dict) -> dict:
    """Read everything a result event points to (volumes, metrics JSON) before the scene is touched."""
    from SodiumDIPLib.data.io import read_volume

    out = {"output": read_volume(result["output"], "result")}
    if result.get("bias_field"):
        out["bias_field"] = read_volume(result["bias_field"], "bias field")
    summary = {}
    if result.get("metrics_json"):
        try:
            summary = json.loads(Path(result["metrics_json"]).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the run's metrics file {result['metrics_json']}: {exc}") from None
    record = {
        "method": summary.get("method", result.get("method")), "preset": summary.get("preset", result.get("preset")),
        "params": summary.get("params", result.get("used_params", {})),
        "metrics": summary.get("metrics", result.get("metrics", {})),
        "stop_rule": summary.get("stop_rule", result.get("stop_rule")),
        "iterations": summary.get("iterations", result.get("iterations")),
        "stop_iteration": summary.get("stop_iteration", result.get("stop_iteration")),
        "seconds": summary.get("seconds", result.get("seconds")),
        "device": summary.get("device", result.get("device")), "seed": summary.get("seed"),
        "mode": result.get("mode", "volume"), "cancelled": bool(result.get("cancelled")),
    }
    out["record"] = record
    out["history"] = summary.get("history", [])
    return out


def apply_run_results(scene, loaded: dict, output_node=None, bias_node=None, table_node=None,
                      chart_node=None, plot_table_node=None, parameter_node=None, output_name="SodiumDIP result"):
    """Put a finished run into the scene (output volume, bias field, metrics row, convergence plot).

    ``loaded`` comes from ``read_result`` (files already read and checked, so this step cannot fail half
    way for a bad file). Returns a dict of the nodes written.
    """
    record = loaded["record"]
    nodes = {}
    output_node = get_or_create_node(scene, "vtkMRMLScalarVolumeNode", output_name, output_node)
    update_volume_node(output_node, loaded["output"])
    set_run_record(output_node, record)
    nodes["output"] = output_node
    if "bias_field" in loaded:
        bias_node = get_or_create_node(scene, "vtkMRMLScalarVolumeNode", f"{output_name} bias field", bias_node)
        update_volume_node(bias_node, loaded["bias_field"])
        set_run_record(bias_node, record)
        nodes["bias_field"] = bias_node
    table_node = get_or_create_node(scene, "vtkMRMLTableNode", "SodiumDIP metrics", table_node)
    append_metrics_row(table_node, record)
    nodes["table"] = table_node
    if loaded.get("history"):
        chart, ptable, series = update_convergence_plot(
            scene, loaded["history"], title=f"SodiumDIP convergence ({record.get('method')})",
            chart_node=chart_node, table_node=plot_table_node)
        nodes.update(chart=chart, plot_table=ptable, series=series)
    if parameter_node is not None:
        store_parameters(parameter_node, record)
    return nodes


# --- a run against the scene ------------------------------------------------------------------------

class SceneRun:
    """One denoising run of scene nodes in a background worker, polled from a GUI timer (or a test loop).

    ``start()`` writes the inputs to NRRD in a temporary folder and launches the worker; ``poll()`` handles
    its events: progress is kept in ``iteration`` / ``eta`` / ``loss`` / ``metrics``, snapshots update a
    temporary preview node, the result is applied to the scene (``nodes`` then holds what was written),
    an error leaves the scene unchanged and sets ``error``. ``cancel()`` stops the worker; its best result
    so far is applied by the next ``poll()``. ``cleanup()`` removes the temporary folder.
    """

    def __init__(self, scene, sodium_node, proton_node=None, reference_node=None, mask_node=None,
                 lesion_node=None, method: str = "dipfusion", preset: str = "balanced", params: Optional[dict] = None,
                 seed: int = 0, device: str = "auto", output_node=None, bias_node=None, table_node=None,
                 chart_node=None, parameter_node=None, mode: str = "volume", slice_axis: str = "k",
                 slice_index: Optional[int] = None, snapshot_interval_s: float = 3.0, plugins=None,
                 python_executable: Optional[str] = None, live_preview: bool = True,
                 output_name: str = "SodiumDIP result"):
        self.scene = scene
        self.output_name = output_name
        self.inputs = {"sodium": sodium_node, "proton": proton_node, "reference": reference_node,
                       "mask": mask_node, "lesion": lesion_node}
        self.method, self.preset, self.params = method, preset, dict(params or {})
        self.seed, self.device = int(seed), device
        self.targets = {"output_node": output_node, "bias_node": bias_node, "table_node": table_node,
                        "chart_node": chart_node, "parameter_node": parameter_node}
        self.mode, self.slice_axis, self.slice_index = mode, slice_axis, slice_index
        self.snapshot_interval_s = snapshot_interval_s
        self.plugins = list(plugins or [])
        self.python_executable = python_executable
        self.preview = LivePreview(scene) if live_preview else None
        self.folder: Optional[Path] = None
        self.job = None
        self.state = "new"  # running, finished, cancelled, failed
        self.error: Optional[str] = None
        self.iteration = 0
        self.max_iterations = None
        self.eta = None
        self.loss = None
        self.metrics: dict = {}
        self.nodes: dict = {}
        self.record: Optional[dict] = None
        self.log_path: Optional[Path] = None
        self.abandoned = False

    def build_job(self) -> dict:
        """Write the input nodes to NRRD files and return the worker job (no process started)."""
        from SodiumDIPLib.data.io import write_volume

        if self.inputs["sodium"] is None:
            raise InputError("select a sodium volume")
        self.folder = Path(tempfile.mkdtemp(prefix="sodiumdip-scene-"))
        paths = {}
        for role, node in self.inputs.items():
            if node is None:
                continue
            vol = volume_node_to_volume(node, role)
            path = self.folder / f"{role}.nrrd"
            write_volume(vol, path, compress=False)
            paths[role] = str(path)
        job = {"inputs": paths, "method": self.method, "preset": self.preset, "params": self.params,
               "seed": self.seed, "device": self.device, "output_dir": str(self.folder / "out"),
               "snapshot_interval_s": self.snapshot_interval_s, "mode": self.mode, "plugins": self.plugins}
        if self.mode == "slice":
            if self.slice_index is None:
                raise InputError("slice preview needs a slice index")
            job["slice"] = {"axis": self.slice_axis, "index": int(self.slice_index)}
        return job

    def start(self) -> "SceneRun":
        from SodiumDIPLib.apps.jobs import Job

        try:
            job = self.build_job()
            self.job = Job().start(_write_job(job, self.folder), python_executable=self.python_executable)
        except BaseException:
            self.cleanup()
            raise
        self.state = "running"
        return self

    @property
    def running(self) -> bool:
        return self.state == "running"

    def poll(self) -> list:
        if self.job is None or self.abandoned:
            return []
        events = self.job.poll()
        for event in events:
            if event.kind == "started":
                self.max_iterations = event.get("max_iterations")
            elif event.kind == "progress":
                self.iteration = event.get("iteration", self.iteration)
                self.eta, self.loss = event.get("eta"), event.get("loss")
                self.metrics = event.get("metrics") or {}
                self.max_iterations = event.get("max_iterations") or self.max_iterations
            elif event.kind == "snapshot" and self.preview is not None:
                self._show_snapshot(event.get("path"))
            elif event.kind == "result" and self.state == "running":
                # The answer is here: apply it now, not when the process has finished exiting (an
                # interpreter that loaded torch can take seconds to shut down on a busy machine).
                self._finish(result=event.data)
            elif event.kind == "exit" and self.state == "running":
                self._finish()
        return events

    def _show_snapshot(self, path) -> None:
        from SodiumDIPLib.data.io import read_volume

        try:
            self.preview.update(read_volume(path, "snapshot"))
        except (InputError, OSError):
            pass  # a snapshot superseded and deleted before we read it: the next one will come

    def _finish(self, result: Optional[dict] = None) -> None:
        """The run ended: with ``result`` (its result event) or at the worker's exit (``job`` decides)."""
        job = self.job
        if self.preview is not None:
            self.preview.discard()
        if result is not None or (job.result is not None and job.state in ("finished", "cancelled")):
            state = job.state
            if result is not None:
                state = "cancelled" if result.get("cancelled") else "finished"
            try:
                loaded = read_result(result if result is not None else job.result)
                self.nodes = apply_run_results(self.scene, loaded, output_name=self.output_name, **self.targets)
                self.record = loaded["record"]
                self.state = state
            except InputError as exc:
                self.state, self.error = "failed", str(exc)
        else:
            self.state = "cancelled" if job.state == "cancelled" else "failed"
            self.error = job.error or "the run ended without a result"
        if self.state == "failed":
            self._keep_log()

    def _keep_log(self) -> None:
        """Keep the worker's log of a failed run (the temporary folder goes) and name it in the error."""
        import logging

        try:
            self.log_path = self.job.keep_log(LOG_FOLDER)
        except OSError as exc:
            logging.getLogger("SodiumDIP").error("SodiumDIP: the worker's log could not be kept: %s", exc)
            return
        if self.log_path is not None:
            self.error = f"{self.error} (worker log: {self.log_path})"
            tail = self.job.log_text()[-3000:]
            logging.getLogger("SodiumDIP").error("SodiumDIP run failed: %s\n--- worker log %s (end) ---\n%s",
                                                 self.error, self.log_path, tail)

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the worker and wait (up to ``timeout`` s); the next ``poll()`` applies its best result."""
        if self.job is not None:
            self.job.cancel(timeout)

    def request_cancel(self, grace: float = 10.0) -> None:
        """Ask the worker to stop without waiting; polling applies its best result when it comes."""
        if self.job is not None:
            self.job.request_cancel(grace)

    def abandon(self, timeout: float = 5.0) -> None:
        """End the run without touching the scene (the scene is closing): kill the worker's process tree,
        read what it said, discard the result, remove the live preview and the temporary folder."""
        if self.state != "running":
            self.cleanup()
            return
        self.abandoned = True
        if self.job is not None:
            self.job.kill(timeout)
            self.job.poll()
        self.state, self.error = "cancelled", "the scene was closed; the run was stopped and its result dropped"
        self.cleanup()

    def wait(self, timeout: float = 120.0, interval: float = 0.05) -> list:
        """Poll until the run has ended (for scripts and tests; a GUI polls from a timer instead)."""
        import time

        events = []
        deadline = time.monotonic() + timeout
        while self.state == "running" and time.monotonic() < deadline:
            events += self.poll()
            time.sleep(interval)
        return events

    def cleanup(self) -> None:
        if self.job is not None:
            self.job.cleanup()
        if self.preview is not None:
            self.preview.discard()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _write_job(job: dict, folder: Path) -> Path:
    path = folder / "job.json"
    path.write_text(json.dumps(job, indent=2))
    return path
