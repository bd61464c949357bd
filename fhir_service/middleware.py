"""Pure-ASGI middleware: CORS on every response (errors included), a last-resort 500
OperationOutcome with a correlation id and no trace, and a PHI-free access log.

Starlette answers unhandled errors from ``ServerErrorMiddleware``, outside any user middleware,
so its 500s would carry no CORS header
(https://cds-hooks.hl7.org/2.0/#cross-origin-resource-sharing): ``CatchAllMiddleware`` sits
inside ``CorsMiddleware`` and turns every unhandled exception into our own 500.
"""

from __future__ import annotations

import logging
import time
import uuid

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_service.errors import Issue, operation_outcome

log = logging.getLogger("fhir_service.access")
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "authorization, content-type, accept, prefer"
EXPOSE_HEADERS = "Location, Content-Location, X-Correlation-Id"


class _HttpMiddleware:
    """Passes non-HTTP traffic (lifespan) through; subclasses handle HTTP requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class _StatusRecorder:
    """Wraps ``send`` and remembers the response status once the response has started."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0

    @property
    def started(self) -> bool:
        return self.status != 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self._send(message)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class CorsMiddleware(_HttpMiddleware):
    """``Access-Control-Allow-Origin`` on every response; preflights answered without auth."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin")
        allow_origin = origin or "*"
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            headers = [
                (b"access-control-allow-origin", allow_origin.encode("latin-1")),
                (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                (b"access-control-max-age", b"600"),
                (b"vary", b"Origin"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers.append((b"access-control-allow-origin", allow_origin.encode("latin-1")))
                headers.append((b"access-control-expose-headers", EXPOSE_HEADERS.encode()))
                if origin:
                    headers.append((b"vary", b"Origin"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cors)


class CatchAllMiddleware(_HttpMiddleware):
    """Unhandled error → 500 OperationOutcome naming a correlation id; logs the type only."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        recorder = _StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        except Exception as exc:
            correlation = str(uuid.uuid4())
            log.error(
                "unhandled error",
                extra={"correlationId": correlation, "error": type(exc).__name__},
            )
            if recorder.started:
                raise
            body = orjson.dumps(
                operation_outcome(
                    [
                        Issue(
                            "error",
                            "exception",
                            f"Internal server error (correlation id {correlation})",
                        )
                    ]
                )
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/fhir+json; charset=utf-8"),
                        (b"x-correlation-id", correlation.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


class AccessLogMiddleware(_HttpMiddleware):
    """One log line per request: method, route template, status, milliseconds, and the path
    (never the query string) when the request was served: a path the service refused is
    client input and may name a patient."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        recorder = _StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            served = 200 <= recorder.status < 400
            route = getattr(scope.get("route"), "path", None)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route if isinstance(route, str) else "(unmatched)",
                    "path": scope["path"] if served else None,
                    "status": recorder.status,
                    "ms": round((time.perf_counter() - start) * 1000, 2),
                },
            )
