"""SodiumDIP: proton-guided Deep-Image-Prior denoising of sodium MRI in 3D Slicer (scripted module).

A thin GUI over the engine (``SodiumDIPLib``, shipped beside this file). The optimiser never runs in
Slicer's process: ``SodiumDIPLib.apps.scene.SceneRun`` writes the inputs to NRRD and starts
``PythonSlicer -m SodiumDIPLib.apps.worker job.json``; a QTimer polls it. Torch is imported only by the worker,
and installed on first use after the user agrees (pip in a subprocess; see SodiumDIPLogic.installPackages).

Runs on Slicer 5.6 and later (see connectParameterNodeGui for what differs before 5.10).
"""

import importlib.metadata
import importlib.util
import logging
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

from SodiumDIPLib import params as engineParams
from SodiumDIPLib.apps import scene as sodiumScene
from SodiumDIPLib.apps.jobs import DescribeJob

METHODS = ["dipfusion", "dip", "dtv", "tv", "bm4d"]
PRESETS = ["fast", "balanced", "quality"]
#: Python packages the worker needs beyond what Slicer ships: import name -> (distribution, minimum version).
REQUIRED_PACKAGES = {"torch": ("torch", "2.2"), "scipy": ("scipy", "1.10"), "skimage": ("scikit-image", "0.21"),
                     "pywt": ("PyWavelets", "1.4")}
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

def _engineChoices(name: str) -> list:
    """The choices the engine declares for a "choice" parameter (SodiumDIPLib.params; no torch)."""
    return list(engineParams.spec("dipfusion", name).choices)


@parameterNodeWrapper
class SodiumDIPParameterNode:
    """Every choice of the panel; saved with the scene.

    The Advanced fields (weightDtv ... stopPatience) hold no defaults or ranges of their own: they are
    filled from the selected method's preset, and the widgets get their ranges, from the engine's
    parameter declarations (``worker --describe``). ``advancedSource`` says which "method/preset" they
    were filled from ("" = not yet): with Override ticked, values filled from the current method/preset
    are the user's and are kept (also when a saved scene is loaded); otherwise they mirror the preset.
    """

    sodiumVolume: vtkMRMLScalarVolumeNode
    protonVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    maskVolume: vtkMRMLScalarVolumeNode
    lesionVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(METHODS)] = "dipfusion"
    preset: Annotated[str, Choice(PRESETS)] = "balanced"
    useAdvanced: bool = False
    advancedSource: str = ""
    weightDtv: float
    weightGc: float
    weightBias: float
    biasDegree: int
    lambdaSigma: float
    gamma: float
    etaProton: float
    etaSodium: float
    fusionWeightProton: float
    fusionWeightSodium: float
    fusion: Annotated[str, Choice(_engineChoices("fusion"))] = _engineChoices("fusion")[0]
    protonInput: bool
    iterations: int
    learningRate: float
    stopping: Annotated[str, Choice(_engineChoices("stopping"))] = _engineChoices("stopping")[0]
    stopPatience: int
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    snapshotInterval: Annotated[float, WithinRange(0.5, 60)] = 3.0
    outputVolume: vtkMRMLScalarVolumeNode
    biasFieldVolume: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode


def connectParameterNodeGui(parameterNode, gui):
    """``parameterNode.connectGui(gui)`` and the tag that undoes it, on every supported Slicer.

    Slicer 5.6 and 5.8 return no tag (Slicer issue 7547, fixed in 5.10), so their connections could never
    be undone: each module entry connected again and the combo-box connectors' clear/addItem fired the old
    callbacks, resetting method, preset, fusion, stopping and device to their first items. There the tag is
    the one the wrapper just registered (the newest key of its connection table).
    """
    tag = parameterNode.connectGui(gui)
    if tag is None:
        tag = max(parameterNode._parameterGUIs)
    return tag


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
        self._rangesFor = None
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

        self.timer = qt.QTimer()  # polls the run, and the methods query while it is out
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)

        self.initializeParameterNode()
        self.requestMethods()

    def cleanup(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None:
            self.logic.abandonRun()
            self.logic.cleanup()
            self.logic.closeMethodsQuery()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # The GUI connection is kept while the module is hidden (Slicer < 5.10 cannot undo it anyway, see
        # connectParameterNodeGui); it is replaced only when the parameter node changes.
        pass

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None and self.logic.run is not None:
            self.logic.abandonRun()  # nothing of the old scene's run may reach the new scene
            self.logic.cleanup()
            self._showRunEnded(_("Stopped: the scene was closed."))
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

    def setParameterNode(self, inputParameterNode: Optional["SodiumDIPParameterNode"]) -> None:
        current = self._parameterNode.parameterNode if self._parameterNode else None
        if inputParameterNode is not None and inputParameterNode.parameterNode is current:
            self._checkCanApply()  # the same node: keep its connection
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        self._rangesFor = None
        if self._parameterNode:
            # In the .ui file a dynamic property "SlicerParameterName" binds each widget to a field.
            self._parameterNodeGuiTag = connectParameterNodeGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self.logic is not None and self.logic.running
        if p:
            self._syncAdvanced()
        problem = self.logic.runProblem(p) if p else _("Select a sodium volume")
        self.ui.applyButton.enabled = running or problem is None
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = (_("Stop and keep the best result so far") if running else
                                       problem or _("Denoise the whole volume in the background"))
        self.ui.previewButton.enabled = problem is None and not running
        self.ui.previewButton.toolTip = problem or _("Denoise the slice shown in the Red view (2D, seconds)")
        self.ui.compareButton.enabled = bool(p and p.sodiumVolume)
        self._updateAdvancedEnabled()

    # --- method, preset and the Advanced section -------------------------------------------------------

    def _syncAdvanced(self) -> None:
        """The one rule for the Advanced fields (first use, method/preset change, scene load, Override):
        they take the preset's values unless Override is ticked and they already hold this method/preset's
        values (the user's own, kept also in a saved scene). Nothing happens until the presets are known."""
        p = self._parameterNode
        info = self.logic.cachedMethods()
        if info is None or p.method not in info:
            return
        source = self.logic.presetSource(p)
        edited = p.advancedSource == source and bool(self.logic.editedValues(p, info))
        if p.advancedSource != source or (edited and not p.useAdvanced):
            self.logic.applyPresetToParameterNode(p, info)
        if self._rangesFor != p.method:
            self._rangesFor = p.method
            self._applyRanges(info[p.method])

    def _applyRanges(self, method: dict) -> None:
        """Each Advanced widget gets the range and description the engine declares for the method."""
        declared = {d["name"]: d for d in method.get("parameters", [])}
        for field in sodiumScene.PANEL_PARAMETERS:
            widget = self._advancedWidget(field)
            name = sodiumScene.engine_name(field, method["presets"].get(self._parameterNode.preset, {}))
            spec = declared.get(name)
            if widget is None or spec is None:
                continue
            if spec["type"] in ("float", "int") and hasattr(widget, "minimum"):
                step = 10.0 ** -widget.decimals if spec["type"] == "float" and hasattr(widget, "decimals") else 1
                low = spec["min"] if spec["min"] is not None else -1e9
                if spec.get("min_exclusive") and spec["min"] is not None:
                    low = spec["min"] + step
                widget.minimum = low
                widget.maximum = spec["max"] if spec["max"] is not None else 1e9
            unit = f" [{spec['unit']}]" if spec.get("unit") else ""
            widget.toolTip = f"{spec['doc']}{unit} ({name})"

    def onResetToPreset(self) -> None:
        """Refill the Advanced fields with the preset's values (Override stays as it is)."""
        if not self._waitForMethods():
            return
        self.logic.applyPresetToParameterNode(self._parameterNode, self.logic.cachedMethods())

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
        known = set(sodiumScene.panel_values(method["presets"].get(p.preset, {}))) if method else set()
        for field in sodiumScene.PANEL_PARAMETERS:
            widget = self._advancedWidget(field)
            if widget is not None:
                widget.enabled = p.useAdvanced and field in known
        self.ui.resetToPresetButton.enabled = p.useAdvanced and method is not None

    def _advancedWidget(self, field):
        for widget in self.ui.advancedCollapsibleButton.findChildren(qt.QWidget):
            if widget.property("SlicerParameterName") == field:
                return widget
        return None

    # --- the methods query (a worker interpreter answers; Slicer's process never imports torch) --------

    def requestMethods(self) -> None:
        """Ask a worker for the methods, presets and parameter declarations, in the background (once)."""
        if self.logic.cachedMethods() is not None or self.logic.missingPackages():
            return
        try:
            self.logic.startMethodsQuery()
        except RuntimeError as exc:
            logging.error(f"SodiumDIP: {exc}")
            return
        self.timer.start()

    def _pollMethods(self) -> None:
        try:
            if self.logic.pollMethodsQuery() is not None:
                self._checkCanApply()
        except RuntimeError as exc:
            self.ui.statusLabel.text = _("Cannot read the methods: {error}").format(error=exc)
            logging.error(f"SodiumDIP: cannot read the methods: {exc}")

    def _waitForMethods(self) -> bool:
        """The methods are needed now (a run, Reset): wait for the query (once per session). True when known."""
        if self.logic.cachedMethods() is not None:
            return True
        if not self.ensureDependencies():
            return False
        try:
            with slicer.util.tryWithErrorDisplay(_("Cannot read the methods' presets."), waitCursor=True):
                self.logic.methods()
        except Exception:  # noqa: BLE001 - shown to the user by tryWithErrorDisplay
            return False
        self._checkCanApply()
        return True

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
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
                self.logic.installPackages(missing)
        except Exception:  # noqa: BLE001 - shown to the user by tryWithErrorDisplay
            return False
        still = self.logic.missingPackages()
        if still:
            slicer.util.errorDisplay(_("These packages are still missing: {packages}").format(
                packages=", ".join(still.values())))
            return False
        return True

    def onApplyButton(self) -> None:
        if self.logic.running:
            self.ui.statusLabel.text = _("Cancelling; keeping the best result so far...")
            self.logic.requestCancel()  # the timer applies the result when the worker has written it
            return
        self.startRun(mode="volume")

    def onPreviewButton(self) -> None:
        self.startRun(mode="slice")

    def startRun(self, mode: str) -> None:
        if not self._waitForMethods():
            return
        p = self._parameterNode
        problem = self.logic.runProblem(p)
        if problem is not None:
            slicer.util.errorDisplay(problem)
            return
        sliceNode = None
        if mode == "slice":
            sliceWidget = slicer.app.layoutManager().sliceWidget("Red")
            if sliceWidget is None:
                slicer.util.errorDisplay(_("The slice preview denoises the slice shown in the Red view; "
                                           "choose a layout with the Red view first."))
                return
            sliceNode = sliceWidget.mrmlSliceNode()
        try:
            with slicer.util.tryWithErrorDisplay(_("Cannot start SodiumDIP."), waitCursor=True):
                self.logic.start(p, mode=mode, sliceNode=sliceNode)
        except Exception:  # noqa: BLE001 - shown to the user by tryWithErrorDisplay
            self._checkCanApply()
            return
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting the worker...")
        self.timer.start()
        self._checkCanApply()

    def onTimer(self) -> None:
        if self.logic.methodsQueryPending():
            self._pollMethods()
        run = self.logic.run
        if run is None or not run.running:
            if not self.logic.methodsQueryPending():
                self.timer.stop()
            return
        for event in run.poll():
            if event.kind == "snapshot" and run.preview is not None and run.preview.node is not None:
                self.logic.showLive(self._parameterNode, run.preview.node)
        if run.max_iterations:
            self.ui.progressBar.maximum = int(run.max_iterations)
            self.ui.progressBar.value = min(int(run.iteration), int(run.max_iterations))
        else:
            self.ui.progressBar.maximum = 0  # busy indicator
        if run.running:
            if not self.logic.cancelRequested:
                self.ui.statusLabel.text = self.logic.statusText(run)
            return
        self.finishRun()

    def finishRun(self) -> None:
        run = self.logic.run
        if run is not None:
            if run.state in ("finished", "cancelled") and run.nodes:
                self.logic.showResult(self._parameterNode, run)
                text = self.logic.resultText(run)
            else:
                text = _("Failed: {error}").format(error=run.error)
                if run.state == "failed":
                    slicer.util.errorDisplay(_("SodiumDIP failed; the scene was left unchanged.\n\n{error}")
                                             .format(error=run.error))
                elif run.state == "cancelled":
                    text = _("Cancelled before a result existed.")
            self.logic.cleanup()
            self._showRunEnded(text)
        else:
            self._showRunEnded(self.ui.statusLabel.text)

    def _showRunEnded(self, text: str) -> None:
        if not self.logic.methodsQueryPending():
            self.timer.stop()
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = text
        if self._parameterNode:
            self._checkCanApply()

    def onCompareButton(self) -> None:
        try:
            with slicer.util.tryWithErrorDisplay(_("Cannot set up the comparison."), waitCursor=True):
                self.logic.showCompare(self._parameterNode)
        except Exception:  # noqa: BLE001 - shown to the user by tryWithErrorDisplay
            pass


#
# SodiumDIPLogic
#

class SodiumDIPLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, without the panel (usable from the Python console and the self-test)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.run = None
        self._methods = None
        self._methodsQuery = None
        self.cancelRequested = False

    def getParameterNode(self):
        return SodiumDIPParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        """PythonSlicer (Slicer's own interpreter, with the same packages), found as slicer.util does."""
        return shutil.which("PythonSlicer") or sys.executable

    # dependencies

    @staticmethod
    def missingPackages() -> dict:
        """Import name -> pip requirement of each package the worker needs that is absent or too old.

        Versions are read from the installed distributions' metadata: nothing is imported (torch stays
        out of Slicer's process)."""
        missing = {}
        for name, (distribution, minimum) in REQUIRED_PACKAGES.items():
            requirement = f"{distribution}>={minimum}"
            if importlib.util.find_spec(name) is None:
                missing[name] = requirement
                continue
            try:
                installed = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                continue  # importable without metadata (a source tree on the path): take it as it is
            if _versionTuple(installed) < _versionTuple(minimum):
                missing[name] = requirement
        return missing

    def installPackages(self, missing: dict) -> None:
        """pip-install the requirements in a PythonSlicer subprocess (slicer.util.pip_install): nothing is
        imported into Slicer's process. SlicerPyTorch's installTorch is not used: it imports torch into
        Slicer and installs torchvision, which SodiumDIP does not need."""
        slicer.util.pip_install(" ".join(missing.values()))
        importlib.invalidate_caches()

    # methods and presets (asked from a worker interpreter: torch never loads in Slicer's process)

    def startMethodsQuery(self) -> None:
        if self._methods is None and self._methodsQuery is None:
            self._methodsQuery = DescribeJob(self.pythonExecutable())

    def methodsQueryPending(self) -> bool:
        return self._methodsQuery is not None

    def pollMethodsQuery(self) -> Optional[dict]:
        """The methods once the background query answered (None while it runs); RuntimeError on failure."""
        if self._methodsQuery is None:
            return self._methods
        query = self._methodsQuery
        try:
            answer = query.poll()
        except RuntimeError:
            self._methodsQuery = None
            raise
        if answer is not None:
            self._methods, self._methodsQuery = answer, None
        return answer

    def closeMethodsQuery(self) -> None:
        if self._methodsQuery is not None:
            self._methodsQuery.close()
            self._methodsQuery = None

    def methods(self) -> dict:
        """The methods (waits for the query the first time; cached for the session)."""
        if self._methods is None:
            self.startMethodsQuery()
            query = self._methodsQuery
            try:
                self._methods = query.wait()
            finally:
                self._methodsQuery = None
        return self._methods

    def cachedMethods(self) -> Optional[dict]:
        return self._methods

    @staticmethod
    def presetSource(parameterNode) -> str:
        return f"{parameterNode.method}/{parameterNode.preset}"

    @staticmethod
    def applyPresetToParameterNode(parameterNode, methods: dict) -> None:
        """Fill the Advanced fields with the selected method's preset values (one node modification)."""
        method = methods.get(parameterNode.method)
        if method is None:
            return
        values = sodiumScene.panel_values(method["presets"].get(parameterNode.preset, {}))
        with slicer.util.NodeModify(parameterNode.parameterNode):
            for field, value in values.items():
                setattr(parameterNode, field, value)
            parameterNode.advancedSource = SodiumDIPLogic.presetSource(parameterNode)

    @staticmethod
    def editedValues(parameterNode, methods: dict) -> dict:
        """Engine overrides the Advanced fields hold against the preset (whatever Override says)."""
        preset = methods[parameterNode.method]["presets"].get(parameterNode.preset, {})
        values = {field: getattr(parameterNode, field) for field in sodiumScene.PANEL_PARAMETERS}
        return sodiumScene.panel_overrides(preset, values)

    def overrides(self, parameterNode) -> dict:
        """What a run sends besides the preset: nothing unless Override is ticked and the Advanced fields
        hold values started from this method/preset."""
        if not parameterNode.useAdvanced or parameterNode.advancedSource != self.presetSource(parameterNode):
            return {}
        return self.editedValues(parameterNode, self.methods())

    def runProblem(self, parameterNode) -> Optional[str]:
        """Why a run cannot start with these choices (None: it can). Method facts need the methods query."""
        if not parameterNode.sodiumVolume:
            return _("Select a sodium volume")
        info = self.cachedMethods()
        method = info.get(parameterNode.method) if info else None
        if info is not None and method is None:
            return _("The engine has no method {name}").format(name=parameterNode.method)
        if method is not None and not method["available"]:
            return _("{name} is not available: {reason}").format(name=method["name"], reason=method["reason"])
        if method is not None and method["needs_proton"] and not parameterNode.protonVolume:
            return _("{name} needs a registered proton volume: select one").format(name=method["name"])
        return None

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
        self.cancelRequested = False
        self.run = sodiumScene.SceneRun(
            slicer.mrmlScene, p.sodiumVolume, p.protonVolume, p.referenceVolume, p.maskVolume, p.lesionVolume,
            method=p.method, preset=p.preset, params=self.overrides(p), seed=p.seed, device=p.device,
            output_node=output, bias_node=bias, table_node=p.metricsTable,
            parameter_node=p.parameterNode, mode=mode, slice_axis=sliceAxis, slice_index=sliceIndex,
            snapshot_interval_s=p.snapshotInterval, plugins=plugins,
            python_executable=self.pythonExecutable(), output_name=outputName)
        return self.run.start()

    def requestCancel(self) -> None:
        """Ask the run to stop and keep its best result; returns at once (polling applies the result)."""
        if self.running:
            self.cancelRequested = True
            self.run.request_cancel()

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the run and wait for the worker (scripts); the next poll applies its best result."""
        if self.run is not None:
            self.cancelRequested = True
            self.run.cancel(timeout=timeout)

    def abandonRun(self) -> None:
        """End the run without writing anything into the scene (it is closing, or the module unloads)."""
        if self.run is not None and self.run.running:
            self.run.abandon()

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
    def _viewsShowing(nodes) -> list:
        """Slice composite nodes whose background or foreground is one of ``nodes`` (the views the user
        looks at the inputs in); the Red view's when none does."""
        ids = {n.GetID() for n in nodes if n is not None}
        composites = [slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                      for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
        showing = [c for c in composites if c.GetBackgroundVolumeID() in ids or c.GetForegroundVolumeID() in ids]
        return showing or [c for c in composites if c.GetLayoutName() == "Red"]

    def showLive(self, parameterNode, node) -> None:
        """The live preview as the foreground of the views that show the sodium volume (only those)."""
        for composite in self._viewsShowing([parameterNode.sodiumVolume, node]):
            composite.SetForegroundVolumeID(node.GetID())
            composite.SetForegroundOpacity(1.0)

    def showResult(self, parameterNode, run) -> None:
        """The result in the views that showed the sodium volume or the live preview; the layout and the
        other views are left as they are. The convergence chart goes to the plot views already shown."""
        output = run.nodes["output"]
        views = self._viewsShowing([parameterNode.sodiumVolume, output])
        if run.mode == "volume":
            parameterNode.outputVolume = output
            if "bias_field" in run.nodes:
                parameterNode.biasFieldVolume = run.nodes["bias_field"]
        for composite in views:
            composite.SetForegroundVolumeID(output.GetID())
            composite.SetForegroundOpacity(1.0)
        if "chart" in run.nodes:
            for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode")):
                slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLPlotViewNode").SetPlotChartNodeID(
                    run.nodes["chart"].GetID())

    def showCompare(self, parameterNode) -> None:
        """Switch to sodium | result | proton in three linked AXIAL views above the metrics table."""
        layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
        sodiumScene.register_compare_layout(layoutNode)
        slicer.app.processEvents()  # the layout manager creates the views and their composite nodes
        result = parameterNode.outputVolume or parameterNode.sodiumVolume
        sodiumScene.show_side_by_side(slicer.mrmlScene, parameterNode.sodiumVolume, result,
                                      parameterNode.protonVolume, parameterNode.metricsTable,
                                      orientation="Axial")
        slicer.util.resetSliceViews()


def _versionTuple(text: str) -> tuple:
    """"2.2.1+cu121" -> (2, 2, 1): the leading numeric release parts."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):  # "10rc1": a pre-release suffix ends the release numbers
            break
    return tuple(parts)


#
# SodiumDIPTest
#

class SodiumDIPTest(ScriptedLoadableModuleTest):
    """A quick end-to-end check inside Slicer (seconds after the worker has imported torch): a 16^3
    phantom through the fast ``tv`` method in the real worker, the metrics table, a slice preview and the
    compare layout. Nothing is installed: without the worker's packages the test says so and stops."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SodiumDIP_phantom()

    def test_SodiumDIP_phantom(self):
        import numpy as np

        logic = SodiumDIPLogic()
        missing = logic.missingPackages()
        if missing:
            self.delayDisplay("Skipped: install the worker's packages first (the panel's Apply offers to): "
                              + ", ".join(missing.values()))
            return
        from SodiumDIPLib.data.phantom import make_phantom

        self.delayDisplay("Starting the test")
        case = make_phantom(shape=(16, 16, 16), seed=1)
        nodes = {}
        for name, vol in (("sodium", case.sodium), ("reference", case.sodium_truth)):
            nodes[name] = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"phantom {name}")
            sodiumScene.update_volume_node(nodes[name], vol)
        p = logic.getParameterNode()
        p.sodiumVolume, p.referenceVolume = nodes["sodium"], nodes["reference"]
        p.method, p.preset, p.device = "tv", "fast", "cpu"
        logic.start(p)
        logic.waitForRun(timeout=300)
        self.assertEqual(logic.run.state, "finished", logic.run.error)
        output = logic.run.nodes["output"]
        self.assertTrue(np.allclose(slicer.util.arrayFromVTKMatrix(self._ijkToRas(output)),
                                    slicer.util.arrayFromVTKMatrix(self._ijkToRas(nodes["sodium"]))))
        logic.cleanup()
        rows = sodiumScene.table_rows(p.metricsTable)
        self.assertEqual([r["method"] for r in rows], ["tv"])
        noisy = float(np.mean((slicer.util.arrayFromVolume(nodes["sodium"]) -
                               slicer.util.arrayFromVolume(nodes["reference"])) ** 2))
        noisy_psnr = 10 * np.log10(float(slicer.util.arrayFromVolume(nodes["reference"]).max()) ** 2 / noisy)
        self.assertGreater(rows[-1]["psnr_global"], noisy_psnr)
        sliceWidget = slicer.app.layoutManager().sliceWidget("Red")
        if sliceWidget is not None:  # a layout without the Red view has nothing to preview
            slicer.util.setSliceViewerLayers(background=nodes["sodium"], foreground=None, fit=True)
            logic.start(p, mode="slice", sliceNode=sliceWidget.mrmlSliceNode())
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
