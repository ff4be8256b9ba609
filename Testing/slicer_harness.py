"""Run SodiumDIP.py the way 3D Slicer runs it, without Slicer.

``SlicerApp(release)`` puts together, in this process:

* Slicer's own, unmodified Python of one release (``../shared/slicer-python/vX/slicer``: util,
  ScriptedLoadableModule, i18n, parameterNodeWrapper) as the ``slicer`` package's modules;
* real MRML from ``slicer-core`` (scene, nodes, storage, ``vtkMRMLApplicationLogic`` with the slice
  orientation presets, ``vtkMRMLLayoutLogic`` that creates the views of a layout, ``vtkMRMLSliceLogic``
  that gives each view its composite node, ``vtkSlicerPlotsLogic``);
* small stand-ins for what only the application has: ``qt`` / ``ctk`` widgets (Testing/slicer_stubs),
  ``slicer.app`` (layout manager, module manager, cursors), MRML widgets (node combo box) and dialogs
  (recorded, answered as the test says).

Then it loads SodiumDIP.py as Slicer's module factory does (module object, widget ``setup()``,
``enter()`` / ``exit()``), and a test drives the panel as a user: it clicks buttons, sets widgets, ticks
the QTimer (the event loop), closes / saves / loads the scene. The worker is the real subprocess.

Everything is undone by ``close()`` (sys.modules and sys.path are restored), so other tests keep
slicer-core's own ``slicer`` package.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).resolve().parent / "slicer_stubs"
SLICER_PYTHON = REPO.parent / "shared" / "slicer-python"
RELEASES = ("v5.6.0", "v5.8.0", "v5.10.0")
#: The module under test; SODIUMDIP_MODULE_FILE points the harness at another copy (e.g. an older one, to
#: show that the tests catch its defects).
MODULE_FILE = Path(os.environ.get("SODIUMDIP_MODULE_FILE", REPO / "SodiumDIP" / "SodiumDIP.py"))
_OWNED = ("slicer", "qt", "ctk", "SodiumDIP", "SampleData")


def _owned(name: str) -> bool:
    return any(name == o or name.startswith(o + ".") for o in _OWNED)


class SlicerApp:
    """One Slicer release with a fresh scene and the SodiumDIP module loaded (widget set up, not entered)."""

    def __init__(self, release: str, module_file: Path = MODULE_FILE):
        self.release = release
        self.saved_modules = {k: v for k, v in sys.modules.items() if _owned(k)}
        for k in self.saved_modules:
            del sys.modules[k]
        self.saved_path = list(sys.path)
        sys.path.insert(0, str(STUBS))
        try:
            self._build(module_file)
        except BaseException:
            self.close()
            raise

    # --- assembling the application ---------------------------------------------------------------------

    def _build(self, module_file: Path) -> None:
        import slicer_core

        self.qt = importlib.import_module("qt")
        self.ctk = importlib.import_module("ctk")
        self.qt.QTimer._all = []
        self.qt.QTimer._pending_single_shots = []
        slicer = types.ModuleType("slicer")
        slicer.__path__ = [str(SLICER_PYTHON / self.release / "slicer")]
        for name in dir(slicer_core):
            if not name.startswith("_"):
                setattr(slicer, name, getattr(slicer_core, name))
        sys.modules["slicer"] = slicer
        self.slicer = slicer
        self._add_mrml_widgets(slicer)
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkMRMLApplicationLogic()  # registers the Axial/Sagittal/Coronal presets
        self.app_logic.SetMRMLScene(self.scene)
        slicer.mrmlScene = self.scene
        self.layout_manager = LayoutManager(slicer, self.scene, self.app_logic)
        self.dialogs = []  # (kind, text) of every message box the module opened
        self.confirm_answer = True
        slicer.app = App(self)
        for sub in ("i18n", "util", "parameterNodeWrapper", "ScriptedLoadableModule"):
            setattr(slicer, sub, importlib.import_module(f"slicer.{sub}"))
        self._answer_dialogs(slicer.util)
        plots = slicer.vtkSlicerPlotsLogic()
        plots.SetMRMLScene(self.scene)
        plots.SetMRMLApplicationLogic(self.app_logic)
        self.plots_logic = plots
        slicer.modules = types.SimpleNamespace(
            sodiumdip=types.SimpleNamespace(path=str(module_file)),
            plots=types.SimpleNamespace(logic=lambda: plots))
        self.layout_manager.setLayout(self.layout_manager.FOUR_UP)
        spec = importlib.util.spec_from_file_location("SodiumDIP", module_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules["SodiumDIP"] = module
        spec.loader.exec_module(module)
        self.module = module
        self.module_parent = types.SimpleNamespace(path=str(module_file))
        module.SodiumDIP(self.module_parent)
        self.widget_parent = slicer.qMRMLWidget()
        self.widget_parent.setLayout(self.qt.QVBoxLayout())
        self.widget_parent.setMRMLScene(self.scene)
        self.widget_parent.isEntered = False
        self.widget = module.SodiumDIPWidget(self.widget_parent)
        self.widget.setup()
        self.ui = self.widget.ui

    def _add_mrml_widgets(self, slicer) -> None:
        qt = self.qt

        class qMRMLWidget(qt.QWidget):
            _signal_names = ("mrmlSceneChanged",)

            def __init__(self, parent=None):
                super().__init__(parent)
                self._scene = None

            def setMRMLScene(self, scene):
                self._scene = scene
                self.mrmlSceneChanged.emit(scene)

            def mrmlScene(self):
                return self._scene

        class qMRMLNodeComboBox(qt.QWidget):
            """Selects one node of ``nodeTypes`` in its scene; ``currentNodeChanged(node)`` on change."""

            _signal_names = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded")

            def __init__(self, parent=None):
                super().__init__(parent)
                self.nodeTypes = []
                self.noneEnabled = self.addEnabled = self.removeEnabled = self.renameEnabled = False
                self.showChildNodeTypes = True
                self._scene = None
                self._node = None

            def setMRMLScene(self, scene):
                self._scene = scene

            def mrmlScene(self):
                return self._scene

            def currentNode(self):
                if self._node is not None and self._scene is not None and \
                        self._scene.GetNodeByID(self._node.GetID()) is not self._node:
                    self._node = None  # removed from the scene
                return self._node

            def setCurrentNode(self, node):
                if node is not None and not any(node.IsA(t) for t in self.nodeTypes):
                    raise TypeError(f"{node.GetClassName()} is not one of {self.nodeTypes}")
                if node is not self._node:
                    self._node = node
                    self.currentNodeChanged.emit(node)
                    self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

            def currentNodeID(self):
                node = self.currentNode()
                return node.GetID() if node is not None else ""

        class qMRMLSliderWidget(qt.QDoubleSpinBox):
            pass

        class qMRMLSpinBox(qt.QDoubleSpinBox):
            pass

        class qMRMLRangeWidget(qt.QWidget):
            pass

        for cls in (qMRMLWidget, qMRMLNodeComboBox, qMRMLSliderWidget, qMRMLSpinBox, qMRMLRangeWidget):
            setattr(slicer, cls.__name__, cls)
            qt.QUiLoader.widget_classes[cls.__name__] = cls
        for name in dir(self.ctk):
            if name.startswith("ctk"):
                qt.QUiLoader.widget_classes[name] = getattr(self.ctk, name)
        slicer.qSlicerWidget = qMRMLWidget

    def _answer_dialogs(self, util) -> None:
        def record(kind):
            def show(text, *args, **kwargs):
                self.dialogs.append((kind, str(text)))
            return show

        def confirm(text, *args, **kwargs):
            self.dialogs.append(("confirm", str(text)))
            return self.confirm_answer

        util.errorDisplay = record("error")
        util.warningDisplay = record("warning")
        util.infoDisplay = record("info")
        util.confirmOkCancelDisplay = confirm

    # --- what the user does -----------------------------------------------------------------------------

    def enter(self) -> None:
        self.widget_parent.isEntered = True
        self.widget.enter()

    def exit(self) -> None:
        self.widget.exit()
        self.widget_parent.isEntered = False

    def tick(self, seconds: float = 0.0, until=None, interval: float = 0.05) -> None:
        """Run the event loop: fire active timers every ``interval`` s for ``seconds`` or until ``until()``."""
        deadline = time.monotonic() + seconds
        while True:
            self.qt.tick_timers()
            if until is not None and until():
                return
            if time.monotonic() >= deadline:
                if until is not None:
                    raise TimeoutError(f"the panel did not reach the expected state in {seconds} s")
                return
            time.sleep(interval)

    def add_volume(self, name: str, volume):
        from SodiumDIPLib.apps import scene as sodium_scene

        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        sodium_scene.update_volume_node(node, volume)
        return node

    def close_scene(self) -> None:
        """File > Close scene (Slicer: StartCloseEvent, nodes removed, EndCloseEvent)."""
        self.scene.Clear(0)

    def save_scene(self, path) -> None:
        self.scene.SetURL(str(path))
        if not self.scene.Commit():
            raise RuntimeError(f"could not save the scene to {path}")

    def load_scene(self, path) -> None:
        """File > Load scene: the current scene is closed, then the file's nodes come in."""
        self.scene.SetURL(str(path))
        if not self.scene.Connect():
            raise RuntimeError(f"could not load the scene {path}")

    def close(self) -> None:
        """Unload the module (Slicer calls cleanup()), then restore sys.modules and sys.path."""
        try:
            widget = getattr(self, "widget", None)
            if widget is not None:
                widget.cleanup()
        finally:
            for k in [k for k in sys.modules if _owned(k)]:
                del sys.modules[k]
            sys.modules.update(self.saved_modules)
            sys.path[:] = self.saved_path


class App:
    """``slicer.app``: what SodiumDIP.py and Slicer's Python ask of the application."""

    applicationName = "Slicer"
    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def __init__(self, harness: SlicerApp):
        self.harness = harness
        self.connections = []
        self.cursor_depth = 0

    def connect(self, signature, slot):
        self.connections.append((signature, slot))

    def processEvents(self):
        pass

    def layoutManager(self):
        return self.harness.layout_manager

    def moduleManager(self):
        return types.SimpleNamespace(connect=lambda *a: None, disconnect=lambda *a: None)

    def setOverrideCursor(self, cursor):
        self.cursor_depth += 1

    def restoreOverrideCursor(self):
        self.cursor_depth -= 1

    def testingEnabled(self):
        return False

    def translate(self, context, text):
        return text

    def moduleDocumentationUrl(self, name):
        return self.documentationBaseUrl + name


class LayoutManager:
    """``slicer.app.layoutManager()`` on real MRML: the layout logic creates the views a layout names (with
    the XML's "default" properties only for views it creates); each slice view gets a real slice logic,
    which creates its composite node, as a slice widget does."""

    def __init__(self, slicer, scene, app_logic):
        self.slicer = slicer
        self.scene = scene
        self.logic = slicer.vtkMRMLLayoutLogic()
        self.logic.SetMRMLApplicationLogic(app_logic) if hasattr(self.logic, "SetMRMLApplicationLogic") else None
        self.logic.SetMRMLScene(scene)
        self.slice_logics = {}
        self.FOUR_UP = self.logic.GetLayoutNode().SlicerLayoutFourUpView
        self.resets = 0
        self.logic.GetLayoutNode().AddObserver("ModifiedEvent", lambda *a: self._create_views())

    def layoutLogic(self):
        return self.logic

    def setLayout(self, layout_id):
        self.logic.GetLayoutNode().SetViewArrangement(layout_id)
        self._create_views()

    @property
    def layout(self):
        return self.logic.GetLayoutNode().GetViewArrangement()

    def _slice_nodes(self):
        return [self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
                for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]

    def _create_views(self):
        for node in self._slice_nodes():
            name = node.GetLayoutName()
            if name and name not in self.slice_logics:
                logic = self.slicer.vtkMRMLSliceLogic()
                logic.SetMRMLScene(self.scene)
                logic.SetSliceNode(node)
                self.slice_logics[name] = logic

    def sliceViewNames(self):
        return list(self.slice_logics)

    def sliceWidget(self, name):
        logic = self.slice_logics.get(name)
        if logic is None or logic.GetSliceNode() is None:
            return None
        return types.SimpleNamespace(mrmlSliceNode=logic.GetSliceNode, sliceLogic=lambda: logic)

    def mrmlSliceLogics(self):
        import vtk

        collection = vtk.vtkCollection()
        for logic in self.slice_logics.values():
            collection.AddItem(logic)
        return collection

    def resetSliceViews(self):
        self.resets += 1

    def orientation(self, name):
        widget = self.sliceWidget(name)
        return widget.mrmlSliceNode().GetOrientation() if widget else None
