"""SodiumDIP.py driven as a user drives it, on Slicer's own Python of 5.6, 5.8 and 5.10.

The harness (Testing/slicer_harness.py) loads the module with Slicer's unmodified parameterNodeWrapper /
ScriptedLoadableModule / util / i18n of each release, real MRML from slicer-core (layout logic, slice
logics, scene save / load) and qt/ctk stand-ins whose signals behave as Qt's; runs use the real worker.
What each test covers (issue 13 item numbers) is listed in docs/slicer.md.
"""

import time

import numpy as np
import pytest

import slicer_harness  # noqa: E402 - Testing/ is on sys.path (pytest rootdir-relative import)

RELEASES = slicer_harness.RELEASES


def _require(release):
    folder = slicer_harness.SLICER_PYTHON / release / "slicer"
    if not folder.is_dir():
        pytest.fail(f"Slicer's Python sources missing: {folder} (../shared/slicer-python must sit beside "
                    "the repository)")


@pytest.fixture(params=RELEASES)
def app(request):
    _require(request.param)
    harness = slicer_harness.SlicerApp(request.param)
    yield harness
    harness.close()


def _volumes(app, shape=(10, 12, 14)):
    from SodiumDIPLib.data.volume import Volume

    rng = np.random.default_rng(0)
    truth = np.zeros(shape, np.float32)
    truth[2:8, 3:9, 3:11] = 40
    sodium = app.add_volume("sodium", Volume(truth + 5 + rng.normal(0, 3, shape).astype(np.float32),
                                             (3.0, 3.0, 4.0), (5.0, -7.0, 2.0)))
    proton = app.add_volume("proton", Volume(truth * 2 + 1, (3.0, 3.0, 4.0), (5.0, -7.0, 2.0)))
    return sodium, proton


def _choose(combo, text):
    index = combo.findText(text)
    assert index >= 0, f"{text} not offered"
    combo.currentIndex = index


def _open_advanced(app):
    """The user opens the Advanced section; then the presets are known (however the module learns them)."""
    if app.ui.advancedCollapsibleButton.collapsed:
        app.ui.advancedCollapsibleButton.click()
    app.tick(120, until=lambda: app.widget.logic.cachedMethods() is not None)


def _composite(app, name):
    scene = app.scene
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() == name:
            return node
    raise AssertionError(f"no composite node for {name}")


def test_choices_survive_reentering_the_module(app):
    """Item 2: method / preset / fusion / stopping / device keep their values when the module is entered
    again (5.6 / 5.8: connectGui returns no tag)."""
    ui = app.ui
    app.enter()
    p = app.widget._parameterNode
    assert (p.method, p.preset, ui.presetComboBox.currentText) == ("dipfusion", "balanced", "balanced")
    _choose(ui.presetComboBox, "quality")
    _choose(ui.methodComboBox, "dtv")
    _choose(ui.deviceComboBox, "cpu")
    for _ in range(3):
        app.exit()
        app.enter()
    p = app.widget._parameterNode
    assert (p.method, p.preset, p.device) == ("dtv", "quality", "cpu")
    assert (ui.methodComboBox.currentText, ui.presetComboBox.currentText) == ("dtv", "quality")
    # one GUI connection, whatever the number of entries: a user's change is written once
    _choose(ui.presetComboBox, "fast")
    assert p.preset == "fast" and ui.presetComboBox.currentIndexChanged.slot_count == 1


def test_defaults_and_ranges_come_from_the_engine(app):
    """Item 5 and one source of truth: ticking Override on first use and applying sends the preset as it
    is; the Advanced fields hold the selected preset's values and the widgets the engine's ranges."""
    sodium, proton = _volumes(app)
    app.enter()
    p = app.widget._parameterNode
    p.sodiumVolume, p.device = sodium, "cpu"
    _choose(app.ui.methodComboBox, "tv")
    _choose(app.ui.presetComboBox, "fast")
    app.ui.useAdvancedCheckBox.click()
    assert p.useAdvanced
    app.ui.applyButton.click()
    run = app.widget.logic.run
    assert run is not None and run.params == {}, "Override on first use must send the preset as it is"
    app.tick(120, until=lambda: not app.widget.logic.running)
    assert p.outputVolume is not None and "Done" in app.ui.statusLabel.text, app.ui.statusLabel.text
    info = app.widget.logic.cachedMethods()
    tv_fast = info["tv"]["presets"]["fast"]
    assert (p.lambdaSigma, p.iterations) == (tv_fast["lambda_sigma"], tv_fast["iterations"])
    assert app.ui.lambdaSigmaSpinBox.enabled and not app.ui.gammaSpinBox.enabled
    assert app.ui.lambdaSigmaSpinBox.maximum == pytest.approx(
        {d["name"]: d for d in info["tv"]["parameters"]}["lambda_sigma"]["max"])
    # back to DIP-Fusion without Override: its preset's values and ranges
    app.ui.useAdvancedCheckBox.click()
    _choose(app.ui.methodComboBox, "dipfusion")
    _choose(app.ui.presetComboBox, "balanced")
    preset = info["dipfusion"]["presets"]["balanced"]
    assert (p.gamma, p.learningRate, p.fusionWeightProton, p.protonInput) == (
        preset["gamma"], preset["lr"], preset["w_h"], preset["proton_input"])
    declared = {d["name"]: d for d in info["dipfusion"]["parameters"]}
    assert app.ui.gammaSpinBox.maximum == pytest.approx(declared["gamma"]["max"])
    assert app.ui.biasDegreeSpinBox.maximum == declared["bias_degree"]["max"]
    assert declared["gamma"]["doc"] in app.ui.gammaSpinBox.toolTip
    # Apply needs the proton for DIP-Fusion (the engine says so), and is enabled once it is chosen
    assert not app.ui.applyButton.enabled and "proton" in app.ui.applyButton.toolTip
    p.protonVolume = proton
    assert app.ui.applyButton.enabled


def test_apply_progress_compare_and_views(app, tmp_path):
    """Apply (progress, result in the views that showed the sodium, no layout switch, other views kept),
    Preview slice, then Compare: three AXIAL views (item 4)."""
    sodium, proton = _volumes(app)
    app.enter()
    p = app.widget._parameterNode
    p.sodiumVolume, p.protonVolume, p.device = sodium, proton, "cpu"
    _choose(app.ui.methodComboBox, "tv")
    _choose(app.ui.presetComboBox, "fast")
    red, yellow = _composite(app, "Red"), _composite(app, "Yellow")
    red.SetBackgroundVolumeID(sodium.GetID())
    yellow.SetBackgroundVolumeID(proton.GetID())
    layout_before = app.layout_manager.layout
    app.ui.applyButton.click()
    assert app.ui.applyButton.text == "Cancel" and app.ui.progressBar.visible
    maxima = set()
    app.tick(120, until=lambda: (maxima.add(app.ui.progressBar.maximum), not app.widget.logic.running)[1])
    assert app.ui.applyButton.text == "Apply" and not app.ui.progressBar.visible
    out = p.outputVolume
    assert out is not None and out.GetName() == "SodiumDIP result"
    assert red.GetForegroundVolumeID() == out.GetID()
    assert yellow.GetBackgroundVolumeID() == proton.GetID() and yellow.GetForegroundVolumeID() is None
    assert app.layout_manager.layout == layout_before, "a run must not switch the layout"
    assert any(m and m > 1 for m in maxima), "the progress bar never showed the iteration budget"
    # preview of the slice shown in the Red view
    app.ui.previewButton.click()
    app.tick(120, until=lambda: not app.widget.logic.running)
    preview = app.scene.GetFirstNodeByName("SodiumDIP slice preview")
    assert preview is not None and preview is not out
    # compare
    app.ui.compareButton.click()
    for view in ("Red", "Yellow", "Green"):
        assert app.layout_manager.orientation(view) == "Axial", view
    assert _composite(app, "Yellow").GetBackgroundVolumeID() == out.GetID()
    assert _composite(app, "Green").GetBackgroundVolumeID() == proton.GetID()
    assert app.slicer.app.cursor_depth == 0, "a wait cursor was left on"


def test_compare_gives_three_axial_views(app):
    """Item 4: Compare shows sodium | result | proton in three AXIAL views (Yellow and Green exist from the
    start as sagittal and coronal; the layout's "default" orientation would not reach them)."""
    sodium, proton = _volumes(app)
    app.enter()
    p = app.widget._parameterNode
    p.sodiumVolume, p.protonVolume, p.outputVolume = sodium, proton, sodium
    assert app.layout_manager.orientation("Yellow") == "Sagittal"
    app.ui.compareButton.click()
    assert [app.layout_manager.orientation(v) for v in ("Red", "Yellow", "Green")] == ["Axial"] * 3
    assert _composite(app, "Green").GetBackgroundVolumeID() == proton.GetID()
    assert app.slicer.app.cursor_depth == 0


def test_cancel_keeps_the_best_result_without_blocking(app):
    """Cancel returns at once (the GUI is not blocked), the worker stops, the best result is kept."""
    sodium, _ = _volumes(app, shape=(24, 24, 24))
    app.enter()
    _open_advanced(app)
    p = app.widget._parameterNode
    p.sodiumVolume, p.device = sodium, "cpu"
    _choose(app.ui.methodComboBox, "dip")
    _choose(app.ui.presetComboBox, "fast")
    app.ui.useAdvancedCheckBox.click()
    app.ui.iterationsSpinBox.value = 100000
    app.ui.applyButton.click()
    assert app.widget.logic.run.params == {"iterations": 100000}
    app.tick(180, until=lambda: app.widget.logic.run.iteration > 0)
    start = time.monotonic()
    app.ui.applyButton.click()  # Cancel
    assert time.monotonic() - start < 0.5, "Cancel blocked the GUI"
    app.tick(30, until=lambda: not app.widget.logic.running)
    assert "Cancelled; kept the best result" in app.ui.statusLabel.text, app.ui.statusLabel.text
    assert p.outputVolume is not None and app.ui.applyButton.text == "Apply"


def test_closing_the_scene_mid_run_ends_the_run_cleanly(app):
    """Item 3: Close scene during a run: the worker is stopped, the panel is reset, the temporary folder
    removed, and nothing of the old run reaches the new scene (also after a later Cancel click)."""
    sodium, _ = _volumes(app, shape=(24, 24, 24))
    app.enter()
    p = app.widget._parameterNode
    p.sodiumVolume, p.device = sodium, "cpu"
    _choose(app.ui.methodComboBox, "dip")
    _choose(app.ui.presetComboBox, "fast")
    app.ui.applyButton.click()
    run = app.widget.logic.run
    app.tick(180, until=lambda: run.job.pid is not None and run.iteration > 0)
    folder, pid = run.folder, run.job.pid
    app.close_scene()
    assert not run.running and app.widget.logic.running is False
    assert app.ui.applyButton.text == "Apply" and not app.ui.progressBar.visible
    assert "None" not in app.ui.statusLabel.text and "closed" in app.ui.statusLabel.text
    assert folder is None or not folder.exists()
    assert not _alive(pid)
    app.ui.applyButton.click()  # no sodium in the new scene: nothing happens, nothing is written
    app.tick(1.0)
    assert app.scene.GetFirstNodeByName("SodiumDIP result") is None
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_reloading_a_saved_scene_keeps_override_values(app, tmp_path):
    """Item 6: a saved scene with Override ticked comes back with its own Advanced values."""
    sodium, _ = _volumes(app)
    app.enter()
    _open_advanced(app)
    p = app.widget._parameterNode
    p.sodiumVolume = sodium
    _choose(app.ui.methodComboBox, "tv")
    _choose(app.ui.presetComboBox, "fast")
    app.ui.useAdvancedCheckBox.click()
    app.ui.lambdaSigmaSpinBox.value = 0.9
    assert p.lambdaSigma == pytest.approx(0.9)
    app.save_scene(tmp_path / "saved.mrml")
    _choose(app.ui.methodComboBox, "dtv")
    app.load_scene(tmp_path / "saved.mrml")
    app.tick(0.1)
    p = app.widget._parameterNode
    assert (p.method, p.preset, p.useAdvanced) == ("tv", "fast", True)
    assert p.lambdaSigma == pytest.approx(0.9) and app.ui.lambdaSigmaSpinBox.value == pytest.approx(0.9)
    assert app.widget.logic.overrides(p) == {"lambda_sigma": pytest.approx(0.9)}
    app.exit()
    app.enter()
    assert app.widget._parameterNode.lambdaSigma == pytest.approx(0.9)
    # Override off: the fields show the preset again
    app.ui.useAdvancedCheckBox.click()
    tv_fast = app.widget.logic.cachedMethods()["tv"]["presets"]["fast"]
    assert app.widget._parameterNode.lambdaSigma == tv_fast["lambda_sigma"]


def _alive(pid):
    import os

    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_missing_packages_reads_versions_without_importing(app):
    """Item 1 and 8: PyWavelets is required; a package older than the minimum counts as missing; the
    check imports nothing (torch stays out of Slicer's process)."""
    import sys

    module = app.module
    assert module.REQUIRED_PACKAGES["pywt"][0] == "PyWavelets"
    logic = app.widget.logic
    torch_loaded = "torch" in sys.modules
    assert logic.missingPackages() == {}
    assert ("torch" in sys.modules) == torch_loaded
    module.REQUIRED_PACKAGES["numpy"] = ("numpy", "999.0")
    try:
        assert logic.missingPackages() == {"numpy": "numpy>=999.0"}
    finally:
        del module.REQUIRED_PACKAGES["numpy"]
    assert module._versionTuple("2.2.1+cu121") == (2, 2, 1) and module._versionTuple("1.10rc1") == (1, 10)


def test_preview_without_the_red_view_says_so(app):
    """sliceWidget("Red") is None when the layout never had a Red view: a message, no exception, no run."""
    sodium, _ = _volumes(app)
    app.enter()
    p = app.widget._parameterNode
    p.sodiumVolume = sodium
    _choose(app.ui.methodComboBox, "tv")
    app.layout_manager.slice_logics.pop("Red")
    app.tick(120, until=lambda: app.widget.logic.cachedMethods() is not None)
    app.ui.previewButton.click()
    assert app.widget.logic.run is None
    assert app.dialogs and "Red view" in app.dialogs[-1][1]


@pytest.mark.parametrize("release", RELEASES[-1:])
def test_the_modules_self_test_runs(release):
    """SodiumDIPTest (what *Reload and Test* runs in Slicer) on the newest release's Python."""
    _require(release)
    harness = slicer_harness.SlicerApp(release)
    try:
        test = harness.module.SodiumDIPTest()
        test.delayDisplay = lambda *args, **kwargs: None  # a message box with a delay in Slicer
        test.runTest()
        assert [harness.layout_manager.orientation(v) for v in ("Red", "Yellow", "Green")] == ["Axial"] * 3
    finally:
        harness.close()
