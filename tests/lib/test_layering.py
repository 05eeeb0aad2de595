"""The library's import graph, read from the source with `ast`: no cycles, no upward imports.

Every import counts, including those inside functions (a lazy import still couples two modules, and a
lazy upward import is how the old `models.loading` <-> `export.official` cycle hid). The layers, bottom
first, and what each may import:

    foundation (errors, hashing, procs, distributed, devices, reporting, io) < config < data < models
    < train < eval < export < analysis < runs < cli

A module may import its own layer and the layers below, with one exception: models build on config and
the foundation only (not on data), so a network can be built and loaded without the input pipeline.
The library never imports the lab (`server`, `worker`), and no module imports another's private name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "obow"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("obow", "obow.errors", "obow.hashing", "obow.procs", "obow.distributed", "obow.devices",
                    "obow.reporting", "obow.io")),
    ("config", ("obow.config",)),
    ("data", ("obow.data",)),
    ("models", ("obow.models",)),
    ("train", ("obow.train",)),
    ("eval", ("obow.eval",)),
    ("export", ("obow.export",)),
    ("analysis", ("obow.analysis",)),
    ("runs", ("obow.runs",)),
    ("cli", ("obow.cli",)),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
# (importer layer, imported layer) pairs refused although the order alone would allow them
FORBIDDEN = {("models", "data")}
LAB_PACKAGES = ("server", "worker")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = library_modules()


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import statement of the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def edges() -> dict[str, set[tuple[str, int]]]:
    """Library module -> the library modules it imports (with the line of the import)."""
    graph: dict[str, set[tuple[str, int]]] = {}
    for name, path in MODULES.items():
        targets: set[tuple[str, int]] = set()
        for module, names, line in imports_of(name, path):
            if module != "obow" and not module.startswith("obow."):
                continue
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            targets |= {(m, line) for m in submodules} if submodules else {(module, line)}
        graph[name] = {(t, line) for t, line in targets if t != name}
    return graph


GRAPH = edges()


def layer_of(module: str) -> str:
    best, best_len = None, -1
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best


def test_every_module_has_a_layer_and_every_import_resolves():
    for name in MODULES:
        layer_of(name)
    unknown = sorted({(src, dst) for src, dsts in GRAPH.items() for dst, _ in dsts if dst not in MODULES})
    assert unknown == [], f"imports of modules that do not exist: {unknown}"


def test_no_import_cycle():
    """Tarjan's strongly connected components over the module graph: every component must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == [], f"import cycles: {cycles}"


def test_no_layer_is_imported_from_below():
    violations = []
    for src, targets in GRAPH.items():
        for dst, line in sorted(targets):
            a, b = layer_of(src), layer_of(dst)
            if RANK[b] > RANK[a] or (a, b) in FORBIDDEN:
                violations.append(f"{src} ({a}) imports {dst} ({b}) at line {line}")
    assert violations == [], "layer violations:\n" + "\n".join(violations)


def test_the_library_never_imports_the_lab():
    found = [f"{name} line {line}: {module}" for name, path in MODULES.items()
             for module, _, line in imports_of(name, path) if module.split(".")[0] in LAB_PACKAGES]
    assert found == []


def test_no_private_name_is_imported_from_another_module():
    found = [f"{name} line {line}: from {module} import {n}" for name, path in MODULES.items()
             for module, names, line in imports_of(name, path)
             if module.startswith("obow") for n in names if n.startswith("_") and module != name]
    assert found == []


def test_what_the_server_imports_stays_free_of_torch():
    """The lab server imports these at request time; one fresh interpreter imports them in turn and
    names the first that pulls in a heavy package."""
    modules = ["obow.config", "obow.config.export", "obow.config.eval", "obow.config.words", "obow.runs",
               "obow.hashing", "obow.errors", "obow.io.export_formats"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = [m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules]\n"
        "    if heavy:\n"
        "        sys.exit(f'{name} imports {heavy}')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_checker_sees_a_function_local_upward_import(tmp_path):
    """The graph reader itself: a lazy import inside a function is an edge like any other."""
    source = tmp_path / "obow" / "models" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from obow.export import run\n    from ..train import engine\n")
    found = imports_of("obow.models.x", source)
    assert [(m, n) for m, n, _ in found] == [("obow.export", ["run"]), ("obow.train", ["engine"])]
