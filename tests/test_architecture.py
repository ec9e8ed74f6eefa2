"""The shape of the package, read from its source: import arrows point one way, modules stay small.

The import graph is built with :mod:`ast` from every ``import`` in ``src/bulkpipe``: module level,
under ``if TYPE_CHECKING:``, and inside functions (a deferred import is still an arrow a reader
has to follow). One module is left out: ``bulkpipe/__init__.py``, which only re-exports the public
names; every submodule import passes through it at run time, so counting it would make each
arrow back into the package root a "cycle" that says nothing about the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bulkpipe"
ROOT = "bulkpipe"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The bulkpipe modules that ``name`` (at ``path``) imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # ``from .pkg import mod`` imports the submodule ``pkg.mod``; ``from .pkg import
            # name`` imports ``pkg`` itself (its __init__).
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` names a module or a name
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the bulkpipe modules it imports (the package root left out, see above)."""
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items() if name != ROOT}
    return {name: {t for t in targets if t != ROOT} for name, targets in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None when the graph has none."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_the_graph_sees_imports_of_every_kind() -> None:
    graph = import_graph()
    assert "bulkpipe.store" in graph["bulkpipe.worker"]  # module level
    assert "bulkpipe.stores.memory" in graph["bulkpipe.pipeline"]  # inside a function
    assert "bulkpipe.stores.sqlite" in graph["bulkpipe.stores"]  # under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in _modules().items()
    }
    over = sorted((lines, name) for name, lines in sizes.items() if lines > MAX_LINES)
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{name} ({lines})" for lines, name in reversed(over)
    )
