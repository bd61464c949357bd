"""OpenTelemetry traces: one span per hook call, child spans for prefetch fetches and for each
rule evaluated (rule ids as attributes), no patient data; off unless ``OTEL_*`` says so."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fhir_service.observability import tracing
from tests.conftest import make_app
from tests.observability.helpers import PV, pv_request

ACCESS_TOKEN = "at-Zq81trace-secret-token"
FAMILY, GIVEN, BIRTH_DATE = "Rivera", "Ana", "1984-03-12"  # the scenario's patient


def ehr(request: httpx.Request) -> httpx.Response:
    """The EHR's FHIR server: the conditions search returns the scenario's conditions."""
    assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request.url.path == "/fhir/Condition"
    body = pv_request()["prefetch"]["conditions"]
    return httpx.Response(200, json=body, headers={"content-type": "application/fhir+json"})


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "tracer_provider_from_env", lambda: provider)
    return memory


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> ReadableSpan:
    assert span.parent is not None, span.name
    (parent,) = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent


def test_hook_call_spans(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    app = make_app(tmp_path, transport=httpx.MockTransport(ehr))
    body = pv_request()
    del body["prefetch"]["conditions"]  # fetched from the EHR with the access token
    body["fhirServer"] = "http://ehr.test/fhir"
    body["fhirAuthorization"] = {"access_token": ACCESS_TOKEN, "token_type": "Bearer"}
    with TestClient(app) as client:
        response = client.post(PV, json=body)
        assert response.status_code == 200
        cards = response.json()["cards"]
        service = app.state.runtime.services["muscle-spasm-patient-view"]
    spans = exporter.get_finished_spans()

    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.name == "POST /cds-services/{service_id}"
    (hook,) = by_name(spans, "cds.hook")
    assert parent_of(hook, spans) is server
    assert hook.attributes is not None
    assert hook.attributes["cds.service"] == "muscle-spasm-patient-view"
    assert hook.attributes["cds.hook"] == "patient-view"
    assert hook.attributes["cds.cards"] == len(cards) > 0

    (fetch,) = by_name(spans, "cds.prefetch.fetch")
    assert parent_of(fetch, spans) is hook
    assert dict(fetch.attributes or {}) == {
        "fhir.resource_type": "Condition",
        "cds.fetch.outcome": "ok",
    }
    (outbound,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert parent_of(outbound, spans) is fetch
    urls = [v for k, v in (outbound.attributes or {}).items() if k in ("http.url", "url.full")]
    assert urls == ["http://ehr.test"]  # the origin only: a read's path names the patient

    (evaluate,) = by_name(spans, "cds.evaluate")
    assert parent_of(evaluate, spans) is hook
    rules = by_name(spans, "cds.rule")
    assert all(parent_of(r, spans) is evaluate for r in rules)
    evaluated = [(r.attributes or {})["cds.rule.id"] for r in rules]
    assert evaluated == [rule.id for rule in service.rules]
    assert sum(int((r.attributes or {})["cds.rule.cards"]) for r in rules) == len(cards)

    text = "".join(s.to_json() for s in spans)
    for secret in (ACCESS_TOKEN, FAMILY, GIVEN, BIRTH_DATE, "patient=", "Patient/p1"):
        assert secret not in text, secret


def test_server_span_keeps_no_query_string(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    with TestClient(make_app(tmp_path)) as client:
        client.get("/fhir/PlanDefinition?name=Zyxwvutsonian&identifier=MRN-1234")
    text = "".join(s.to_json() for s in exporter.get_finished_spans())
    assert exporter.get_finished_spans()
    assert "Zyxwvutsonian" not in text and "MRN-1234" not in text


def test_off_without_otel_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.tracer_provider_from_env() is None
    app = make_app(tmp_path)
    assert app.state.tracer_provider is None
    kinds = {m.cls.__name__ for m in app.user_middleware}  # type: ignore[attr-defined]
    assert "TracerMiddleware" not in kinds
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    with tracing.traced_by(None):  # the engine's spans are no-op contexts
        with tracing.span("cds.rule", {"cds.rule.id": "x"}) as span:
            assert span is None


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_the_switch(env: dict[str, str], exporters: list[str]) -> None:
    assert tracing.exporters_from_env(env) == exporters


class _Collector(http.server.BaseHTTPRequestHandler):
    posts: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).posts.append(self.path)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        del args


@pytest.fixture
def collector() -> Iterator[tuple[str, list[str]]]:
    posts: list[str] = []
    handler = type("Collector", (_Collector,), {"posts": posts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posts
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("switched_on", [False, True])
def test_otlp_export_only_when_switched_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector: tuple[str, list[str]],
    switched_on: bool,
) -> None:
    """A loopback OTLP/HTTP collector receives the spans with ``OTEL_EXPORTER_OTLP_ENDPOINT``
    set, and nothing without it."""
    endpoint, posts = collector
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    if switched_on:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    else:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    with TestClient(make_app(tmp_path)) as client:
        assert client.post(PV, json=pv_request()).status_code == 200
    # leaving the app's lifespan flushed the batch processor
    assert posts == (["/v1/traces"] if switched_on else [])
