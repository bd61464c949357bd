"""OpenTelemetry traces: off by default, switched on by the standard ``OTEL_*`` variables.

The switch (docs/observability.md): tracing is on when ``OTEL_SDK_DISABLED`` is not ``true``
and either ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none`` (``otlp``, ``console``,
comma-separated) or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; the exporter is then ``otlp``). OTLP goes over
HTTP/protobuf; the SDK reads every other standard variable itself (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_BSP_*``). With tracing off nothing is instrumented: :func:`span` is a ``nullcontext``.

Spans of one hook call (no patient data in any attribute or name):

* ``POST /cds-services/{service_id}`` — the server span (FastAPI instrumentation; the query
  string is removed from its URL attributes);
* ``cds.hook`` — service id, hook, ``hookInstance`` and the number of cards;
* ``cds.prefetch.fetch`` — one per fetch from ``fhirServer``: resource type and outcome; the
  httpx client span under it carries the server's origin only (the path of a read names the
  patient);
* ``cds.evaluate`` with one ``cds.rule`` per rule: the rule (PlanDefinition) id and the number
  of cards it made.

The tracer of the current request travels in a context variable, set by a small middleware of
the app that has tracing on, so the engine needs no tracing argument and worker threads
(``anyio.to_thread``, which copies the context) see it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    import httpx
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)
_TRACER: ContextVar[Tracer | None] = ContextVar("fhir_service_tracer", default=None)
INSTRUMENTATION_NAME = "fhir_service"
DEFAULT_SERVICE_NAME = "fhir-service"
_URL_KEYS = ("http.url", "url.full")
_TARGET_KEYS = ("http.target",)


def exporters_from_env(env: Mapping[str, str]) -> list[str]:
    """The span exporters the ``OTEL_*`` variables ask for; empty: tracing off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    named = [e for e in named if e]
    if named:
        return [e for e in named if e != "none"]
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def tracer_provider_from_env(env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider exporting as the ``OTEL_*`` variables say; None when tracing is off."""
    env = os.environ if env is None else env
    exporters = exporters_from_env(env)
    if not exporters:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create(
        {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    )
    provider = TracerProvider(resource=resource)
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                log.warning("OTLP protocol %r not supported; using http/protobuf", protocol)
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER %r not supported (otlp, console, none)", name)
    log.info("tracing on", extra={"exporters": ",".join(exporters)})
    return provider


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A child span of the current one when this request is traced; else a no-op context."""
    tracer = _TRACER.get()
    if tracer is None:
        return contextlib.nullcontext()
    return tracer.start_as_current_span(name, attributes=dict(attributes or {}))


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """Add attributes to the current span (nothing when the request is not traced)."""
    if _TRACER.get() is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(dict(attributes))


@contextlib.contextmanager
def traced_by(tracer: Tracer | None) -> Iterator[None]:
    """Run a block with ``tracer`` as the current request's tracer (tests, tools)."""
    token = _TRACER.set(tracer)
    try:
        yield
    finally:
        _TRACER.reset(token)


class TracerMiddleware:
    """Makes the app's tracer the current one for each request it serves."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with traced_by(self.tracer):
            await self.app(scope, receive, send)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _attributes(span_: Span) -> Mapping[str, Any]:
    attributes = getattr(span_, "attributes", None)
    return attributes if isinstance(attributes, Mapping) else {}


def redact_server_span(span_: Span, scope: Scope) -> None:
    """The server span keeps the path, never the query string (FHIR searches name patients)."""
    present = _attributes(span_)
    path = str(scope.get("path", ""))
    for key in _TARGET_KEYS:
        if key in present:
            span_.set_attribute(key, path)
    for key in _URL_KEYS:
        if key in present:
            span_.set_attribute(key, str(present[key]).split("?", 1)[0])
    if "url.query" in present:
        span_.set_attribute("url.query", "")


async def redact_client_span(span_: Span, request: Any) -> None:
    """An outbound call's span names the server's origin only (a read's path names the
    patient, a search's query too)."""
    url = str(getattr(request, "url", "") or "")
    present = _attributes(span_)
    for key in _URL_KEYS:
        if key in present:
            span_.set_attribute(key, _origin(url))


def instrument(app: FastAPI, http: httpx.AsyncClient, provider: TracerProvider) -> Tracer:
    """Trace the app's requests and its outbound HTTP client with ``provider``."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        server_request_hook=redact_server_span,
        exclude_spans=["receive", "send"],
    )
    HTTPXClientInstrumentor.instrument_client(
        http, tracer_provider=provider, request_hook=redact_client_span
    )
    tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    app.add_middleware(TracerMiddleware, tracer=tracer)
    return tracer
