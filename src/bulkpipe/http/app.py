"""``create_app``: the job API as a FastAPI application a host serves or mounts."""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures at run
# time, and they use names local to ``_Routes.__init__``.
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from enum import Enum
from typing import Annotated, Any, NoReturn

import anyio
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from .. import __version__
from ..errors import (
    InvalidArgument,
    InvalidArgumentType,
    ItemSourceError,
    JobNotFound,
    UnknownProcessor,
)
from ..jobs import check_idempotency_key
from ..models import ItemStatus, Job, JobStatus, WorkerInfo
from ..pipeline import OUTCOME_PAGE_BYTES, Pipeline
from ..store import JobStore
from . import problems
from .auth import AuthCallable, Principal, principal_dependency
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS, BodyLimit
from .schemas import INT32_MAX, JobList, OutcomePage, Problem, RetryJob, SubmitJob
from .sse import EventStream, job_events, outcome_lines

__all__ = ["create_app"]

#: Media types of ``GET /jobs/{id}/outcomes`` when the client asks for JSON Lines.
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl")

_to_json = OutcomePage.__pydantic_serializer__.to_json

_LOCATION = {"description": "The job's URL.", "schema": {"type": "string"}}

JobId = Annotated[str, Path(min_length=1, max_length=200, description="The job id.")]


def _responses(
    *statuses: int, auth: bool, streaming: bool = False
) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route, each a JSON :class:`Problem`.

    A ``streaming`` route's response class is not JSON, and FastAPI would file its error
    bodies under that media type, so they are spelled out (the other routes register the
    Problem schema).
    """
    described = {
        400: "The request names an unknown processor or source, or is otherwise wrong.",
        401: "Not authenticated.",
        403: "Authenticated, but not allowed.",
        404: "No such job (or not one the caller may see).",
        409: "The job is not in a state that allows this.",
        413: "The body, or its item count, is over the server's limit.",
        422: "A value is not valid; `errors` names each one.",
        503: "The job store or the pipeline is unavailable.",
    }
    wanted = [*statuses, 422, 503, *((401, 403) if auth else ())]
    body: dict[str, Any] = (
        {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        if streaming
        else {"model": Problem}
    )
    return {code: {**body, "description": described[code]} for code in sorted(wanted)}


def create_app(
    pipeline_or_store: Pipeline | JobStore,
    *,
    auth: AuthCallable | None = None,
    workers: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
    title: str = "bulkpipe",
    openapi_url: str | None = "/openapi.json",
    docs_url: str | None = "/docs",
) -> FastAPI:
    """The bulkpipe job API as an ASGI (FastAPI) application.

    Given a running :class:`~bulkpipe.Pipeline`, the app uses it and the host manages its
    lifecycle. Given a :class:`~bulkpipe.JobStore`, the app makes ``Pipeline(store,
    workers=workers or 0)`` and runs it in the app's lifespan (a mounted sub-application's
    lifespan does not run by itself: see docs/http.md).

    ``auth(request)`` returns a :class:`~bulkpipe.http.Principal` or ``None`` (401), or raises
    ``fastapi.HTTPException`` (e.g. 403); without ``auth`` every caller may touch every job.
    Bodies over ``max_body_bytes`` and submissions of more than ``max_items`` items get 413.
    The OpenAPI document (``openapi_url``) and the docs page (``docs_url``) are served without
    auth; pass ``None`` to turn either off.
    """
    if max_body_bytes < 1 or max_items < 1:
        raise InvalidArgument(
            f"max_body_bytes and max_items must be positive, not {max_body_bytes} and {max_items}"
        )
    lifespan = None
    if isinstance(pipeline_or_store, Pipeline):
        if workers is not None:
            raise InvalidArgument(
                "workers= is for an app made from a store; this pipeline already has its workers"
            )
        pipeline = pipeline_or_store
    elif isinstance(pipeline_or_store, JobStore):
        pipeline = Pipeline(pipeline_or_store, workers=workers or 0)

        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            async with pipeline:
                yield

    else:
        raise InvalidArgumentType(
            "create_app needs a bulkpipe Pipeline or JobStore, not "
            f"{type(pipeline_or_store).__name__}; pass the Pipeline to serve, or a store "
            "(e.g. MemoryStore()) to serve with a pipeline of its own"
        )
    app = FastAPI(
        title=title,
        version=__version__,
        description="Submit, watch, cancel and retry bulkpipe jobs, and read their outcomes.",
        lifespan=lifespan,
        openapi_url=openapi_url,
        docs_url=docs_url,
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId: "get_job"...
    )
    routes = _Routes(app, pipeline, auth, max_items)
    problems.install(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.bulkpipe_end_streams = routes.end_streams.set
    return app


class _Routes:
    """The routes, over one pipeline, with one auth and one item limit."""

    def __init__(
        self, app: FastAPI, pipeline: Pipeline, auth: AuthCallable | None, max_items: int
    ) -> None:
        self.pipeline = pipeline
        self.max_items = max_items
        self.guarded = auth is not None
        #: Set to end every open event stream (``serve`` does, when it is told to stop).
        self.end_streams = anyio.Event()
        tags: list[str | Enum] = ["jobs"]
        who = Annotated[Principal, Depends(principal_dependency(auth))]
        guarded = auth is not None

        @app.post(
            "/jobs",
            tags=tags,
            status_code=201,
            response_model=Job,
            name="submit_job",
            summary="Submit a job",
            description=(
                "Create a job over `items` (at most "
                f"{max_items} of them) or a registered `source`. Returns once every item is "
                "stored. Items that are not valid (no id, a repeated id) are refused one by one "
                "and listed in the job's errors; the rest runs. With an `Idempotency-Key` "
                "header (up to 200 characters) a repeat by the same owner answers 200 with "
                "the job the first submit created, and stores nothing."
            ),
            responses={
                201: {"headers": {"Location": _LOCATION}},
                200: {
                    "description": "An idempotent repeat: the job that an earlier submit "
                    "with this Idempotency-Key (and owner) created; nothing was stored.",
                    "headers": {"Location": _LOCATION},
                },
                **_responses(400, 403, 413, auth=guarded),
            },
        )
        async def submit_job(
            body: SubmitJob,
            request: Request,
            response: Response,
            principal: who,
            idempotency_key: Annotated[
                str | None,
                Header(
                    alias="Idempotency-Key",
                    description="Submit at most once per key and owner (1 to 200 characters).",
                ),
            ] = None,
        ) -> Job:
            job, created = await self.submit(body, principal, idempotency_key)
            if not created:
                response.status_code = 200
            response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
            return job

        @app.get(
            "/jobs",
            tags=tags,
            response_model=JobList,
            name="list_jobs",
            summary="List jobs, newest first",
            responses=_responses(403, auth=guarded),
        )
        async def list_jobs(
            principal: who,
            status: Annotated[JobStatus | None, Query(description="Only jobs with it.")] = None,
            owner: Annotated[str | None, Query(max_length=200, description="Only theirs.")] = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
            offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
        ) -> JobList:
            if principal.owner is not None:
                if owner is not None and owner != principal.owner:
                    raise HTTPException(403, f"you may only list the jobs of {principal.owner!r}")
                owner = principal.owner
            jobs = await pipeline.list_jobs(status=status, owner=owner, limit=limit, offset=offset)
            return JobList(jobs=jobs, next_offset=offset + limit if len(jobs) == limit else None)

        @app.get(
            "/jobs/{job_id}",
            tags=tags,
            response_model=Job,
            name="get_job",
            summary="Get a job",
            responses=_responses(404, auth=guarded),
        )
        async def get_job(job_id: JobId, principal: who) -> Job:
            return await self.visible(job_id, principal)

        @app.delete(
            "/jobs/{job_id}",
            tags=tags,
            response_model=Job,
            name="cancel_job",
            summary="Cancel a job",
            description="No item of the job starts after this returns; outcomes recorded so "
            "far are kept. 409 when the job has already ended.",
            responses=_responses(404, 409, auth=guarded),
        )
        async def cancel_job(job_id: JobId, principal: who) -> Job:
            await self.visible(job_id, principal)
            with anyio.CancelScope(shield=True):
                job = await pipeline.cancel(job_id)
            return job

        @app.post(
            "/jobs/{job_id}/retry",
            tags=tags,
            status_code=201,
            response_model=Job,
            name="retry_job",
            summary="Retry a job's failed items",
            description="A new job (its `retry_of` set) over exactly the items that failed "
            "(with `include_unfinished`, also those that never got an outcome). 409 when there "
            "are none or the job is still running.",
            responses={
                201: {"headers": {"Location": _LOCATION}},
                **_responses(400, 404, 409, auth=guarded),
            },
        )
        async def retry_job(
            job_id: JobId,
            request: Request,
            response: Response,
            principal: who,
            allow_unserved: Annotated[
                bool, Query(description="Retry although nothing serves the processor yet.")
            ] = False,
            body: RetryJob | None = None,
        ) -> Job:
            await self.visible(job_id, principal)
            unfinished = body is not None and body.include_unfinished
            with anyio.CancelScope(shield=True), self.unserved():
                job = await pipeline.retry_failed(
                    job_id, include_unfinished=unfinished, allow_unserved=allow_unserved
                )
            response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
            return job

        @app.post(
            "/jobs/{job_id}/delete",
            tags=tags,
            status_code=204,
            name="delete_job",
            summary="Delete an ended job",
            description="Deletes the job with its items and outcomes. 409 while the job is "
            "pending or processing: cancel it first (`DELETE /jobs/{id}` cancels).",
            responses={204: {"description": "Deleted."}, **_responses(404, 409, auth=guarded)},
        )
        async def delete_job(job_id: JobId, principal: who) -> Response:
            await self.visible(job_id, principal)
            with anyio.CancelScope(shield=True):
                await pipeline.delete(job_id)
            return Response(status_code=204)

        @app.get(
            "/jobs/{job_id}/outcomes",
            tags=tags,
            response_model=OutcomePage,
            name="job_outcomes",
            summary="Read a job's item outcomes",
            description=(
                "A page of final outcomes in recording order, from `cursor` on: at most "
                "`limit` outcomes and `max_bytes` bytes of item ids, results and errors (a "
                "single larger outcome comes alone in its page). With "
                "`Accept: application/x-ndjson`, every outcome recorded so far (from `cursor` "
                "on) is streamed instead, one JSON object per line, read from the store in "
                "pages of the same bounds."
            ),
            responses={
                200: {
                    "content": {
                        "application/x-ndjson": {
                            "schema": {"type": "string", "description": "ItemOutcome lines."}
                        }
                    }
                },
                **_responses(404, auth=guarded),
            },
        )
        async def job_outcomes(
            job_id: JobId,
            request: Request,
            principal: who,
            status: Annotated[ItemStatus | None, Query(description="Only these.")] = None,
            cursor: Annotated[
                str | None,
                Query(pattern=r"^[0-9]{1,18}$", description="From a page's `next_cursor`."),
            ] = None,
            limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
            max_bytes: Annotated[
                int,
                Query(
                    ge=1,
                    le=OUTCOME_PAGE_BYTES,
                    description="Most bytes of item ids, results and errors in one page.",
                ),
            ] = OUTCOME_PAGE_BYTES,
        ) -> OutcomePage | Response:
            await self.visible(job_id, principal)
            start = int(cursor) if cursor is not None else None
            accept = request.headers.get("accept", "")
            if any(kind in accept for kind in NDJSON_TYPES):
                lines = outcome_lines(
                    pipeline,
                    job_id,
                    status=status,
                    cursor=start,
                    page_size=limit,
                    page_bytes=max_bytes,
                )
                return StreamingResponse(lines, media_type=NDJSON_TYPES[0])
            page = await pipeline.outcome_page(
                job_id, status=status, cursor=start, limit=limit, max_bytes=max_bytes
            )
            body = OutcomePage(
                outcomes=page.rows,
                next_cursor=None if page.cursor is None else str(page.cursor),
            )
            # Serialised once, straight to bytes: FastAPI's response_model path would validate,
            # dump and encode copies of every (possibly large) result.
            del page
            return Response(_to_json(body), media_type="application/json")

        @app.get(
            "/jobs/{job_id}/events",
            tags=tags,
            name="job_events",
            summary="Follow a job's progress (server-sent events)",
            description=(
                "A `progress` event with the job snapshot at once and at least every "
                "`interval` seconds (default: the job's `progress_interval`), then an `end` "
                "event with the terminal snapshot, and the stream ends. Each event's data is "
                "the Job as JSON. Close your EventSource on `end`, or it reconnects."
            ),
            response_class=EventStream,
            status_code=200,
            responses={
                200: {
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    "description": "The event stream.",
                },
                **_responses(404, auth=guarded, streaming=True),
            },
        )
        async def job_events_route(
            job_id: JobId,
            principal: who,
            interval: Annotated[
                float | None, Query(ge=0.05, le=3600, description="Seconds between snapshots.")
            ] = None,
        ) -> EventStream:
            await self.visible(job_id, principal)
            return EventStream(job_events(pipeline, job_id, interval), self.end_streams)

        @app.get(
            "/workers",
            tags=["workers"],
            response_model=list[WorkerInfo],
            name="list_workers",
            summary="List the live workers",
            description="Every worker serving the store (in this server or elsewhere), oldest "
            "first, with the processors it serves and its items in flight. With auth, only a "
            "principal without an owner (an operator) may list them.",
            responses=_responses(403, auth=guarded),
        )
        async def list_workers(principal: who) -> list[WorkerInfo]:
            if principal.owner is not None:
                raise HTTPException(
                    403, "only an operator (a principal without an owner) may list the workers"
                )
            return await pipeline.workers()

    @contextlib.contextmanager
    def unserved(self) -> Iterator[None]:
        """With auth, an unknown processor's 400 names only that processor: the processors
        served are not every caller's business."""
        try:
            yield
        except UnknownProcessor as exc:
            if not self.guarded or exc.known is None:
                raise
            raise UnknownProcessor(exc.name) from None

    async def visible(self, job_id: str, principal: Principal) -> Job:
        """The job, if it exists and the principal may see it; else 404 (never 403, so that
        a job id does not reveal that another tenant's job exists)."""
        job = await self.pipeline.get(job_id)
        if not principal.may_access(job):
            raise JobNotFound(job_id)
        return job

    async def submit(
        self, body: SubmitJob, principal: Principal, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Check what the schema cannot, then submit (shielded: a job is never left half-made
        because the client went away); the job, and False if it is an idempotent repeat's."""
        try:
            check_idempotency_key(idempotency_key)
        except InvalidArgument as exc:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("header", "Idempotency-Key"),
                        "msg": str(exc),
                        "input": idempotency_key,
                    }
                ]
            ) from exc
        if body.items is not None and len(body.items) > self.max_items:
            raise HTTPException(
                413,
                f"{len(body.items)} items is more than this server accepts in one request "
                f"({self.max_items}); split them over several jobs, or use a source",
            )
        if (body.items is None) == (body.source is None):
            _invalid("items", "give either items or source, not both and not neither")
        if body.params is not None and body.source is None:
            _invalid("params", "params are for a source; give source with them")
        owner = body.owner
        if principal.owner is not None:
            if owner is not None and owner != principal.owner:
                raise HTTPException(403, f"you may only submit jobs for {principal.owner!r}")
            owner = principal.owner
        options: Mapping[str, Any] | None = (
            body.options.model_dump(exclude_unset=True) if body.options is not None else None
        )
        try:
            with anyio.CancelScope(shield=True), self.unserved():
                job, created = await self.pipeline.submit_or_find(
                    body.processor,
                    body.items,
                    source=body.source,
                    params=body.params,
                    options=options,
                    priority=body.priority,
                    owner=owner,
                    idempotency_key=idempotency_key,
                    allow_unserved=body.allow_unserved,
                )
        except ValidationError as exc:
            raise RequestValidationError(
                [{**err, "loc": ("body", "options", *err["loc"])} for err in exc.errors()]
            ) from exc
        except ItemSourceError as exc:
            # The job exists and has failed; its errors say why.
            job, created = await self.pipeline.get(exc.job_id), True
        return job, created


def _invalid(field: str, message: str) -> NoReturn:
    raise RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": None}]
    )
