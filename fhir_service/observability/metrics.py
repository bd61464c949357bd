"""Prometheus metrics: ``GET /metrics`` in the text exposition format (contract "Metrics").

What is counted (docs/observability.md lists every series):

* HTTP requests and their duration per **route template** (``/cds-services/{service_id}``,
  never the raw path), method and status;
* CDS Hooks calls and their duration per **service** (known service ids only);
* cards issued per service, **rule** (``card.source.topic.code``) and indicator;
* prefetch fetches from the client's ``fhirServer`` per resource type and outcome, with their
  duration;
* feedback outcomes and override reasons per service and rule;
* the knowledge version loaded, and the requests each worker process served.

Label hygiene (docs/observability.md): every label value comes from a
closed set — route templates of the app, service and rule ids of the knowledge base, status
codes, indicators, feedback outcomes, override reason codes defined by the knowledge base's own
CodeSystems (any other reason is ``other``) — or is a FHIR resource type matched against a
strict pattern. No path, query string, token, patient id or free text ever becomes a label.

Several workers (``python -m fhir_service`` with ``FHIR_SERVICE_WORKERS`` > 1) use
prometheus-client's multiprocess mode: the serving entry point sets
``PROMETHEUS_MULTIPROC_DIR`` (emptied at start) before any worker imports prometheus-client,
each worker writes its samples to memory-mapped files there, and whichever worker answers
``/metrics`` sums them all (prometheus-client "Multiprocess Mode").
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fhir_service.store.records import RecordedFeedback

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The CDS Hooks service-call route (contract "HTTP surface").
HOOK_ROUTE = "/cds-services/{service_id}"
UNMATCHED = "(unmatched)"
OTHER = "other"
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FEEDBACK_OUTCOMES = frozenset({"accepted", "overridden"})
INDICATORS = frozenset({"info", "warning", "critical"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def multiprocess_dir() -> str | None:
    """The multiprocess directory when this process runs in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def resource_type_label(relative: str) -> str:
    """The resource type a prefetch query reads (``Condition?patient=…`` → ``Condition``)."""
    head = relative.split("?", 1)[0].strip("/").split("/", 1)[0]
    return head if _RESOURCE_TYPE.fullmatch(head) else OTHER


def route_label(scope: Scope) -> str:
    """The route template that served the request; never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if not hasattr(route, "endpoint") and hasattr(route, "routes"):  # a Mount
        return path.rstrip("/") + "/{path}"
    return path


class Metrics:
    """The service's metric families, in their own registry (one per app).

    Args:
        services: The CDS service ids; any other id is labelled ``other``.
        knowledge_version: The knowledge version loaded (``/readyz`` reports the same).
        reason_codes: ``(system, code)`` pairs an override reason may be labelled with.
    """

    def __init__(
        self,
        services: Collection[str],
        knowledge_version: str,
        reason_codes: Collection[tuple[str, str]] = (),
    ) -> None:
        self.services = frozenset(services)
        self.reason_codes = frozenset(reason_codes)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fhir_service_http_requests",
            "HTTP requests by route template, method and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "fhir_service_http_request_duration_seconds",
            "HTTP request duration by route template and method.",
            ["method", "route"],
            registry=r,
        )
        self.hook_calls = Counter(
            "fhir_service_cds_hook_calls",
            "CDS Hooks service calls by service and status.",
            ["service", "status"],
            registry=r,
        )
        self.hook_seconds = Histogram(
            "fhir_service_cds_hook_call_duration_seconds",
            "CDS Hooks service call duration by service.",
            ["service"],
            registry=r,
        )
        self.cards = Counter(
            "fhir_service_cds_cards",
            "Cards issued by service, rule and indicator.",
            ["service", "rule", "indicator"],
            registry=r,
        )
        self.fetches = Counter(
            "fhir_service_prefetch_fetches",
            "Prefetch fetches from the client's fhirServer by resource type and outcome "
            "(ok, not_found, timeout, http_error, refused, transport_error, invalid_response, "
            "cancelled).",
            ["resource_type", "outcome"],
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "fhir_service_prefetch_fetch_duration_seconds",
            "Prefetch fetch duration (paging included) by resource type.",
            ["resource_type"],
            registry=r,
        )
        self.feedback = Counter(
            "fhir_service_cds_feedback",
            "Feedback items newly stored, by service, rule (empty: unknown card) and outcome.",
            ["service", "rule", "outcome"],
            registry=r,
        )
        self.override_reasons = Counter(
            "fhir_service_cds_override_reasons",
            "Overridden feedback items by service, rule and coded reason "
            "(none: no coded reason; other: a code the knowledge base does not define).",
            ["service", "rule", "reason"],
            registry=r,
        )
        self.knowledge = Gauge(
            "fhir_service_knowledge_info",
            "The knowledge version loaded (value 1).",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.worker_requests = Gauge(
            "fhir_service_worker_requests",
            "Requests served by each live worker process (a pid label per worker when several "
            "workers serve).",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.knowledge.labels(version=knowledge_version).set(1)

    # -- recording -------------------------------------------------------------------------

    def service_label(self, service_id: Any) -> str:
        return service_id if service_id in self.services else OTHER

    def observe_request(
        self, method: str, route: str, status: int, seconds: float, service_id: Any = None
    ) -> None:
        method = method if method in METHODS else OTHER
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)
        self.worker_requests.inc()
        if route == HOOK_ROUTE and method == "POST":
            service = self.service_label(service_id)
            self.hook_calls.labels(service, str(status)).inc()
            self.hook_seconds.labels(service).observe(seconds)

    def observe_cards(self, service_id: str, cards: Iterable[Mapping[str, Any]]) -> None:
        """Count issued cards per rule (``source.topic.code``) and indicator."""
        service = self.service_label(service_id)
        for card in cards:
            source = card.get("source")
            topic = source.get("topic") if isinstance(source, Mapping) else None
            rule = topic.get("code") if isinstance(topic, Mapping) else None
            indicator = card.get("indicator")
            self.cards.labels(
                service,
                rule if isinstance(rule, str) and _RULE_ID.fullmatch(rule) else OTHER,
                indicator if indicator in INDICATORS else OTHER,
            ).inc()

    def observe_fetch(self, relative: str, outcome: str, seconds: float) -> None:
        resource_type = resource_type_label(relative)
        self.fetches.labels(resource_type, outcome).inc()
        self.fetch_seconds.labels(resource_type).observe(seconds)

    def observe_feedback(self, service_id: str, recorded: Iterable[RecordedFeedback]) -> None:
        """Count newly stored feedback items per rule, outcome and override reason."""
        service = self.service_label(service_id)
        for item in recorded:
            rule_id = item.rule_id
            rule = rule_id if rule_id and _RULE_ID.fullmatch(rule_id) else ""
            outcome = item.outcome if item.outcome in FEEDBACK_OUTCOMES else OTHER
            self.feedback.labels(service, rule, outcome).inc()
            if outcome == "overridden":
                reason = self._reason_label(item.reason_system, item.reason_code)
                self.override_reasons.labels(service, rule, reason).inc()

    def _reason_label(self, system: str | None, code: str | None) -> str:
        if not code:
            return "none"
        return code if (system, code) in self.reason_codes else OTHER

    # -- exposition ------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format: this registry, or every worker's samples in multiprocess mode."""
        if multiprocess_dir() is None:
            return bytes(generate_latest(self.registry))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))

    def worker_exited(self) -> None:
        """Drop this process's live-gauge files (graceful worker shutdown)."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


CONTENT_TYPE = CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Times every HTTP request and counts it under its route template.

    A request is counted as its last body chunk goes out, before the client can see the whole
    answer (not after background tasks such as recording the issued cards): a scrape that
    follows an answer always includes it. A request that fails before answering is counted
    when it ends.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        counted = False

        def count() -> None:
            nonlocal counted
            counted = True
            params = scope.get("path_params") or {}
            self.metrics.observe_request(
                scope["method"],
                route_label(scope),
                status,
                time.perf_counter() - start,
                params.get("service_id"),
            )

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                if not counted:
                    count()
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if not counted:
                count()
