"""FastAPI dependency aliases (one place)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, Request

from fhir_service.api.body import read_json
from fhir_service.paths import called_paths
from fhir_service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def arrival() -> float:
    """``time.monotonic()`` when the request's dependencies began (cached per request)."""
    return time.monotonic()


ArrivalDep = Annotated[float, Depends(arrival)]


async def authenticate(request: Request, runtime: RuntimeDep, _arrival: ArrivalDep) -> None:
    """With ``FHIR_SERVICE_AUTH=jwt``: a valid CDS client JWT whose ``aud`` is the URL called
    (CDS Hooks 2.0 https://cds-hooks.hl7.org/2.0/#trusting-cds-clients), as served or as called
    when the client's URL had an empty segment (``paths.py``); 401 otherwise.

    Depends on :func:`arrival` so that a handler's ``ArrivalDep`` is the time before any JWKS
    fetch: that time counts against the call's budget.
    """
    if runtime.verifier is None:
        return
    audience = [runtime.settings.public_base_url + path for path in called_paths(request.scope)]
    await runtime.verifier.verify(request.headers.get("authorization"), audience)


async def json_body(request: Request, runtime: RuntimeDep) -> Any:
    """The request's JSON body, read within the configured limits (None for a GET).

    The one place where body limits are applied (``FHIR_SERVICE_MAX_BODY_BYTES`` → 413,
    ``FHIR_SERVICE_MAX_JSON_DEPTH`` and bad JSON → 400, another media type → 415).
    """
    if request.method in ("GET", "HEAD"):
        return None
    settings = runtime.settings
    return await read_json(
        request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
    )


JsonBodyDep = Annotated[Any, Depends(json_body)]
