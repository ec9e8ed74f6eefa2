"""A cap on request body size, checked before and while the body is read (413 past it)."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem

#: Default largest request body, in bytes.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
#: Default most items in one ``POST /jobs``.
DEFAULT_MAX_ITEMS = 100_000


def too_large(limit: int) -> str:
    """The detail of a 413 for a body over ``limit`` bytes."""
    return (
        f"the request body is larger than this server accepts ({limit} bytes); "
        "send fewer items per job, or use a source"
    )


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused at once, before anything is read;
    a body without one (chunked) is counted as it arrives, and reading stops past the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await problem(400, "the Content-Length header is not a valid length")(
                        scope, receive, send
                    )
                    return
                if declared > self.max_bytes:
                    await problem(413, too_large(self.max_bytes))(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body.
                    raise HTTPException(413, too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)
