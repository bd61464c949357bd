"""Request paths with empty segments (contract, Additions of 2026-12, "Paths").

A CDS client given a discovery URL that ends with ``/`` builds service URLs by concatenation:
``…/cds-services/`` + ``/muscle-spasm-patient-view`` = ``/cds-services//muscle-spasm-patient-view``.
Such a path is served as the path without the empty segment(s): every run of ``/`` becomes one
``/`` before routing (RFC 3986 gives empty segments no meaning of their own here).

The JWT ``aud`` such a client signs is the URL it called, ``//`` included; the contract asks
``aud`` to be exactly the URL called, so :func:`called_paths` offers both the path as called
and the path as served.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

_SLASHES = re.compile(r"/{2,}")
_RAW_SLASHES = re.compile(rb"/{2,}")
#: Scope key holding the path as the client sent it, when it had empty segments.
CALLED_PATH = "fhir_service.called_path"


def without_empty_segments(path: str) -> str:
    """``/cds-services//x`` → ``/cds-services/x``; ``//cds-services`` → ``/cds-services``."""
    return _SLASHES.sub("/", path)


def called_paths(scope: Scope) -> list[str]:
    """The path as served, then the path as called when it differed."""
    served = str(scope.get("path", ""))
    called = scope.get(CALLED_PATH)
    return [served, called] if isinstance(called, str) and called != served else [served]


class EmptySegmentMiddleware:
    """Rewrites ``path`` and ``raw_path`` without empty segments before anything routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] == "http" and isinstance(path, str) and "//" in path:
            scope = dict(scope)
            scope[CALLED_PATH] = path
            scope["path"] = without_empty_segments(path)
            raw = scope.get("raw_path")
            if isinstance(raw, bytes):
                scope["raw_path"] = _RAW_SLASHES.sub(b"/", raw)
        await self.app(scope, receive, send)
