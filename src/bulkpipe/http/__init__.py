"""The bulkpipe HTTP job API (the ``http`` extra: ``pip install 'bulkpipe[http]'``).

:func:`create_app` returns an ASGI application a host serves or mounts; :func:`serve` runs it
under uvicorn. See docs/http.md.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401 - imported only to fail early with the extra's name
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"bulkpipe.http needs the 'http' extra ({exc.name} is missing); "
        "install it with: pip install 'bulkpipe[http]'"
    ) from exc

from .app import create_app
from .auth import ANONYMOUS, AuthCallable, Principal
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS
from .server import serve

__all__ = [
    "ANONYMOUS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ITEMS",
    "AuthCallable",
    "Principal",
    "create_app",
    "serve",
]
