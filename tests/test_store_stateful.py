"""Random call sequences against :class:`MemoryStore`, checked by a model (hypothesis stateful).

Another store reuses the machine in its own test file::

    TestSQLiteStateful = store_state_machine(lambda: SQLiteStore(":memory:"))

``store_state_machine`` takes a factory of fresh, empty stores (unopened, or an async context
manager yielding an opened one) and the anyio backend to run them on.
"""

from __future__ import annotations

from bulkpipe.stores import MemoryStore
from bulkpipe.testing import store_state_machine

TestMemoryStoreAsyncio = store_state_machine(MemoryStore, backend="asyncio")
TestMemoryStoreTrio = store_state_machine(MemoryStore, backend="trio")
