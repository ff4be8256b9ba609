"""The scene layer on real MRML (slicer-core, no Slicer application): geometry, results, table, plot.

Volumes are loaded the way Slicer loads them (vtkMRMLVolumeArchetypeStorageNode reading the NIfTI file),
processed by the real worker, and written back through a storage node.
"""

import json
import math
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import SimpleITK as sitk

import slicer  # slicer-core: real MRML without the application  # noqa: E402
import vtk  # noqa: E402

from SodiumDIPLib.apps import scene as sc  # noqa: E402
from SodiumDIPLib.errors import InputError  # noqa: E402
from SodiumDIPLib.data.io import read_volume  # noqa: E402
from SodiumDIPLib.data.volume import Volume, from_sitk, ijk_to_ras_matrix  # noqa: E402

from test_worker import write_plugin  # noqa: E402


def matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def load(scene, path, name):
    """Load a file into a scalar volume node as Slicer does (ITK reader behind a storage node)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"cannot read {path}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def save(scene, node, path):
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    return path


def snapshot_scene(scene) -> dict:
    """Node id -> (class, name, modified time): anything added, removed or modified shows up."""
    out = {}
    for i in range(scene.GetNumberOfNodes()):
        n = scene.GetNthNode(i)
        out[n.GetID()] = (n.GetClassName(), n.GetName(), n.GetMTime())
    return out


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def test_nifti_node_roundtrip_is_exact(scene, uhf_dir):
    for name in ("c2p_naa_6.nii", "gre_2.nii"):
        node = load(scene, uhf_dir / name, name)
        vol = sc.volume_node_to_volume(node)
        ref = read_volume(uhf_dir / name)  # SimpleITK's reading of the same file
        np.testing.assert_allclose(ijk_to_ras_matrix(vol), matrix(node), atol=1e-9)
        np.testing.assert_allclose(ijk_to_ras_matrix(ref), matrix(node), atol=1e-4)
        np.testing.assert_array_equal(vol.array, ref.array)
        copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        sc.update_volume_node(copy, vol)
        np.testing.assert_array_equal(matrix(copy), matrix(node))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(copy), slicer.util.arrayFromVolume(node))


def test_oblique_geometry_roundtrip(scene, oblique_volume):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    sc.update_volume_node(node, oblique_volume)
    np.testing.assert_allclose(matrix(node), ijk_to_ras_matrix(oblique_volume), atol=1e-12)
    back = sc.volume_node_to_volume(node)
    np.testing.assert_allclose(back.direction, oblique_volume.direction, atol=1e-12)
    np.testing.assert_allclose(back.spacing, oblique_volume.spacing, atol=1e-12)
    np.testing.assert_allclose(back.origin, oblique_volume.origin, atol=1e-12)
    np.testing.assert_array_equal(back.array, oblique_volume.array)


def test_parent_transform_is_applied_and_nonlinear_refused(scene, oblique_volume):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moved")
    sc.update_volume_node(node, oblique_volume)
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 12.5)
    m.SetElement(2, 3, -4.0)
    shift.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(shift.GetID())
    world = sc.volume_node_to_volume(node)
    expected = ijk_to_ras_matrix(oblique_volume)
    expected[0, 3] += 12.5
    expected[2, 3] -= 4.0
    np.testing.assert_allclose(ijk_to_ras_matrix(world), expected, atol=1e-9)
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="harden"):
        sc.volume_node_to_volume(node)


def test_real_data_run_writes_back_same_geometry_table_and_plot(scene, uhf_dir, tmp_path):
    sodium = load(scene, uhf_dir / "c2p_naa_6.nii", "sodium")
    params_node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "SodiumDIP")
    run = sc.SceneRun(scene, sodium, method="tv", preset="fast", params={"iterations": 12},
                      parameter_node=params_node, snapshot_interval_s=0.0).start()
    try:
        run.wait(timeout=120)
        assert run.state == "finished", run.error
        out = run.nodes["output"]
        np.testing.assert_array_equal(matrix(out), matrix(sodium))
        assert slicer.util.arrayFromVolume(out).shape == slicer.util.arrayFromVolume(sodium).shape
        # written back to NIfTI by Slicer's writer, read by SimpleITK: same geometry and voxels
        path = save(scene, out, tmp_path / "result.nii.gz")
        back = from_sitk(sitk.ReadImage(str(path)))
        np.testing.assert_allclose(ijk_to_ras_matrix(back), matrix(sodium), atol=1e-4)
        np.testing.assert_array_equal(back.array, slicer.util.arrayFromVolume(out))
        # the table and plot hold what the run measured (metrics.json is the worker's own record)
        summary = json.loads(open(run.job.result["metrics_json"]).read())
        rows = sc.table_rows(run.nodes["table"])
        assert len(rows) == 1
        row = rows[0]
        assert row["method"] == "tv" and row["preset"] == "fast"
        assert json.loads(row["parameters"]) == summary["params"] and summary["params"]["iterations"] == 12
        assert row["seconds"] == pytest.approx(summary["seconds"])
        numeric = {k: v for k, v in sc.flatten_metrics(summary["metrics"]).items() if isinstance(v, float)}
        assert numeric, "the run measured something reference-free"
        for key, value in numeric.items():
            assert row[key] == pytest.approx(value), key
        chart, series = run.nodes["chart"], run.nodes["series"]
        assert chart.GetNumberOfPlotSeriesNodes() == len(series) >= 1
        ptable = run.nodes["plot_table"]
        losses = slicer.util.arrayFromTableColumn(ptable, "loss")
        np.testing.assert_allclose(losses, [h["loss"] for h in summary["history"]])
        assert {s.GetYColumnName() for s in series} >= {"loss"}
        # the bias field (tv estimates one when its preset corrects the receive bias) lands beside it
        assert ("bias_field" in run.nodes) == bool(run.job.result.get("bias_field"))
        if "bias_field" in run.nodes:
            np.testing.assert_array_equal(matrix(run.nodes["bias_field"]), matrix(sodium))
            expected = sitk.GetArrayFromImage(sitk.ReadImage(run.job.result["bias_field"]))
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(run.nodes["bias_field"]), expected)
        assert sc.get_run_record(out)["method"] == "tv"
        assert sc.load_parameters(params_node)["params"]["iterations"] == 12
        assert scene.GetFirstNodeByName(sc.PREVIEW_NODE_NAME) is None
    finally:
        run.cleanup()


def test_failed_run_leaves_scene_unchanged(scene, tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "LOG_FOLDER", tmp_path / "logs")
    sodium = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sodium")
    big = Volume(np.random.default_rng(0).random((12, 12, 12)).astype(np.float32) + 1, (2, 2, 2))
    sc.update_volume_node(sodium, big)
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "previous result")
    sc.update_volume_node(output, big.with_array(big.array * 2))
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    before_array = slicer.util.arrayFromVolume(output).copy()
    before_matrix = matrix(output)
    before = snapshot_scene(scene)
    plugin = write_plugin(tmp_path)
    run = sc.SceneRun(scene, sodium, method="slow_test", preset="fast",
                      params={"iterations": 50, "sleep": 0.02, "fail_at": 30}, output_node=output,
                      table_node=table, plugins=[str(plugin)], snapshot_interval_s=0.01).start()
    try:
        saw_preview = False
        deadline = time.monotonic() + 60
        while run.running and time.monotonic() < deadline:
            run.poll()
            saw_preview |= scene.GetFirstNodeByName(sc.PREVIEW_NODE_NAME) is not None
            time.sleep(0.01)
        assert saw_preview, "snapshots were shown live while the run went on"
        assert run.state == "failed" and "boom at iteration 30" in run.error
        # the worker's side: one error event (no result), exit code 1, the traceback in its log only
        from SodiumDIPLib.apps.worker import EXIT_INTERNAL

        kinds = [e.kind for e in run.job.history]
        assert kinds[0] == "started" and kinds[-2:] == ["error", "exit"] and "result" not in kinds
        assert run.job.history[-2]["kind"] == "internal" and run.job.returncode == EXIT_INTERNAL
        assert "Traceback" in run.job.log_text() and "Traceback" not in run.error
        assert snapshot_scene(scene) == before, "nodes added, removed or modified by a failed run"
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(output), before_array)
        np.testing.assert_array_equal(matrix(output), before_matrix)
        assert table.GetNumberOfRows() == 0
    finally:
        run.cleanup()
    # the worker's log outlives the run's temporary folder, and the message names it
    assert run.log_path is not None and run.log_path.parent == tmp_path / "logs"
    assert str(run.log_path) in run.error and "boom at iteration 30" in run.log_path.read_text()


def test_unreadable_result_files_change_nothing(scene, tmp_path):
    bad = tmp_path / "output.nrrd"
    bad.write_text("not an image")
    before = snapshot_scene(scene)
    with pytest.raises(InputError):
        sc.read_result({"output": str(bad), "metrics_json": str(tmp_path / "m.json")})
    assert snapshot_scene(scene) == before


def test_metrics_table_one_row_per_run_with_union_of_columns(scene):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    sc.append_metrics_row(table, {"method": "tv", "preset": "fast", "params": {"lambda_sigma": 0.5},
                                  "metrics": {"psnr_global": 30.5, "lpips_global": "unavailable: no weights"},
                                  "seconds": 1.5, "iterations": 40, "stop_rule": "converged"})
    sc.append_metrics_row(table, {"method": "dipfusion", "preset": "balanced", "params": {"gamma": 0.9},
                                  "metrics": {"psnr_global": 33.25, "lesion_crc": 0.8}, "seconds": 20.0})
    rows = sc.table_rows(table)
    assert [r["method"] for r in rows] == ["tv", "dipfusion"]
    assert rows[0]["psnr_global"] == 30.5 and rows[1]["psnr_global"] == 33.25
    assert math.isnan(rows[0]["lesion_crc"]) and rows[1]["lesion_crc"] == 0.8
    assert rows[0]["lpips_global"].startswith("unavailable") and rows[1]["lpips_global"] == ""
    assert json.loads(rows[1]["parameters"]) == {"gamma": 0.9}
    assert math.isnan(rows[1]["iterations"])


def test_convergence_plot_reuses_chart_and_replaces_series(scene):
    history = [{"iteration": i, "loss": 1.0 / i, "psnr": 20 + i, "elapsed": 0.1 * i} for i in range(1, 6)]
    chart, table, series = sc.update_convergence_plot(scene, history)
    assert [s.GetYColumnName() for s in series] == ["loss", "psnr"]
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "psnr"), [21, 22, 23, 24, 25])
    n_nodes = scene.GetNumberOfNodes()
    chart2, table2, series2 = sc.update_convergence_plot(scene, history[:3], chart_node=chart, table_node=table)
    assert chart2 is chart and table2 is table and chart.GetNumberOfPlotSeriesNodes() == 2
    assert scene.GetNumberOfNodes() == n_nodes, "old series are replaced, not piled up"
    assert table.GetNumberOfRows() == 3


def test_compare_layout_and_linked_views(scene):
    root = ET.fromstring(sc.compare_layout_xml())
    tags = [v.get("singletontag") for v in root.iter("view")]
    assert tags == ["Red", "Yellow", "Green", "TableView1"]
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    assert sc.register_compare_layout(layout) == sc.COMPARE_LAYOUT_ID
    assert layout.GetViewArrangement() == sc.COMPARE_LAYOUT_ID and layout.IsLayoutDescription(sc.COMPARE_LAYOUT_ID)
    # the layout manager would create these; create them as it does
    comps = {}
    for name in ("Red", "Yellow", "Green"):
        comp = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        comp.SetLayoutName(name)
        comps[name] = comp
    tview = scene.AddNewNodeByClass("vtkMRMLTableViewNode")
    vols = [scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", n) for n in ("na", "res", "h")]
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    assert sc.show_side_by_side(scene, *vols, table_node=table) == 3
    assert [comps[n].GetBackgroundVolumeID() for n in ("Red", "Yellow", "Green")] == [v.GetID() for v in vols]
    assert all(c.GetLinkedControl() for c in comps.values())
    assert tview.GetTableNodeID() == table.GetID()


def test_live_preview_node_is_temporary(scene, oblique_volume):
    preview = sc.LivePreview(scene)
    node = preview.update(oblique_volume)
    assert scene.GetNodeByID(node.GetID()) is not None
    np.testing.assert_allclose(matrix(node), ijk_to_ras_matrix(oblique_volume), atol=1e-12)
    preview.discard()
    assert scene.GetFirstNodeByName(sc.PREVIEW_NODE_NAME) is None


def test_panel_values_and_overrides_use_the_real_presets():
    from SodiumDIPLib.methods import get_method

    dtv = get_method("dtv").presets["fast"]
    values = sc.panel_values(dtv)
    assert values["etaProton"] == dtv["eta"] and "etaSodium" not in values  # dtv calls it "eta"
    assert sc.panel_overrides(dtv, values) == {}, "unchanged panel values override nothing"
    changed = dict(values, etaProton=dtv["eta"] * 2, etaSodium=0.5, learningRate=0.1)
    assert sc.panel_overrides(dtv, changed) == {"eta": dtv["eta"] * 2}, "only fields the method has"
    dipfusion = get_method("dipfusion").presets["balanced"]
    values = sc.panel_values(dipfusion)
    flipped = not dipfusion["proton_input"]
    over = sc.panel_overrides(dipfusion, dict(values, iterations=17, stopping="wmv", protonInput=flipped))
    assert over == {"iterations": 17, "stopping": "wmv", "proton_input": flipped}
    get_method("dipfusion").parameters("balanced", over)  # the engine accepts what the panel sends


@pytest.mark.parametrize("axis_ras, expected_axis", [((0, 0, 1), "k"), ((1, 0, 0), "i"), ((0, 1, 0), "j")])
def test_slice_for_view_picks_the_shown_slice(scene, axis_ras, expected_axis):
    vol = Volume(np.zeros((10, 12, 14), np.float32) + 1, (2.0, 2.0, 3.0), (0, 0, 0))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    sc.update_volume_node(node, vol)
    # a slice view whose normal is axis_ras, centred on voxel (i, j, k) = (5, 7, 4)
    centre_ras = ijk_to_ras_matrix(vol) @ np.array([5, 7, 4, 1.0])
    normal = np.array(axis_ras, dtype=float)
    helper = np.array([0, 0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0, 0])
    u = np.cross(helper, normal)
    u /= np.linalg.norm(u)
    slice_to_ras = np.eye(4)
    slice_to_ras[:3, 0], slice_to_ras[:3, 1], slice_to_ras[:3, 2] = u, np.cross(normal, u), normal
    slice_to_ras[:3, 3] = centre_ras[:3]
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.GetSliceToRAS().DeepCopy(sc.to_vtk_matrix(slice_to_ras))
    axis, index = sc.slice_for_view(node, slice_node)
    assert axis == expected_axis and index == {"i": 5, "j": 7, "k": 4}[axis]
    far = slice_to_ras.copy()
    far[:3, 3] += normal * 1000
    with pytest.raises(InputError, match="does not cut"):
        sc.slice_for_view(node, far)


def test_apply_results_reuses_chosen_nodes_and_writes_bias_field(scene, oblique_volume):
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my result")
    params_node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    bias = oblique_volume.with_array(np.full(oblique_volume.shape, 1.1, np.float32))
    loaded = {"output": oblique_volume, "bias_field": bias,
              "record": {"method": "dipfusion", "preset": "fast", "params": {"gamma": 0.9},
                         "metrics": {"psnr_global": 31.0}, "seconds": 2.5, "iterations": 10},
              "history": [{"iteration": 1, "loss": 2.0}, {"iteration": 2, "loss": 1.0}]}
    nodes = sc.apply_run_results(scene, loaded, output_node=output, parameter_node=params_node)
    assert nodes["output"] is output and output.GetName() == "my result"
    np.testing.assert_allclose(matrix(nodes["bias_field"]), ijk_to_ras_matrix(oblique_volume), atol=1e-12)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["bias_field"]), bias.array)
    assert sc.get_run_record(nodes["bias_field"])["method"] == "dipfusion"
    assert sc.table_rows(nodes["table"])[0]["psnr_global"] == 31.0
    assert sc.load_parameters(params_node)["params"] == {"gamma": 0.9}
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(nodes["plot_table"], "loss"), [2.0, 1.0])
