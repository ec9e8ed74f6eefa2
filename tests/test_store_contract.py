"""The store contract (:mod:`bulkpipe.testing`) run against :class:`MemoryStore`.

To prove another store, subclass :class:`bulkpipe.testing.StoreContract` in its own test file
and provide a fresh, empty store; every test then runs on asyncio and on trio::

    class TestSQLiteStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path: Path) -> AsyncIterator[JobStore]:
            store = SQLiteStore(tmp_path / "jobs.db")
            await store.open()
            yield store
            await store.close()

When the store needs no other fixture, override ``make_store()`` to return an unopened store
instead (the base ``store`` fixture opens and closes it). Timing-sensitive tests sleep
``lease_wait`` seconds for a ``short_lease``; raise both class attributes for a store with a
coarse clock. Pair the class with the state machine, as in ``tests/test_store_stateful.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bulkpipe
from bulkpipe.store import JobStore
from bulkpipe.stores import MemoryStore
from bulkpipe.testing import StoreContract

TEST_ONLY = {"pytest", "hypothesis", "bulkpipe.testing"}


class TestMemoryStore(StoreContract):
    """MemoryStore is the executable specification; it must pass its own contract."""

    def make_store(self) -> JobStore:
        return MemoryStore()


def _imports(path: Path, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_bulkpipe_never_imports_its_test_tools() -> None:
    root = Path(bulkpipe.__file__).parent
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] == "testing":
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
        leaked = {
            name
            for name in _imports(path, package)
            if name.split(".")[0] in TEST_ONLY or name.startswith("bulkpipe.testing")
        }
        assert not leaked, f"{path.relative_to(root.parent)} imports {sorted(leaked)}"
