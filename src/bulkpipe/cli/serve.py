"""``bulkpipe serve``: the HTTP job API under uvicorn (needs the ``http`` extra)."""

from __future__ import annotations

import click

from .errors import CliError
from .params import POSITIVE, store_option, store_url

# The defaults of bulkpipe.http.server, repeated so that --help needs no http extra.
_HEADER_TIMEOUT, _BODY_TIMEOUT, _KEEP_ALIVE_TIMEOUT, _MAX_CONNECTIONS = 10.0, 60.0, 5.0, 1000

_LOG_LEVELS = ("debug", "info", "warning", "error")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: any free port; the log says which).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="In-process workers that run jobs with the installed processors (0: this server "
    "only submits and reads; 'bulkpipe worker' processes do the work).",
)
@click.option(
    "--header-timeout",
    type=POSITIVE,
    default=_HEADER_TIMEOUT,
    show_default=True,
    help="Seconds a client has to send a request's headers (of connecting, or of the previous "
    "response); then it is answered 408 and closed.",
)
@click.option(
    "--body-timeout",
    type=POSITIVE,
    default=_BODY_TIMEOUT,
    show_default=True,
    help="Seconds a client has to send a request's whole body once its headers are in; then "
    "the connection is closed.",
)
@click.option(
    "--keep-alive-timeout",
    type=POSITIVE,
    default=_KEEP_ALIVE_TIMEOUT,
    show_default=True,
    help="Seconds an idle kept-alive connection stays open.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=_MAX_CONNECTIONS,
    show_default=True,
    help="Open connections beyond which requests are answered 503.",
)
@click.option("--log-level", type=click.Choice(_LOG_LEVELS), default="info", show_default=True)
@store_option
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    workers: int,
    header_timeout: float,
    body_timeout: float,
    keep_alive_timeout: float,
    max_connections: int,
    log_level: str,
    store: str | None,
) -> None:
    """Serve the HTTP job API.

    Serves the store's jobs over HTTP until SIGTERM or Ctrl-C. Needs the http extra: pip install
    'bulkpipe[http]'. The OpenAPI document is at
    /openapi.json and its docs page at /docs. Slow clients are cut off by the header and
    body timeouts, and --max-connections bounds how many connections are served.
    """
    url = store_url(ctx, store)
    try:
        from ..http import serve as serve_api
    except ImportError as exc:
        raise CliError(str(exc)) from None
    try:
        serve_api(
            url,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            keep_alive_timeout=keep_alive_timeout,
            max_connections=max_connections,
        )
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise CliError(exc.strerror or str(exc)) from None
