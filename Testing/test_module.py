"""Static checks of the Slicer module and the extension packaging (Slicer itself cannot run here).

SodiumDIP.py compiles; every widget the code names exists in the .ui; the .ui's SlicerParameterName
bindings and the parameterNodeWrapper fields match one to one, with compatible widget types; CMake ships
every SodiumDIPLib file the module imports (transitively); the Extensions Index entry follows its schema;
the GUI side never imports torch.
"""

import ast
import hashlib
import json
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "SodiumDIP" / "SodiumDIP.py"
UI = REPO / "SodiumDIP" / "Resources" / "UI" / "SodiumDIP.ui"
MODULE_CMAKE = REPO / "SodiumDIP" / "CMakeLists.txt"
TOP_CMAKE = REPO / "CMakeLists.txt"
INDEX_JSON = REPO / "Resources" / "SodiumDIP.json"

#: Which widget classes can bind to which annotation (the parameterNodeWrapper's documented connectors).
CONNECTORS = {"QDoubleSpinBox": {"float"}, "ctkDoubleSpinBox": {"float"}, "ctkSliderWidget": {"float"},
              "QSpinBox": {"int"}, "QSlider": {"int"}, "QCheckBox": {"bool"}, "ctkCheckBox": {"bool"},
              "QComboBox": {"str", "int", "float", "bool"}, "ctkComboBox": {"str", "int", "float", "bool"},
              "QLineEdit": {"str"}}


@pytest.fixture(scope="module")
def module_tree():
    return ast.parse(MODULE.read_text())


@pytest.fixture(scope="module")
def ui_widgets():
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}, root


def parameter_fields(tree) -> dict:
    """Field name -> (annotation source, default source or None) of the @parameterNodeWrapper class."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            return {st.target.id: (ast.unparse(st.annotation), ast.unparse(st.value) if st.value else None)
                    for st in node.body if isinstance(st, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in SodiumDIP.py")


def base_type(annotation: str) -> str:
    m = re.match(r"Annotated\[(\w+)", annotation)
    return m.group(1) if m else annotation


def test_module_compiles(tmp_path):
    py_compile.compile(str(MODULE), cfile=str(tmp_path / "SodiumDIP.pyc"), doraise=True)


def test_follows_the_scripted_module_template(module_tree):
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in module_tree.body if isinstance(n, ast.ClassDef)}
    assert classes["SodiumDIP"] == ["ScriptedLoadableModule"]
    assert classes["SodiumDIPWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["SodiumDIPLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["SodiumDIPTest"] == ["ScriptedLoadableModuleTest"]
    src = MODULE.read_text()
    for needle in ('loadUI(self.resourcePath("UI/SodiumDIP.ui"))',
                   "connectParameterNodeGui(self._parameterNode, self.ui)",
                   'slicer.app.connect("startupCompleted()", registerSampleData)',
                   "registerCustomSampleDataSource", "self.parent.categories", "self.parent.acknowledgementText"):
        assert needle in src, needle


def test_every_widget_the_code_names_exists_in_the_ui(module_tree, ui_widgets):
    widgets, _ = ui_widgets
    named = {n.attr for n in ast.walk(module_tree)
             if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
             and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert named, "the widget uses self.ui.<name>"
    missing = sorted(named - set(widgets))
    assert not missing, f"self.ui names widgets that the .ui does not define: {missing}"


def test_parameter_names_match_fields_one_to_one(module_tree, ui_widgets):
    widgets, _ = ui_widgets
    fields = parameter_fields(module_tree)
    bound = {}
    for name, w in widgets.items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                param = prop.find("string").text
                assert param not in bound, f"{param} bound twice ({bound.get(param)} and {name})"
                bound[param] = w
    unbound = set(fields) - set(bound)
    assert unbound == {"advancedSource"}, f"parameter-node fields without a widget: {sorted(unbound)}"
    assert set(bound) <= set(fields), f"in .ui only: {sorted(set(bound) - set(fields))}"
    for param, w in bound.items():
        cls, annotation = w.get("class"), fields[param][0]
        kind = base_type(annotation)
        if cls == "qMRMLNodeComboBox":
            types = [s.text for s in w.find("property[@name='nodeTypes']").iter("string")]
            assert kind.startswith("vtkMRML") and types == [kind], f"{param}: {kind} vs node types {types}"
        else:
            assert kind in CONNECTORS.get(cls, set()), f"{param}: a {cls} cannot bind a {kind}"
            if cls in ("QComboBox", "ctkComboBox"):
                assert "Choice(" in annotation, f"{param}: a combo box needs a Choice validator"


def test_node_selectors_get_the_scene(ui_widgets):
    widgets, root = ui_widgets
    combos = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert combos and combos <= connected, f"selectors without a scene: {sorted(combos - connected)}"


def test_advanced_fields_hold_no_copy_of_the_engine_values(module_tree, ui_widgets):
    """Defaults and ranges of the Advanced fields come from the engine (presets + SodiumDIPLib.params via
    worker --describe): the parameter node declares none, and the .ui sets no range on their widgets."""
    from SodiumDIPLib.apps.scene import PANEL_PARAMETERS

    widgets, _ = ui_widgets
    fields = parameter_fields(module_tree)
    for field in PANEL_PARAMETERS:
        annotation, default = fields[field]
        assert "WithinRange" not in annotation, f"{field}: a range copied into the module"
        assert default is None or "_engineChoices" in default, f"{field}: a default copied into the module"
    for w in widgets.values():
        prop = w.find("property[@name='SlicerParameterName']")
        if prop is not None and prop.find("string").text in PANEL_PARAMETERS:
            names = {p.get("name") for p in w.findall("property")}
            assert not names & {"minimum", "maximum", "value"}, f"{w.get('name')}: range/value in the .ui"


def test_panel_only_spin_boxes_match_their_validators(module_tree, ui_widgets):
    widgets, _ = ui_widgets
    fields = parameter_fields(module_tree)
    for w in widgets.values():
        prop = w.find("property[@name='SlicerParameterName']")
        if prop is None or w.get("class") not in ("QDoubleSpinBox", "QSpinBox"):
            continue
        name = prop.find("string").text
        m = re.search(r"WithinRange\(([^,]+), ([^)]+)\)", fields[name][0])
        if m is None:
            continue
        lo = float(w.find("property[@name='minimum']/*").text)
        hi = float(w.find("property[@name='maximum']/*").text)
        assert float(m.group(1)) == lo and float(m.group(2)) == hi, f"{name}: .ui range != validator range"
        assert lo <= float(fields[name][1]) <= hi


def test_panel_choices_and_advanced_fields_exist_in_the_engine(module_tree):
    from SodiumDIPLib.methods import list_methods
    from SodiumDIPLib.apps.scene import PANEL_PARAMETERS

    fields = parameter_fields(module_tree)
    methods = {m.name: m for m in list_methods()}
    offered = ast.literal_eval(re.search(r"^METHODS = (\[.*\])$", MODULE.read_text(), re.M).group(1))
    assert set(offered) <= set(methods), f"the panel offers unknown methods: {set(offered) - set(methods)}"
    presets = ast.literal_eval(re.search(r"^PRESETS = (\[.*\])$", MODULE.read_text(), re.M).group(1))
    assert all(set(m.presets) == set(presets) for m in methods.values())
    engine_names = {k for m in methods.values() for p in m.presets.values() for k in p}
    for field, names in PANEL_PARAMETERS.items():
        assert field in fields, f"Advanced field {field} is not in the parameter node"
        assert set(names) & engine_names, f"{field} maps to {names}, which no method has"
    # the preset's own values fit the panel's validators (else the panel could not show them)
    for m in methods.values():
        for preset in m.presets.values():
            from SodiumDIPLib.apps.scene import panel_values

            for field, value in panel_values(preset).items():
                annotation = fields[field][0]
                r = re.search(r"WithinRange\(([^,]+), ([^)]+)\)", annotation)
                if r:
                    assert float(r.group(1)) <= float(value) <= float(r.group(2)), (m.name, field, value)
                c = re.search(r"Choice\((\[.*?\])\)", annotation)
                if c:
                    assert value in ast.literal_eval(c.group(1)), (m.name, field, value)


def engine_import_closure() -> set:
    """Every SodiumDIPLib file the module needs: its imports, transitively (function-level imports too),
    the worker it starts with -m, parent packages, and packages that import every module in their folder."""

    def module_file(mod):
        p = REPO.joinpath(*mod.split("."))
        if (p / "__init__.py").is_file():
            return p / "__init__.py"
        return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None

    def imports_of(path: Path, modname: str) -> set:
        text = path.read_text()
        is_pkg = path.name == "__init__.py"
        pkg = modname if is_pkg else modname.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}
        if is_pkg and "iter_modules(__path__)" in text:  # a registry that imports its whole folder
            out |= {f"{modname}.{f.stem}" for f in path.parent.glob("*.py") if f.name != "__init__.py"}
        return {m for m in out if m and m.split(".")[0] == "SodiumDIPLib"}

    todo = imports_of(MODULE, "SodiumDIP") | {"SodiumDIPLib.apps.worker"}
    seen = {}
    while todo:
        mod = todo.pop()
        f = module_file(mod)
        if f is None or mod in seen:
            continue
        seen[mod] = f
        parts = mod.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}
        todo |= imports_of(f, mod)
    return {str(p.relative_to(REPO)) for p in seen.values()}


def cmake_list(text: str, variable: str) -> list:
    m = re.search(r"set\(" + variable + r"\s+(.*?)\)", text, re.S)
    assert m, f"{variable} not set"
    return [line.split("#")[0].strip() for line in m.group(1).splitlines() if line.split("#")[0].strip()]


def test_cmake_ships_every_engine_file_the_module_imports():
    text = MODULE_CMAKE.read_text()
    listed = cmake_list(text, "ENGINE_PYTHON_SCRIPTS")
    needed = engine_import_closure()
    assert {"SodiumDIPLib/apps/worker.py", "SodiumDIPLib/pipeline.py", "SodiumDIPLib/apps/scene.py"} <= needed
    missing = sorted(needed - set(listed))
    assert not missing, f"SodiumDIP/CMakeLists.txt does not ship: {missing}"
    for f in listed:
        assert (REPO / f).is_file(), f"CMake lists a file that does not exist: {f}"
    assert len(listed) == len(set(listed))
    assert "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/.." in text and "NO_INSTALL_SUBDIR" in text
    for f in cmake_list(text, "MODULE_PYTHON_RESOURCES") + cmake_list(text, "MODULE_PYTHON_SCRIPTS"):
        f = f.replace("${MODULE_NAME}", "SodiumDIP")
        assert (REPO / "SodiumDIP" / f).is_file(), f


def test_top_level_cmake_has_the_extension_metadata():
    text = TOP_CMAKE.read_text()
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({var} "[^"]+"\)', text), var
    order = ["project(SodiumDIP)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
             "add_subdirectory(SodiumDIP)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions)


def test_extensions_index_entry_follows_the_schema():
    entry = json.loads(INDEX_JSON.read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}  # schema v1.0.2
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.")
    assert entry.get("scm_type", "git") in ("git", "local") and 1 <= entry.get("tier", 1) <= 5
    cmake = TOP_CMAKE.read_text()
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', cmake).group(1)
    assert entry.get("build_dependencies", []) == ([] if depends == "NA" else depends.split(";"))


def test_icons_and_license():
    from PIL import Image

    for path in (REPO / "Resources/Icons/SodiumDIP.png", REPO / "SodiumDIP/Resources/Icons/SodiumDIP.png"):
        with Image.open(path) as im:
            assert im.size == (128, 128) and im.format == "PNG"
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 200, "a drawn icon, not a flat square"
    text = (REPO / "LICENSE").read_text()
    assert "BSD 3-Clause" in text and "SodiumDIP developers" in text


def test_sample_data_checksums_match_the_public_files(uhf_dir, module_tree):
    text = MODULE.read_text()
    url = re.search(r'^SAMPLE_DATA_URL = "(.*)"$', text, re.M).group(1)
    assert url.startswith("https://github.com/jianxun-qu/UHF-23Na/") and url.endswith("/demo_data/")
    pairs = re.findall(r'\("(\w+\.nii)", "\w+",\s*"([0-9a-f]{64})"\)', text)
    assert len(pairs) >= 4
    for name, digest in pairs:
        assert hashlib.sha256((uhf_dir / name).read_bytes()).hexdigest() == digest, name


def test_gui_side_never_imports_torch():
    """Slicer's process loads SodiumDIP.py's engine imports; torch must only load in the worker."""
    code = ("import sys; import SodiumDIPLib.apps.scene, SodiumDIPLib.apps.jobs, SodiumDIPLib.params; "
            "print('torch' in sys.modules, 'SodiumDIPLib.pipeline' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr
    imported = {n.names[0].name for n in ast.walk(ast.parse(MODULE.read_text())) if isinstance(n, ast.Import)}
    imported |= {n.module for n in ast.walk(ast.parse(MODULE.read_text())) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.split(".")[0] == "torch" for m in imported)
