"""Upstream fault matrix on real loopback sockets (RSP §6.2 R1-R8, §6.3 H2).

The app is built with ``transport=None`` (the real httpx network path) and an allowlist naming the
chaos server *and* the sink explicitly, so that what keeps the sink at zero connections is the
service's refusal to follow redirects and foreign ``next`` links, not the allowlist. Every fault
must give 412 + an OperationOutcome naming the prefetch key(s), within the prefetch deadline +
1 s, never a 5xx; the bearer token reaches the chaos server (the ``fhirServer`` origin) only.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.faults.apps import build_app
from tests.faults.chaos import MB, ChaosServer, Sink

DEADLINE = 1.0
UPSTREAM_CAP = 1 * MB
TOKEN = "chaos-access-token-5f1c9e0b7a2d4c3e"
PV = "muscle-spasm-patient-view"


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


@pytest.fixture(scope="module")
def chaos(sink: Sink) -> Iterator[ChaosServer]:
    server = ChaosServer()
    server.redirect_to = sink.origin
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(
    chaos: ChaosServer, sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    app = build_app(
        tmp_path_factory.mktemp("faults"),
        transport=None,
        fhir_server_allowlist=(chaos.origin, sink.origin),
        prefetch_deadline_seconds=DEADLINE,
        upstream_max_bytes=UPSTREAM_CAP,
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def services(client: TestClient) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in client.get("/cds-services").json()["services"]}


@pytest.fixture(autouse=True)
def _token_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test: the sink was never contacted; the chaos server only saw our token."""
    yield
    if "chaos" not in request.fixturenames:
        return
    chaos: ChaosServer = request.getfixturevalue("chaos")
    sink: Sink = request.getfixturevalue("sink")
    assert sink.connections == 0, "a request reached the redirect / foreign-next target"
    assert sink.authorizations == []
    for seen in chaos.requests():
        assert seen.authorization in (f"Bearer {TOKEN}", None), seen.authorization


def context_for(service: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": "p1"}
    hook = service["hook"]
    draft = {
        "resourceType": "MedicationRequest",
        "id": "d1",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "21949"}]
        },
    }
    if hook == "encounter-start":
        context["encounterId"] = "e1"
    if hook in ("order-sign", "order-select"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/d1"]
    return context


def hook_body(
    service: dict[str, Any], origin: str, prefetch: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": service["hook"],
        "hookInstance": "0b8a3f6c-58c2-4d0a-9d1c-faults000001",
        "fhirServer": f"{origin}/fhir",
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-service",
        },
        "context": context_for(service),
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def call(client: TestClient, service_id: str, body: dict[str, Any]) -> tuple[Any, float]:
    start = time.monotonic()
    response = client.post(f"/cds-services/{service_id}", json=body)
    return response, time.monotonic() - start


def assert_412(response: Any, elapsed: float, keys: list[str]) -> None:
    assert response.status_code == 412, response.text
    assert elapsed <= DEADLINE + 1.0, f"answered after {elapsed:.2f} s"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    named = json.dumps(outcome["issue"])
    assert any(key in named for key in keys), (keys, named)
    assert TOKEN not in response.text


def needed_keys(service: dict[str, Any]) -> list[str]:
    keys = list((service.get("prefetch") or {}).keys())
    if not keys:
        pytest.skip(f"{service['id']} advertises no prefetch key")
    return keys


def test_control_healthy_upstream_gives_200(
    client: TestClient, chaos: ChaosServer, services: dict[str, dict[str, Any]]
) -> None:
    chaos.reset("ok")
    keys = needed_keys(services[PV])
    response, _ = call(client, PV, hook_body(services[PV], chaos.origin))
    assert response.status_code == 200, response.text
    fetched = {s.path for s in chaos.requests()}
    assert len(fetched) == len(keys)
    assert all(s.authorization == f"Bearer {TOKEN}" for s in chaos.requests())


FAST_FAULTS = [
    "500",
    "502",
    "503",
    "429",
    "401",
    "403",
    "html",
    "truncated-json",
    "short-body",
    "text-plain",
    "nan",
    "wrong-type",
    "huge-declared",
    "reset",
]


@pytest.mark.parametrize("mode", FAST_FAULTS)
def test_fault_gives_412_naming_keys(
    client: TestClient, chaos: ChaosServer, services: dict[str, dict[str, Any]], mode: str
) -> None:
    chaos.reset(mode)
    keys = needed_keys(services[PV])
    response, elapsed = call(client, PV, hook_body(services[PV], chaos.origin))
    assert_412(response, elapsed, keys)
    requests = chaos.requests()
    assert requests, "the service never reached the chaos server"
    # At most one attempt per key (R3: no retry on an HTTP answer).
    per_path: dict[str, int] = {}
    for seen in requests:
        per_path[seen.path] = per_path.get(seen.path, 0) + 1
    assert max(per_path.values()) == 1, per_path


@pytest.mark.parametrize("mode", ["slow", "hang"])
def test_slow_or_hanging_upstream_answers_within_deadline(
    client: TestClient, chaos: ChaosServer, services: dict[str, dict[str, Any]], mode: str
) -> None:
    chaos.reset(mode)
    keys = needed_keys(services[PV])
    response, elapsed = call(client, PV, hook_body(services[PV], chaos.origin))
    assert_412(response, elapsed, keys)
    assert elapsed >= DEADLINE * 0.9  # it did wait for the upstream, up to the deadline
    # R2: no connection left open to the upstream once the call is answered.
    stop = time.monotonic() + 2.0
    while time.monotonic() < stop and not all(s.client_closed for s in chaos.requests()):
        time.sleep(0.02)
    assert all(s.client_closed for s in chaos.requests()), "a socket to the upstream leaked"


HOOK_SERVICES = [
    "muscle-spasm-patient-view",
    "muscle-spasm-encounter-start",
    "muscle-spasm-order-select",
    "muscle-spasm-order-sign",
]


@pytest.mark.parametrize("service_id", HOOK_SERVICES)
def test_hanging_upstream_per_hook(
    client: TestClient, chaos: ChaosServer, services: dict[str, dict[str, Any]], service_id: str
) -> None:
    chaos.reset("hang")
    service = services[service_id]
    keys = needed_keys(service)
    response, elapsed = call(client, service_id, hook_body(service, chaos.origin))
    assert_412(response, elapsed, keys)


def test_50mb_body_is_cut_at_the_cap_with_bounded_memory(
    client: TestClient, chaos: ChaosServer, services: dict[str, dict[str, Any]]
) -> None:
    chaos.reset("huge-chunked")
    keys = needed_keys(services[PV])
    tracemalloc.start()
    try:
        response, elapsed = call(client, PV, hook_body(services[PV], chaos.origin))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_412(response, elapsed, keys)
    for seen in chaos.requests():
        assert seen.done.wait(5), "the 50 MB stream was never aborted"
        # The read stopped at the cap; what was sent beyond it sat in loopback socket buffers.
        assert seen.bytes_sent < 16 * MB, seen.bytes_sent
    assert peak < 24 * MB, f"peak traced memory {peak / MB:.1f} MB for a 50 MB upstream body"


def test_endless_next_chain_stops_at_the_page_cap(
    client: TestClient, chaos: ChaosServer, services: dict[str, dict[str, Any]]
) -> None:
    chaos.reset("next-chain")
    service = services[PV]
    keys = needed_keys(service)
    searches = [k for k, q in service["prefetch"].items() if "?" in q]
    if not searches:
        pytest.skip("no search key")
    response, elapsed = call(client, PV, hook_body(service, chaos.origin))
    assert_412(response, elapsed, searches)
    per_path: dict[str, int] = {}
    for seen in chaos.requests():
        per_path[seen.path] = per_path.get(seen.path, 0) + 1
    assert per_path and max(per_path.values()) <= 5, per_path  # upstream_max_pages default
    assert len(keys) >= len(searches)


@pytest.mark.parametrize("mode", ["redirect", "next-foreign"])
def test_redirect_or_foreign_next_is_never_followed(
    client: TestClient,
    chaos: ChaosServer,
    sink: Sink,
    services: dict[str, dict[str, Any]],
    mode: str,
) -> None:
    chaos.reset(mode)
    keys = needed_keys(services[PV])
    response, elapsed = call(client, PV, hook_body(services[PV], chaos.origin))
    assert_412(response, elapsed, keys)
    assert sink.connections == 0


def _prefetch_with_next(service: dict[str, Any], next_url: str) -> tuple[str, dict[str, Any]]:
    searches = [k for k, q in (service.get("prefetch") or {}).items() if "?" in q]
    if not searches:
        pytest.skip("no search key")
    paged = searches[0]
    prefetch: dict[str, Any] = dict.fromkeys(service["prefetch"])
    prefetch[paged] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [],
        "link": [{"relation": "next", "url": next_url}],
    }
    return paged, prefetch


def test_paginated_prefetch_with_endless_chain(
    client: TestClient, chaos: ChaosServer, services: dict[str, dict[str, Any]]
) -> None:
    chaos.reset("next-chain")
    service = services[PV]
    paged, prefetch = _prefetch_with_next(service, f"{chaos.origin}/fhir/Condition?_page=1")
    response, elapsed = call(client, PV, hook_body(service, chaos.origin, prefetch))
    assert_412(response, elapsed, [paged])
    assert 1 <= len(chaos.requests()) <= 5


def test_paginated_prefetch_next_to_another_origin(
    client: TestClient, chaos: ChaosServer, sink: Sink, services: dict[str, dict[str, Any]]
) -> None:
    chaos.reset("ok")
    service = services[PV]
    paged, prefetch = _prefetch_with_next(service, f"{sink.origin}/fhir/Condition?_page=2")
    response, elapsed = call(client, PV, hook_body(service, chaos.origin, prefetch))
    assert_412(response, elapsed, [paged])
    assert sink.connections == 0
    assert chaos.requests() == []


def test_connection_refused(
    sink: Sink, services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """R7: nothing listens on the fhirServer port (a closed loopback port)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    app = build_app(
        tmp_path,
        transport=None,
        fhir_server_allowlist=(f"http://127.0.0.1:{closed}",),
        prefetch_deadline_seconds=DEADLINE,
    )
    service = services[PV]
    keys = needed_keys(service)
    body = hook_body(service, f"http://127.0.0.1:{closed}")
    with TestClient(app) as other:
        response, elapsed = call(other, PV, body)
    assert_412(response, elapsed, keys)
    assert sink.connections == 0
