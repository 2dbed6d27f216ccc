"""The package's import graph runs one way (design.md's layers, bottom up), with no circle.

Every ``import`` statement of every module counts, also the ones inside functions (a lazy import
is still an edge). A package's ``__init__`` is left out: it re-exports its modules by design.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gradcam_callback"

# design.md's layers, bottom up: a module may import only modules on a lower layer (or its own
# layer's package mates, see demos). Modules not listed are checked for circles only.
LAYERS: list[set[str]] = [
    {"targets", "threads"},
    {"layers"},
    {"engine"},
    {"guided"},
    {"render"},
    {"probes"},
    {"trainer_utils", "multilabel"},
    {"metrics"},
    {"rules"},
    {"evidence"},
    {"causal", "flags"},
    {"wording"},
    {"alarms"},
    {"quality"},
    {"probing"},
    {"sinks", "background"},
    {"reporting"},
    {"checks"},
    {"runs"},
    {"callback"},
    {"lightning", "pytorch_lightning", "cli"},
    {"demos.world", "demos.data", "demos.models", "demos.training", "demos.cli"},
    {"synthetic", "demo", "demos.__main__"},
]
_LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
_DEMOS_ORDER = ["demos.world", "demos.data", "demos.models", "demos.training", "demos.cli"]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"}


def _resolve(importer: str, level: int, module: str | None) -> str:
    """Absolute in-package name of ``from <level dots><module> import ...`` in ``importer``."""
    base = importer.split(".")[:-level] if level else []
    return ".".join([*base, *(module.split(".") if module else [])])


def _imports(name: str, path: Path, modules: set[str]) -> dict[str, list[str]]:
    """In-package modules imported by ``name`` -> the names it takes from each."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("gradcam_callback"):
                continue
            target = (
                _resolve(name, node.level, node.module)
                if node.level
                else (node.module or "").removeprefix("gradcam_callback").lstrip(".")
            )
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in modules:  # from . import metrics
                    out.setdefault(sub, [])
                elif target in modules:
                    out.setdefault(target, []).append(alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gradcam_callback."):
                    target = alias.name.removeprefix("gradcam_callback.")
                    if target in modules:
                        out.setdefault(target, [])
    return out


def _graph() -> dict[str, dict[str, list[str]]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = _graph()
    assert "layers" in graph["engine"] and "targets" in graph["engine"]
    assert "metrics" in graph["evidence"]  # from . import metrics as M
    assert "probes" in graph["demos.models"]  # from ..probes import unpack_batch
    assert "render" in graph["sinks"]  # an import inside a function


def test_no_import_circle() -> None:
    assert _cycle(_graph()) is None, f"import circle: {' -> '.join(_cycle(_graph()) or [])}"


def test_no_module_imports_one_above_it() -> None:
    bad = []
    for name, deps in _graph().items():
        for dep in deps:
            if name in _LAYER and dep in _LAYER:
                up = _LAYER[dep] > _LAYER[name]
                if _LAYER[dep] == _LAYER[name] and dep in _DEMOS_ORDER:
                    up = _DEMOS_ORDER.index(dep) > _DEMOS_ORDER.index(name)
                if up:
                    bad.append(f"{name} imports {dep}")
    assert not bad, bad
    assert "guided" not in _graph()["engine"]


def test_no_private_names_across_modules() -> None:
    bad = [
        f"{name} takes {taken} from {dep}"
        for name, deps in _graph().items()
        for dep, names in deps.items()
        for taken in names
        if taken.startswith("_")
    ]
    assert not bad, bad
