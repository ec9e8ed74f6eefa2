"""The example-based store contract: :class:`StoreContract`, joined from one class per area.

Each area is its own module (jobs and submission, claims and leases, outcomes, progress, where
pages end, housekeeping, submit leases and idempotency keys, the worker registry); a store
passes the contract when a ``Test*`` subclass of :class:`StoreContract` passes.
"""

from __future__ import annotations

from .claims import ClaimsContract
from .closed import ClosedJobsContract
from .housekeeping import HousekeepingContract
from .jobs import JobsContract
from .outcomes import OutcomesContract
from .pages import PagesContract
from .progress import ProgressContract
from .submits import SubmitsContract
from .workers import WorkersContract

__all__ = ["StoreContract"]


class StoreContract(
    JobsContract,
    ClaimsContract,
    OutcomesContract,
    ProgressContract,
    PagesContract,
    HousekeepingContract,
    SubmitsContract,
    WorkersContract,
    ClosedJobsContract,
):
    """Example tests of every :class:`JobStore` semantic; subclass it to test a store.

    Override :meth:`make_store`, or the ``store`` fixture, to provide a fresh, empty store.
    ``short_lease`` and ``lease_wait`` set the lease-expiry tests' timing; raise them for a
    store whose clock is coarse.
    """
