"""The contract every :class:`bulkpipe.JobStore` must meet, as tests a store author can reuse.

Import this module from test code only: it needs pytest, and :func:`store_state_machine` needs
hypothesis (both in the ``dev`` extra). Nothing in bulkpipe itself imports it.

Two pieces prove a store:

* :class:`StoreContract`, a pytest base class of small example tests. Subclass it in a
  ``Test*`` class and provide a fresh, empty, opened store, either by overriding
  :meth:`StoreContract.make_store` (the base ``store`` fixture opens and closes it) or by
  overriding the ``store`` fixture itself when the store needs other fixtures::

      class TestSQLiteStore(StoreContract):
          @pytest.fixture
          async def store(self, tmp_path: Path) -> AsyncIterator[JobStore]:
              store = SQLiteStore(tmp_path / "jobs.db")
              await store.open()
              yield store
              await store.close()

  The tests are marked ``anyio``; run them under anyio's pytest plugin with an
  ``anyio_backend`` fixture (bulkpipe's own suite runs each on asyncio and trio).

* :func:`store_state_machine`, a hypothesis state machine that drives a store through random
  sequences of calls and checks it against a small pure-Python model::

      TestSQLiteStateful = store_state_machine(lambda: SQLiteStore(":memory:"))

The helpers (:func:`make_job`, :func:`encoded`, :func:`ok_row`, :func:`fail_row`, ...) build
the records the store protocol takes, with sensible defaults.

The package holds three parts: ``helpers`` (those builders), ``contract`` (the example tests,
one module per area) and ``stateful`` (the state machine). Import the names from here.
"""

from __future__ import annotations

from .contract import StoreContract
from .helpers import (
    LONG_LEASE,
    add_job,
    claim,
    decoded,
    encoded,
    fail_row,
    job_error,
    make_job,
    ok_row,
    read_all_outcomes,
    report,
)
from .stateful import StoreFactory, store_state_machine

__all__ = [
    "LONG_LEASE",
    "StoreContract",
    "StoreFactory",
    "add_job",
    "claim",
    "decoded",
    "encoded",
    "fail_row",
    "job_error",
    "make_job",
    "ok_row",
    "read_all_outcomes",
    "report",
    "store_state_machine",
]
