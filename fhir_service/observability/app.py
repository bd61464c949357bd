"""Telemetry of one app: Prometheus metrics and OpenTelemetry traces, wired in.

:func:`install` is called once by ``main.create_app``: it adds ``GET /metrics`` (no auth),
the request-metrics middleware, the prefetch fetch observer and, when the ``OTEL_*``
variables switch it on, tracing (:mod:`fhir_service.observability.tracing`).
docs/observability.md describes the series, the spans and the switches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from fhir_service.clients.fhir_client import FhirFetchError
from fhir_service.observability import tracing
from fhir_service.observability.metrics import (
    CONTENT_TYPE,
    Metrics,
    MetricsMiddleware,
    resource_type_label,
)

if TYPE_CHECKING:
    from fhir_service.cds.prefetch import Fetcher
    from fhir_service.runtime import Runtime
    from fhir_service.store.records import RecordedFeedback


def fetch_outcome(reason: str) -> str:
    """A closed set of outcomes for a failed fetch (``FhirFetchError.reason`` is log-safe but
    varied)."""
    if "timeout" in reason:
        return "timeout"
    if reason.startswith(("upstream status", "upstream redirect")):
        return "http_error"
    if reason.startswith("refused by allowlist"):
        return "refused"
    if reason.startswith("upstream transport"):
        return "transport_error"
    return "invalid_response"


class ObservedFetcher:
    """Counts, times and traces every prefetch fetch of the wrapped fetcher."""

    def __init__(self, inner: Fetcher, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def fetch(self, base: str, relative: str, *, token: str | None) -> dict[str, Any] | None:
        start = time.perf_counter()
        outcome = "invalid_response"
        resource_type = resource_type_label(relative)
        with tracing.span("cds.prefetch.fetch", {"fhir.resource_type": resource_type}):
            try:
                result = await self.inner.fetch(base, relative, token=token)
                outcome = "ok" if result is not None else "not_found"
                return result
            except FhirFetchError as exc:
                outcome = fetch_outcome(exc.reason)
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                tracing.set_attributes({"cds.fetch.outcome": outcome})
                self.metrics.observe_fetch(relative, outcome, time.perf_counter() - start)


def _concepts(concepts: Any) -> Iterator[str]:
    for concept in concepts if isinstance(concepts, list) else ():
        if isinstance(concept, dict):
            if isinstance(concept.get("code"), str):
                yield concept["code"]
            yield from _concepts(concept.get("concept"))


def defined_codes(runtime: Runtime) -> set[tuple[str, str]]:
    """``(system, code)`` of every concept of the knowledge base's own CodeSystems."""
    return {
        (artifact.url, code)
        for artifact in runtime.knowledge.of_type("CodeSystem")
        if artifact.url
        for code in _concepts(artifact.resource.get("concept"))
    }


def install(app: FastAPI, runtime: Runtime) -> None:
    """Metrics (always) and tracing (when the ``OTEL_*`` variables ask for it) for ``app``."""
    metrics = Metrics(runtime.services, runtime.knowledge.version, defined_codes(runtime))
    app.state.metrics = metrics
    inner = runtime.fetcher.inner if isinstance(runtime.fetcher, ObservedFetcher) else None
    runtime.fetcher = ObservedFetcher(inner or runtime.fetcher, metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    async def metrics_endpoint() -> Response:
        """Prometheus text exposition (contract "Metrics"); no auth, no patient data."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        tags=["Operations"],
        name="metrics",
        response_class=PlainTextResponse,
    )
    provider = tracing.tracer_provider_from_env()
    app.state.tracer_provider = provider
    if provider is not None:
        tracing.instrument(app, runtime.http, provider)


def shutdown(app: FastAPI) -> None:
    """At the end of the app's lifespan: flush spans, drop this worker's live gauges."""
    metrics: Metrics | None = getattr(app.state, "metrics", None)
    if metrics is not None:
        metrics.worker_exited()
    provider = getattr(app.state, "tracer_provider", None)
    if provider is not None:
        provider.shutdown()


def _metrics(request: Request) -> Metrics | None:
    metrics = getattr(request.app.state, "metrics", None)
    return metrics if isinstance(metrics, Metrics) else None


def record_cards(request: Request, service_id: str, cards: Iterable[Mapping[str, Any]]) -> None:
    """Count a hook call's cards per rule and indicator; note their number on the span."""
    cards = list(cards)
    tracing.set_attributes({"cds.cards": len(cards)})
    metrics = _metrics(request)
    if metrics is not None:
        metrics.observe_cards(service_id, cards)


def record_feedback(
    request: Request, service_id: str, recorded: Iterable[RecordedFeedback]
) -> None:
    """Count newly stored feedback items per rule, outcome and override reason."""
    metrics = _metrics(request)
    if metrics is not None:
        metrics.observe_feedback(service_id, recorded)
