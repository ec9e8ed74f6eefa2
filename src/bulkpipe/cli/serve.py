"""``bulkpipe serve``: the HTTP job API under uvicorn (needs the ``http`` extra)."""

from __future__ import annotations

import click

from .errors import CliError
from .params import store_option, store_url

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
@click.option("--log-level", type=click.Choice(_LOG_LEVELS), default="info", show_default=True)
@store_option
@click.pass_context
def serve(
    ctx: click.Context, host: str, port: int, workers: int, log_level: str, store: str | None
) -> None:
    """Serve the HTTP job API.

    Serves the store's jobs over HTTP until SIGTERM or Ctrl-C. Needs the http extra: pip install
    'bulkpipe[http]'. The OpenAPI document is at
    /openapi.json and its docs page at /docs.
    """
    url = store_url(ctx, store)
    try:
        from ..http import serve as serve_api
    except ImportError as exc:
        raise CliError(str(exc)) from None
    try:
        serve_api(url, host=host, port=port, workers=workers, log_level=log_level)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise CliError(exc.strerror or str(exc)) from None
