"""Turning every error into a JSON problem body: library errors, HTTP errors, invalid requests
and, as a last resort, anything else (logged with its traceback; the client sees none)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from ..errors import (
    BulkpipeError,
    InvalidArgument,
    JobNotCancellable,
    JobNotFinished,
    JobNotFound,
    NothingToRetry,
    PipelineClosed,
    StoreError,
    SubmitLeaseLost,
    UnknownProcessor,
    UnknownSource,
)
from .schemas import FieldError, Problem

log = logging.getLogger("bulkpipe.http")

#: Library errors and the status each one is sent with; the first match (by isinstance) wins.
STATUS_OF: tuple[tuple[type[BulkpipeError], int], ...] = (
    (JobNotFound, 404),
    (JobNotCancellable, 409),
    (JobNotFinished, 409),
    (NothingToRetry, 409),
    (UnknownProcessor, 400),
    (UnknownSource, 400),
    (InvalidArgument, 400),
    (PipelineClosed, 503),
    (StoreError, 503),
    (SubmitLeaseLost, 503),  # this server could not renew the lease in time
)

_STORE_DOWN = "the job store is unavailable; try again later (the server log has the cause)"

#: Seconds a client is told to wait (``Retry-After``) when the job store is unavailable.
RETRY_AFTER_SECONDS = 5
_FAILED = "the server failed to handle this request; the server log has the cause"
_NOT_RUNNING = (
    "the bulkpipe pipeline is not running; the host must run the app's lifespan or enter the "
    "Pipeline it passed to create_app"
)


def problem(
    status: int,
    detail: str,
    *,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON problem response."""
    body = Problem(
        title=_phrase(status),
        status=status,
        detail=detail,
        errors=list(errors) if errors is not None else None,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def field_errors(raw: Sequence[Any]) -> list[FieldError]:
    """Pydantic/FastAPI error dicts as :class:`FieldError` (without echoing the input)."""
    return [
        FieldError(loc=list(err.get("loc", ())), msg=str(err.get("msg", "")), type=err["type"])
        for err in raw
    ]


def _where(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc) or "body"


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    first = errors[0] if errors else None
    detail = f"{_where(first.loc)}: {first.msg}" if first else "the request is not valid"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more; see errors)"
    return problem(422, detail, errors=errors)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the methods of the first route matching the path.
        headers["Allow"] = ", ".join(_allowed(request))
    return problem(exc.status_code, detail, headers=headers)


def _allowed(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        matched = isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
        if matched and route.methods:
            methods |= route.methods
    return sorted(methods)


async def _bulkpipe(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BulkpipeError)
    status = next((code for cls, code in STATUS_OF if isinstance(exc, cls)), 500)
    if isinstance(exc, StoreError):
        # One line, no traceback: while the store is down every request fails this way.
        log.warning("job store error on %s %s: %s", request.method, request.url.path, exc)
        return problem(status, _STORE_DOWN, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, PipelineClosed):
        return problem(status, _NOT_RUNNING)
    if status == 500:
        log.error("unexpected bulkpipe error", exc_info=exc)
        return problem(500, _FAILED)
    return problem(status, str(exc))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after sending this, for the server to log it.
    return problem(500, _FAILED)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(BulkpipeError, _bulkpipe)
    app.add_exception_handler(Exception, _unexpected)
