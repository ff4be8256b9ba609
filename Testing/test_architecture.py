"""The engine's folders follow its data path and imports point one way (docs/architecture.md): no module imports
one of a higher layer, at the top of the file or inside a function, and no two modules import each other."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "SodiumDIPLib"

# low -> high; a module may import its own layer and the layers below it
LAYERS = [
    {"SodiumDIPLib", "SodiumDIPLib.errors", "SodiumDIPLib.params"},
    {"SodiumDIPLib.data"},
    {"SodiumDIPLib.physics", "SodiumDIPLib.problem"},
    {"SodiumDIPLib.priors", "SodiumDIPLib.solvers", "SodiumDIPLib.metrics"},
    {"SodiumDIPLib.dip", "SodiumDIPLib.learned"},
    {"SodiumDIPLib.methods"},
    {"SodiumDIPLib.pipeline"},
    {"SodiumDIPLib.apps", "SodiumDIPLib.worker", "SodiumDIPLib.__main__"},
]


def _modules() -> dict:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} belongs to no layer of the architecture"
    return best[0]


def _imports(module: str) -> set:
    """Every SodiumDIPLib module ``module`` imports (module level and inside functions)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in MODULES and name != module and name.startswith("SodiumDIPLib"):
                found.add(name)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_upward_imports():
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                    if _layer(t) > _layer(m) and not m.startswith(t + "."))
    assert not upward, "imports against the data path:\n" + "\n".join(upward)


def test_no_import_cycles():
    def reaches(start, goal, seen):
        for t in GRAPH[start]:
            if t == goal or (t not in seen and (seen.add(t) or reaches(t, goal, seen))):
                return True
        return False

    cycles = sorted(f"{a} <-> {b}" for a in GRAPH for b in GRAPH[a]
                    if not (a.startswith(b + ".") or b.startswith(a + ".")) and reaches(b, a, {b}))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
