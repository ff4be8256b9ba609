"""SodiumDIP: proton-guided Deep-Image-Prior denoising of sodium MRI in 3D Slicer (scripted module).

A thin GUI over the engine (``SodiumDIPLib``, shipped beside this file). The optimiser never runs in
Slicer's process: ``SodiumDIPLib.scene.SceneRun`` writes the inputs to NRRD and starts
``PythonSlicer -m SodiumDIPLib.worker job.json``; a QTimer polls it. Torch is imported only by the worker,
and installed on first use after the user agrees (SlicerPyTorch's installer when that extension is
present, else pip).
"""

import importlib.util
import os
import shutil
import sys
import time
from typing import Annotated, Optional

import ctk  # noqa: F401  (loads the ctk widgets the .ui uses)
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from SodiumDIPLib import scene as sodiumScene
from SodiumDIPLib.jobs import describe_methods

METHODS = ["dipfusion", "dip", "dtv", "tv", "bm4d"]
PRESETS = ["fast", "balanced", "quality"]
#: Python packages the worker needs beyond what Slicer ships (import name -> pip requirement).
REQUIRED_PACKAGES = {"torch": "torch>=2.2", "scipy": "scipy>=1.10", "skimage": "scikit-image>=0.21"}
#: Public origin of the sample data (7 T human brain, paired 23Na + 1H; GPL-3.0, jianxun-qu/UHF-23Na).
SAMPLE_DATA_URL = "https://github.com/jianxun-qu/UHF-23Na/raw/38eb6be/demo_data/"
SAMPLE_DATA = (
    # sample name, [(file, node name, SHA256)]
    ("UHF-23Na brain: sodium 6 mm + proton 2 mm", [
        ("c2p_naa_6.nii", "UHF23Na_sodium_array_6mm",
         "0ba4743abf35d90500acf91e3fabd379908f823be525fd321806ba230f02b6ac"),
        ("gre_2.nii", "UHF23Na_proton_GRE_2mm",
         "75251c957525018b5878a9f8873fe4f085585eaa9e679a37d5c54741f444a242")]),
    ("UHF-23Na brain: sodium 3.5 mm + proton 2 mm", [
        ("c2p_hr.nii", "UHF23Na_sodium_3p5mm",
         "0e1434416ea7ed3d0320aedfc41e9369b5e6ad7dae51cebe090420c03779d0b8"),
        ("gre_2.nii", "UHF23Na_proton_GRE_2mm",
         "75251c957525018b5878a9f8873fe4f085585eaa9e679a37d5c54741f444a242")]),
    ("UHF-23Na brain: second repeat and volume coil", [
        ("c2p_naa_8.nii", "UHF23Na_sodium_array_6mm_repeat",
         "5aa981a05a1c6c1356e8f03d86ae4189861328ec5cfe1742a4d97c2f2e8fc6c5"),
        ("c2p_nav_7.nii", "UHF23Na_sodium_volumecoil_6mm",
         "69b353808c9d71b86b756042ad7b518a4aac81f9e081420fbdc0f8c727f026db")]),
)


#
# SodiumDIP
#

class SodiumDIP(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SodiumDIP")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering.Denoising")]
        self.parent.dependencies = []
        self.parent.contributors = ["SodiumDIP developers"]
        self.parent.helpText = _("""
Denoises a sodium (23Na) MRI volume guided by a registered proton (1H) volume of the same examination with
DIP-Fusion: a training-free Deep Image Prior with a fused proton+sodium directional-TV prior, gradient
consistency and receive bias-field correction, so anatomy guides the denoising while sodium-only structure
(e.g. a lesion with high sodium) survives. Baselines: plain DIP, proton-guided directional TV, TV, BM4D.
<br><br>Select the sodium and proton volumes, a method and a preset, then <b>Preview slice</b> (seconds,
the slice in the Red view) or <b>Apply</b> (whole volume, runs in the background; the views update live;
Apply becomes Cancel, which keeps the best result so far). <b>Compare</b> shows sodium | result | proton
side by side with the metrics table. The first run installs PyTorch after asking.
""")
        self.parent.acknowledgementText = _("""
Developed by the SodiumDIP developers. Sample data: 7 T sodium/proton brain examination from the
UHF-23Na repository (github.com/jianxun-qu/UHF-23Na, GPL-3.0). Uses 3D Slicer, PyTorch, SimpleITK,
scikit-image and, when present, SlicerPyTorch.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#

def registerSampleData():
    """Register the public UHF-23Na examination (downloaded only when the user asks for it)."""
    import SampleData

    iconPath = os.path.join(os.path.dirname(__file__), "Resources/Icons/SodiumDIP.png")
    for sampleName, files in SAMPLE_DATA:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="SodiumDIP",
            sampleName=sampleName,
            thumbnailFileName=iconPath,
            uris=[SAMPLE_DATA_URL + f for f, _, _ in files],
            fileNames=[f for f, _, _ in files],
            nodeNames=[n for _, n, _ in files],
            checksums=[f"SHA256:{c}" for _, _, c in files],
            loadFileType=["VolumeFile"] * len(files),
        )


#
# SodiumDIPParameterNode
#

@parameterNodeWrapper
class SodiumDIPParameterNode:
    """Every choice of the panel; saved with the scene."""

    sodiumVolume: vtkMRMLScalarVolumeNode
    protonVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    maskVolume: vtkMRMLScalarVolumeNode
    lesionVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(METHODS)] = "dipfusion"
    preset: Annotated[str, Choice(PRESETS)] = "balanced"
    useAdvanced: bool = False
    weightDtv: Annotated[float, WithinRange(0, 100)] = 0.3
    weightGc: Annotated[float, WithinRange(0, 100)] = 0.1
    weightBias: Annotated[float, WithinRange(0, 100000)] = 1000.0
    biasDegree: Annotated[int, WithinRange(0, 8)] = 3
    lambdaSigma: Annotated[float, WithinRange(0, 20)] = 0.75
    gamma: Annotated[float, WithinRange(0, 0.999)] = 0.95
    etaProton: Annotated[float, WithinRange(0.0001, 10)] = 0.05
    etaSodium: Annotated[float, WithinRange(0.0001, 10)] = 0.1
    fusionWeightProton: Annotated[float, WithinRange(0, 10)] = 1.0
    fusionWeightSodium: Annotated[float, WithinRange(0, 10)] = 1.0
    fusion: Annotated[str, Choice(["tensor", "sum"])] = "tensor"
    protonInput: bool = True
    iterations: Annotated[int, WithinRange(1, 100000)] = 400
    learningRate: Annotated[float, WithinRange(0.00001, 1)] = 0.01
    stopping: Annotated[str, Choice(["fixed", "wmv", "discrepancy"])] = "fixed"
    stopPatience: Annotated[int, WithinRange(1, 100000)] = 60
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    snapshotInterval: Annotated[float, WithinRange(0.5, 60)] = 3.0
    outputVolume: vtkMRMLScalarVolumeNode
    biasFieldVolume: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode


#
# SodiumDIPWidget
#

class SodiumDIPWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SodiumDIP.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SodiumDIPLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.resetToPresetButton.connect("clicked(bool)", self.onResetToPreset)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedCollapsed)
        self._methodAndPreset = None  # last (method, preset) seen, to refill Advanced when they change

        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None:
            self.logic.cancel()
            self.logic.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None and self.logic.running:
            self.logic.cancel()
            self.finishRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.sodiumVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.sodiumVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[SodiumDIPParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # In the .ui file a dynamic property "SlicerParameterName" binds each widget to a field.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        running = self.logic is not None and self.logic.running
        p = self._parameterNode
        ready = bool(p and p.sodiumVolume)
        self.ui.applyButton.enabled = ready or running
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = (_("Stop and keep the best result so far") if running else
                                       _("Denoise the whole volume in the background") if ready else
                                       _("Select a sodium volume"))
        self.ui.previewButton.enabled = ready and not running
        self.ui.compareButton.enabled = ready
        if p and (p.method, p.preset) != self._methodAndPreset:
            self._methodAndPreset = (p.method, p.preset)
            self.onMethodOrPresetChanged()
        self._updateAdvancedEnabled()

    # --- method, preset and the Advanced section -------------------------------------------------------

    def onMethodOrPresetChanged(self) -> None:
        """A new method or preset: the Advanced fields show its values (when the presets are known)."""
        info = self.logic.cachedMethods()
        if info is not None and self._parameterNode:
            self.logic.applyPresetToParameterNode(self._parameterNode, info)

    def onAdvancedCollapsed(self, collapsed: bool) -> None:
        """Opening Advanced: learn the presets (once, from a worker) if the dependencies are already there."""
        if collapsed or self.logic.cachedMethods() is not None or self.logic.missingPackages():
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot read the methods' presets."), waitCursor=True):
            info = self.logic.methods()
            if self._parameterNode and not self._parameterNode.useAdvanced:
                self.logic.applyPresetToParameterNode(self._parameterNode, info)
            self._updateAdvancedEnabled()

    def onResetToPreset(self) -> None:
        if not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot read the methods' presets."), waitCursor=True):
            info = self.logic.methods()
            self.logic.applyPresetToParameterNode(self._parameterNode, info)
            self._updateAdvancedEnabled()

    def _updateAdvancedEnabled(self) -> None:
        """Fields the chosen method does not have are greyed out (their values are not sent)."""
        info = self.logic.cachedMethods() if self.logic else None
        p = self._parameterNode
        if not p:
            return
        method = info.get(p.method) if info else None
        if method is not None:
            self.ui.methodDescriptionLabel.text = method["description"] + (
                "" if method["available"] else f" ({method['reason']})")
        known = None
        if method is not None:
            known = set(sodiumScene.panel_values(method["presets"].get(p.preset, {})))
        for field in sodiumScene.PANEL_PARAMETERS:
            widget = self._advancedWidget(field)
            if widget is not None:
                widget.enabled = p.useAdvanced and (known is None or field in known)

    def _advancedWidget(self, field):
        for widget in self.ui.advancedCollapsibleButton.findChildren(qt.QWidget):
            if widget.property("SlicerParameterName") == field:
                return widget
        return None

    # --- running ---------------------------------------------------------------------------------------

    def ensureDependencies(self) -> bool:
        """Install PyTorch (and friends) on first use, after the user agreed. True when ready."""
        missing = self.logic.missingPackages()
        if not missing:
            return True
        text = _("SodiumDIP needs these Python packages, which are not installed yet:\n\n  {packages}\n\n"
                 "Download and install them now? (PyTorch is about 1-3 GB; this can take several minutes.)"
                 ).format(packages="\n  ".join(missing.values()))
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("SodiumDIP: install dependencies")):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            self.logic.installPackages(missing)
            return not self.logic.missingPackages()
        return False

    def onApplyButton(self) -> None:
        if self.logic.running:
            self.ui.statusLabel.text = _("Cancelling; keeping the best result so far...")
            slicer.app.processEvents()
            self.logic.cancel()
            self.onTimer()
            return
        self.startRun(mode="volume")

    def onPreviewButton(self) -> None:
        self.startRun(mode="slice")

    def startRun(self, mode: str) -> None:
        if not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot start SodiumDIP."), waitCursor=True):
            self.logic.methods()  # once: presets for the Advanced section (a worker answers; torch stays out)
            sliceNode = None
            if mode == "slice":
                sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            self.logic.start(self._parameterNode, mode=mode, sliceNode=sliceNode)
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the worker...")
            self.timer.start()
        self._checkCanApply()

    def onTimer(self) -> None:
        run = self.logic.run
        if run is None:
            self.timer.stop()
            return
        for event in run.poll():
            if event.kind == "snapshot" and run.preview is not None and run.preview.node is not None:
                self.logic.showLive(run.preview.node)
        if run.max_iterations:
            self.ui.progressBar.maximum = int(run.max_iterations)
            self.ui.progressBar.value = min(int(run.iteration), int(run.max_iterations))
        else:
            self.ui.progressBar.maximum = 0  # busy indicator
        if run.running:
            self.ui.statusLabel.text = self.logic.statusText(run)
            return
        self.finishRun()

    def finishRun(self) -> None:
        self.timer.stop()
        run = self.logic.run
        self.ui.progressBar.visible = False
        if run is not None:
            if run.state in ("finished", "cancelled") and run.nodes:
                self.logic.showResult(self._parameterNode, run)
                self.ui.statusLabel.text = self.logic.resultText(run)
            else:
                self.ui.statusLabel.text = _("Failed: {error}").format(error=run.error)
                if run.state == "failed":
                    slicer.util.errorDisplay(_("SodiumDIP failed; the scene was left unchanged.\n\n{error}")
                                             .format(error=run.error))
            self.logic.cleanup()
        self._checkCanApply()

    def onCompareButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot set up the comparison."), waitCursor=True):
            self.logic.showCompare(self._parameterNode)


#
# SodiumDIPLogic
#

class SodiumDIPLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, without the panel (usable from the Python console and the self-test)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.run = None
        self._methods = None

    def getParameterNode(self):
        return SodiumDIPParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        """PythonSlicer (Slicer's own interpreter, with the same packages), found as slicer.util does."""
        return shutil.which("PythonSlicer") or sys.executable

    # dependencies

    @staticmethod
    def missingPackages() -> dict:
        return {name: req for name, req in REQUIRED_PACKAGES.items() if importlib.util.find_spec(name) is None}

    def installPackages(self, missing: dict) -> None:
        if "torch" in missing:
            try:
                import PyTorchUtils  # SlicerPyTorch: picks the CUDA build that matches the driver
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=">=2.2")
                if torch is None:
                    raise RuntimeError("PyTorch was not installed")
            else:
                slicer.util.pip_install(missing["torch"])
        others = [req for name, req in missing.items() if name != "torch"]
        if others:
            slicer.util.pip_install(" ".join(others))
        importlib.invalidate_caches()

    # methods and presets (asked from a worker interpreter: torch never loads in Slicer's process)

    def methods(self) -> dict:
        if self._methods is None:
            self._methods = describe_methods(self.pythonExecutable())
        return self._methods

    def cachedMethods(self) -> Optional[dict]:
        return self._methods

    @staticmethod
    def applyPresetToParameterNode(parameterNode, methods: dict) -> None:
        method = methods.get(parameterNode.method)
        if method is None:
            return
        values = sodiumScene.panel_values(method["presets"].get(parameterNode.preset, {}))
        node = parameterNode.parameterNode
        wasModified = node.StartModify()
        try:
            for field, value in values.items():
                setattr(parameterNode, field, value)
        finally:
            node.EndModify(wasModified)

    def overrides(self, parameterNode) -> dict:
        if not parameterNode.useAdvanced:
            return {}
        method = self.methods()[parameterNode.method]
        values = {field: getattr(parameterNode, field) for field in sodiumScene.PANEL_PARAMETERS}
        return sodiumScene.panel_overrides(method["presets"][parameterNode.preset], values)

    # runs

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.running

    def start(self, parameterNode, mode: str = "volume", sliceNode=None, plugins=None):
        """Start a run of the parameter node's choices (mode "slice": the slice ``sliceNode`` shows)."""
        if self.running:
            raise RuntimeError("a SodiumDIP run is already in progress")
        self.cleanup()
        p = parameterNode
        if not p.sodiumVolume:
            raise ValueError("Select a sodium volume")
        sliceAxis, sliceIndex = "k", None
        output, bias, outputName = p.outputVolume, p.biasFieldVolume, "SodiumDIP result"
        if mode == "slice":  # the preview never touches the chosen output volume
            sliceAxis, sliceIndex = sodiumScene.slice_for_view(p.sodiumVolume, sliceNode)
            outputName = "SodiumDIP slice preview"
            output, bias = slicer.mrmlScene.GetFirstNodeByName(outputName), None
        if not p.metricsTable:
            p.metricsTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "SodiumDIP metrics")
        self.run = sodiumScene.SceneRun(
            slicer.mrmlScene, p.sodiumVolume, p.protonVolume, p.referenceVolume, p.maskVolume, p.lesionVolume,
            method=p.method, preset=p.preset, params=self.overrides(p), seed=p.seed, device=p.device,
            output_node=output, bias_node=bias, table_node=p.metricsTable,
            parameter_node=p.parameterNode, mode=mode, slice_axis=sliceAxis, slice_index=sliceIndex,
            snapshot_interval_s=p.snapshotInterval, plugins=plugins,
            python_executable=self.pythonExecutable(), output_name=outputName)
        return self.run.start()

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel(timeout=5.0)

    def cleanup(self) -> None:
        if self.run is not None and not self.run.running:
            self.run.cleanup()

    def waitForRun(self, timeout: float = 600.0) -> None:
        """Block (keeping the GUI alive) until the current run ended. For scripts and the self-test."""
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            self.run.poll()
            slicer.app.processEvents()
            time.sleep(0.05)
        if self.running:
            self.cancel()
            self.run.poll()

    # what the user sees

    @staticmethod
    def statusText(run) -> str:
        parts = [_("Iteration {i}").format(i=run.iteration) +
                 (f"/{run.max_iterations}" if run.max_iterations else "")]
        if run.loss is not None:
            parts.append(_("loss {loss:.4g}").format(loss=run.loss))
        for key, value in sorted(run.metrics.items()):
            if isinstance(value, (int, float)):
                parts.append(f"{key} {value:.4g}")
        if run.eta is not None:
            parts.append(_("ETA {m}:{s:02d}").format(m=int(run.eta) // 60, s=int(run.eta) % 60))
        return ", ".join(parts)

    @staticmethod
    def resultText(run) -> str:
        record = run.record or {}
        what = _("Cancelled; kept the best result so far") if run.state == "cancelled" else _("Done")
        seconds = record.get("seconds")
        return f"{what}: {record.get('method')} ({record.get('preset')}), {record.get('iterations')} iterations" + (
            f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else "")

    @staticmethod
    def showLive(node) -> None:
        slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=1.0, fit=False)

    def showResult(self, parameterNode, run) -> None:
        output = run.nodes["output"]
        if run.mode == "volume":
            parameterNode.outputVolume = output
            if "bias_field" in run.nodes:
                parameterNode.biasFieldVolume = run.nodes["bias_field"]
            slicer.util.setSliceViewerLayers(background=output, foreground=None, fit=False)
        else:
            slicer.util.setSliceViewerLayers(foreground=output, foregroundOpacity=1.0, fit=False)
        if "chart" in run.nodes:
            slicer.modules.plots.logic().ShowChartInLayout(run.nodes["chart"])

    def showCompare(self, parameterNode) -> None:
        layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
        sodiumScene.register_compare_layout(layoutNode)
        slicer.app.processEvents()  # the layout manager creates the views and their composite nodes
        result = parameterNode.outputVolume or parameterNode.sodiumVolume
        sodiumScene.show_side_by_side(slicer.mrmlScene, parameterNode.sodiumVolume, result,
                                      parameterNode.protonVolume, parameterNode.metricsTable)
        slicer.util.resetSliceViews()


#
# SodiumDIPTest
#

class SodiumDIPTest(ScriptedLoadableModuleTest):
    """End to end inside Slicer on the built-in phantom (no download): worker, scene, table, plot."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SodiumDIP_phantom()

    def test_SodiumDIP_phantom(self):
        import numpy as np

        self.delayDisplay("Starting the test")
        logic = SodiumDIPLogic()
        missing = logic.missingPackages()
        if missing:
            logic.installPackages(missing)
        from SodiumDIPLib.phantom import make_phantom

        case = make_phantom(shape=(24, 24, 24), seed=1)
        nodes = {}
        for name, vol in (("sodium", case.sodium), ("proton", case.proton), ("reference", case.sodium_truth)):
            nodes[name] = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"phantom {name}")
            sodiumScene.update_volume_node(nodes[name], vol)
        p = logic.getParameterNode()
        p.sodiumVolume, p.protonVolume, p.referenceVolume = nodes["sodium"], nodes["proton"], nodes["reference"]
        p.preset, p.device = "fast", "cpu"
        for method in ("tv", "dipfusion"):
            p.method = method
            logic.start(p)
            logic.waitForRun(timeout=600)
            self.assertEqual(logic.run.state, "finished", logic.run.error)
            output = logic.run.nodes["output"]
            self.assertTrue(np.allclose(slicer.util.arrayFromVTKMatrix(self._ijkToRas(output)),
                                        slicer.util.arrayFromVTKMatrix(self._ijkToRas(nodes["sodium"]))))
            logic.cleanup()
        rows = sodiumScene.table_rows(p.metricsTable)
        self.assertEqual([r["method"] for r in rows], ["tv", "dipfusion"])
        noisy = float(np.mean((slicer.util.arrayFromVolume(nodes["sodium"]) -
                               slicer.util.arrayFromVolume(nodes["reference"])) ** 2))
        noisy_psnr = 10 * np.log10(float(slicer.util.arrayFromVolume(nodes["reference"]).max()) ** 2 / noisy)
        self.assertGreater(rows[-1]["psnr_global"], noisy_psnr)
        # preview of the slice shown in the Red view (centred on the sodium), then the comparison layout
        slicer.util.setSliceViewerLayers(background=nodes["sodium"], foreground=None, fit=True)
        logic.start(p, mode="slice", sliceNode=slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode())
        logic.waitForRun(timeout=300)
        self.assertEqual(logic.run.state, "finished", logic.run.error)
        self.assertEqual(slicer.util.arrayFromVolume(logic.run.nodes["output"]).shape[0], 1)
        logic.cleanup()
        logic.showCompare(p)
        self.delayDisplay("Test passed")

    @staticmethod
    def _ijkToRas(node):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return m
