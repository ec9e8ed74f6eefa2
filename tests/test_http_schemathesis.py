"""schemathesis against the app's own OpenAPI document, in-process (ASGI): no 5xx, every status,
media type, header and body as documented, and schema-invalid requests refused.

One check is left out: ``positive_data_acceptance`` (a schema-valid request must be accepted).
Some rules cannot be said in a JSON schema (``items`` or ``source`` but not both, the combined
option checks, which sources are registered), so some schema-valid requests are rightly refused.
The examples are few and derandomised, to keep this to seconds; raise ``max_examples`` locally
for a deeper run (150 per operation, on SQLite and PostgreSQL too, found nothing either).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi import Request
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bulkpipe.http import Principal, create_app
from bulkpipe.stores import MemoryStore

EXCLUDED: list[schemathesis.CheckFunction] = [positive_data_acceptance]
FAST = settings(
    max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


def acme_only(request: Request) -> Principal | None:
    if request.headers.get("authorization") == "Bearer acme":
        return Principal(name="alice", owner="acme")
    return None


# A client-only server accepts any processor name, so POST /jobs gets as far as making jobs.
# schemathesis runs each app's lifespan, which runs its pipeline.
open_api = schemathesis.openapi.from_asgi("/openapi.json", create_app(MemoryStore(), workers=0))
guarded_api = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(MemoryStore(), workers=0, auth=acme_only)
)
# The boundary values of the coverage phase are sent once, to the open app, to save time.
guarded_api.config.phases.coverage.enabled = False


@open_api.parametrize()
@FAST
def test_open_api_conforms(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED)


@guarded_api.parametrize()
@FAST
def test_guarded_api_conforms(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(headers={"authorization": "Bearer acme"}, excluded_checks=EXCLUDED)
