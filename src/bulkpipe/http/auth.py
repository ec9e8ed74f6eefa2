"""Who is calling, and which jobs they may touch.

The host supplies ``auth(request) -> Principal | None`` (sync or async). ``None`` means "not
authenticated" (401); raising ``fastapi.HTTPException`` sends that status (403 for "known, but
not allowed"). The returned :class:`Principal` scopes every job route by its ``owner``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import attrs
from fastapi import HTTPException, Request

from ..models import Job

__all__ = ["ANONYMOUS", "AuthCallable", "Principal"]


@attrs.frozen(kw_only=True)
class Principal:
    """An authenticated caller.

    ``owner`` is the tenant the caller acts for. A principal with an owner sees, cancels and
    retries only the jobs with that owner, and the jobs it submits get that owner. A principal
    without one (``owner=None``, e.g. an operator) may touch every job, and may submit jobs
    for any owner.
    """

    name: str = attrs.field(default="anonymous")
    owner: str | None = attrs.field(default=None)

    def may_access(self, job: Job) -> bool:
        """Whether this principal may see (and so cancel or retry) ``job``."""
        return self.owner is None or job.owner == self.owner


#: The principal of every request when the app has no ``auth``: it may touch every job.
ANONYMOUS = Principal()

#: The host's authentication hook: a sync or async callable of the request.
AuthCallable = Callable[[Request], Principal | Awaitable[Principal | None] | None]


def principal_dependency(auth: AuthCallable | None) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency that authenticates the request with ``auth``."""

    async def principal(request: Request) -> Principal:
        if auth is None:
            return ANONYMOUS
        result = auth(request)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            raise HTTPException(401, "authentication required; check your credentials")
        if not isinstance(result, Principal):
            # A host bug, not the caller's: fail loudly in the server log, generically here.
            raise TypeError(
                f"the auth callable must return a bulkpipe.http.Principal or None, "
                f"not {type(result).__name__}"
            )
        return result

    return principal
