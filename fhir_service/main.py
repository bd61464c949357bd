"""The ASGI application: ``fhir_service.main:app``, built by ``create_app()``.

``create_app`` loads and validates ``definitions/`` before anything is served: a bad artifact
raises ``KnowledgeError`` and the service refuses to start (README "Adding or changing a rule").
Importing this module builds nothing and writes nothing: ``app`` is a :class:`LazyApp` that calls
``create_app()`` on its first ASGI event (uvicorn's lifespan start-up, or the first request).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fhir_service import __version__
from fhir_service.api import cds_hooks, fhir_rest, operations, sdc, smart_app, terminology
from fhir_service.api.responses import FhirResponse, JsonResponse
from fhir_service.errors import FhirError, Issue, Unauthorized, operation_outcome
from fhir_service.logging_setup import configure_logging
from fhir_service.middleware import AccessLogMiddleware, CatchAllMiddleware, CorsMiddleware
from fhir_service.observability import app as observability
from fhir_service.paths import EmptySegmentMiddleware
from fhir_service.runtime import Runtime, build_runtime
from fhir_service.settings import Settings

log = logging.getLogger(__name__)
STATUS_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
}


def _error_response(
    request: Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    cls = JsonResponse if request.url.path.startswith("/cds-services") else FhirResponse
    return cls(body, status_code=status, headers=headers)


#: Every route may answer these, always with an OperationOutcome body (errors.py).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": f"{text} (OperationOutcome)"}
    for status, text in (
        (400, "Invalid request"),
        (401, "Missing or invalid client JWT"),
        (404, "Unknown resource, service or path"),
        (412, "Prefetch data could not be obtained"),
        (413, "Request too large"),
        (415, "Unsupported media type"),
        (500, "Internal error with a correlation id"),
        (503, "Store unavailable"),
    )
}


def _operation_id(route: APIRoute) -> str:
    """Unique per path *and* method (a GET+POST route would otherwise repeat its id)."""
    methods = "_".join(sorted(m.lower() for m in route.methods or ()))
    return f"{route.name}_{methods}"


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes an OperationOutcome with the right status (errors.py)."""

    async def fhir_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FhirError)
        headers = dict(exc.headers)
        if isinstance(exc, Unauthorized):  # its one log line is security/jwt.py's
            headers["WWW-Authenticate"] = "Bearer"
        return _error_response(request, exc.status_code, exc.outcome(), headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        issues = [
            Issue(
                "error",
                "invalid",
                str(err.get("msg", "invalid input")),
                (".".join(str(p) for p in err.get("loc", ())),),
            )
            for err in exc.errors()[:20]
        ]
        return _error_response(request, 400, operation_outcome(issues))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = STATUS_CODES.get(exc.status_code, "processing")
        body = operation_outcome([Issue("error", code, str(exc.detail))])
        return _error_response(request, exc.status_code, body, dict(exc.headers or {}))

    app.add_exception_handler(FhirError, fhir_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app; raises ``KnowledgeError`` (refusing to start) on a bad knowledge base."""
    settings = settings or (runtime.settings if runtime else Settings())
    configure_logging(settings.log_level)
    runtime = runtime or build_runtime(settings)
    if settings.auth == "off":
        log.warning(
            "FHIR_SERVICE_AUTH=off: CDS Hooks calls are not authenticated (development only)"
        )
    log.info(
        "knowledge loaded",
        extra={
            "artifacts": len(runtime.knowledge.artifacts),
            "knowledge": runtime.knowledge.version,
        },
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        observability.shutdown(_app)
        await runtime.aclose()

    app = FastAPI(
        title="Muscle spasm FHIR guideline service",
        version=__version__,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        responses=ERROR_RESPONSES,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(CorsMiddleware)
    app.add_middleware(AccessLogMiddleware)
    observability.install(app, runtime)
    app.add_middleware(EmptySegmentMiddleware)
    include_routers(app)

    @app.get("/healthz", tags=["Operations"])
    async def healthz() -> JsonResponse:
        return JsonResponse({"status": "ok"})

    @app.get("/readyz", tags=["Operations"])
    async def readyz() -> JsonResponse:
        return JsonResponse(
            {
                "status": "ok",
                "knowledge": runtime.knowledge.version,
                "artifacts": len(runtime.knowledge.artifacts),
                "services": sorted(runtime.services),
            }
        )

    return app


def include_routers(app: FastAPI) -> None:
    """Operation routes go before the generic ``/fhir/{type}/{id}`` read route."""
    app.include_router(cds_hooks.router)
    app.include_router(operations.router)
    app.include_router(terminology.router)
    app.include_router(sdc.router)
    app.include_router(smart_app.router)
    app.include_router(fhir_rest.router)


class LazyApp:
    """An ASGI app that builds the real one with ``factory`` on its first event.

    A failed build during uvicorn's lifespan start-up is reported as ``lifespan.startup.failed``
    (ASGI lifespan spec, https://asgi.readthedocs.io/en/latest/specs/lifespan.html), so a bad
    knowledge base still stops the server before it listens.
    """

    def __init__(self, factory: Callable[[], FastAPI]) -> None:
        self._factory = factory
        self._app: FastAPI | None = None
        self._lock = threading.Lock()

    def get(self) -> FastAPI:
        """The application, built on the first call."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None and scope["type"] == "lifespan":
            try:
                self.get()
            except Exception as exc:
                await receive()  # lifespan.startup
                await send(
                    {"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"}
                )
                raise  # as Starlette's own lifespan does: the server logs it and exits
        await self.get()(scope, receive, send)


app = LazyApp(create_app)
