"""The doors between the lab's parts open one way, read from the source with `ast` (every import,
function-local ones included):

- the library (`obow`) never imports the lab (`server`, `worker`) nor the client;
- `server` never imports `worker` (workers are started by command, runs are sent by task name);
- `worker` uses only the lab core (`server.core`), never the HTTP layer (api, pages, services, app);
- the core (`server.core`) imports neither the HTTP layer nor FastAPI, nor torch;
- the HTTP client (`obow_lab_client`) imports nothing of the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"obow": REPO / "obow", "server": REPO / "server", "worker": REPO / "worker",
            "obow_lab_client": REPO / "client" / "obow_lab_client"}
PROJECT = tuple(PACKAGES)


def module_name(package: str, path: Path) -> str:
    parts = [package, *path.relative_to(PACKAGES[package]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Absolute names of every module imported anywhere in the file (relative imports resolved)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    edges = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            module = module_name(package, path)
            edges[module] = imports_of(path, module)
    return edges


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


HTTP_LAYER = ("server.api", "server.pages", "server.services", "server.app", "server.schemas", "server.cli")
RULES = [
    ("obow", ("server", "worker", "obow_lab_client"), "the library never imports the lab"),
    ("server", ("worker",), "the server starts workers by command and sends runs by name"),
    ("worker", HTTP_LAYER, "workers use the lab core, never the HTTP layer"),
    ("server.core", (*HTTP_LAYER, "fastapi", "starlette", "torch", "torchvision"),
     "the core is torch-free and knows nothing of HTTP"),
    ("obow_lab_client", ("obow", "server", "worker", "torch", "sqlalchemy", "celery"),
     "the client speaks HTTP only"),
]


@pytest.mark.parametrize(("source", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_doors_open_one_way(source, forbidden, why):
    violations = sorted(
        f"{module} imports {name}"
        for module, names in graph().items()
        if _under(module, source)
        for name in names
        if any(_under(name, bad) for bad in forbidden)
    )
    assert violations == [], f"{why}:\n" + "\n".join(violations)


def test_the_rules_see_real_imports():
    """The reader itself: a known edge of each kind is found (a reader that saw nothing would pass all)."""
    edges = graph()
    assert "server.core.models" in edges["server.core.transitions"]
    assert "server.core.transitions" in edges["worker.tasks"]
    assert "obow.config.kinds" in edges["server.core.kinds"]
    assert any(_under(name, "worker") for name in imports_of(REPO / "tests/lab/test_dispatch.py", "tests.x"))
