"""SSRF through ``fhirServer`` end to end (RSP §6.3 X1-X12, X14; contract "Allowlist").

The allowlist is ``*`` only, so each target below may be admitted only as an ``https://`` URL on a
public address; every one of them must be refused *before any connection*: the call answers 412
naming the prefetch keys, a loopback sink counts zero connections, and a recording transport
(the real network transport, wrapped) sees zero requests. Host names resolve through an injected
resolver (``rebind.test`` → 127.0.0.1), never through real DNS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.faults.apps import build_app
from tests.faults.chaos import ChaosServer, Sink

TOKEN = "ssrf-token-b3f9a1c7e2d84f60"
PV = "muscle-spasm-patient-view"
PUBLIC = "93.184.216.34"
RESOLVES = {
    "rebind.test": ["127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": [PUBLIC, "127.0.0.1"],
    "private.test": ["10.0.0.7"],
    "v6loop.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
}


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The real network transport, recording every request it is asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(str(request.url))
        return await super().handle_async_request(request)


def resolver(host: str) -> list[str]:
    found = RESOLVES.get(host.lower().rstrip("."))
    if found is None:
        raise OSError(f"no such host in the test resolver: {host}")
    return found


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


@pytest.fixture(scope="module")
def transport() -> RecordingTransport:
    return RecordingTransport()


def build(tmp: Path, transport: httpx.AsyncBaseTransport, allowlist: tuple[str, ...]) -> FastAPI:
    return build_app(
        tmp,
        transport=transport,
        resolver=resolver,
        fhir_server_allowlist=allowlist,
        prefetch_deadline_seconds=2.0,
    )


@pytest.fixture(scope="module")
def client(
    transport: RecordingTransport, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    app = build(tmp_path_factory.mktemp("ssrf"), transport, ("*",))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keys(client: TestClient) -> list[str]:
    services = {s["id"]: s for s in client.get("/cds-services").json()["services"]}
    found = list(services[PV].get("prefetch") or {})
    if not found:
        pytest.skip("patient-view advertises no prefetch key: nothing would be fetched")
    return found


def targets(port: int) -> list[str]:
    return [
        # X1: http only admitted by '*'
        f"http://127.0.0.1:{port}/fhir",
        f"http://localhost:{port}/fhir",
        # X2: loopback names and literals
        f"https://127.0.0.1:{port}/fhir",
        f"https://localhost:{port}/fhir",
        f"https://LOCALHOST.:{port}/fhir",
        f"https://api.localhost:{port}/fhir",
        f"https://[::1]:{port}/fhir",
        # X3: cloud metadata
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/fhir",
        # X4: RFC 1918
        "https://10.0.0.1/fhir",
        "https://172.16.0.1/fhir",
        "https://192.168.0.1/fhir",
        # X5: other spellings of loopback / unspecified
        f"https://0.0.0.0:{port}/fhir",
        f"https://2130706433:{port}/fhir",
        f"https://0x7f000001:{port}/fhir",
        f"https://0177.0.0.1:{port}/fhir",
        f"https://127.1:{port}/fhir",
        f"https://[::ffff:127.0.0.1]:{port}/fhir",
        f"https://[::ffff:7f00:1]:{port}/fhir",
        f"https://[64:ff9b::7f00:1]:{port}/fhir",
        # X6: ULA and link-local IPv6
        "https://[fd00::1]/fhir",
        "https://[fe80::1]/fhir",
        # X8: userinfo tricks
        f"https://allowed.example@127.0.0.1:{port}/fhir",
        f"https://user:pass@127.0.0.1:{port}/fhir",
        f"http://127.0.0.1:{port}\\@allowed.example/fhir",
        # X11: other schemes
        "file:///etc/passwd",
        f"gopher://127.0.0.1:{port}/_x",
        f"ftp://127.0.0.1:{port}/fhir",
        # X12: DNS names resolving to non-public addresses (injected resolver)
        f"https://rebind.test:{port}/fhir",
        "https://metadata.test/fhir",
        "https://mixed.test/fhir",
        "https://private.test/fhir",
        f"https://v6loop.test:{port}/fhir",
        f"https://mapped.test:{port}/fhir",
        # not resolvable at all
        "https://does-not-exist.test/fhir",
        # garbage
        "https://",
        "not a url",
        f"https://127.0.0.1:{port}:{port}/fhir",
    ]


def body(fhir_server: str, patient_id: str = "p1") -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "5d7e1b0c-ssrf-0001",
        "fhirServer": fhir_server,
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 60,
            "scope": "patient/*.read",
            "subject": "cds",
        },
        "context": {"userId": "Practitioner/u1", "patientId": patient_id},
    }


def test_every_target_admitted_only_by_wildcard_is_refused_before_connecting(
    client: TestClient, sink: Sink, transport: RecordingTransport, keys: list[str]
) -> None:
    failures = []
    for target in targets(sink.port):
        start = time.monotonic()
        response = client.post(f"/cds-services/{PV}", json=body(target))
        elapsed = time.monotonic() - start
        named = response.text
        if not (
            response.status_code == 412
            and response.json().get("resourceType") == "OperationOutcome"
            and all(key in named for key in keys)
            and elapsed < 2.0
        ):
            failures.append((target, response.status_code, round(elapsed, 2), named[:200]))
    assert not failures, failures
    assert transport.sent == [], transport.sent
    assert sink.connections == 0
    assert sink.authorizations == []


def test_a_public_name_is_admitted_by_the_wildcard(tmp_path: Path) -> None:
    """Negative control: the same app does try an https URL on a public address."""
    attempts: list[str] = []

    def refuse_network(request: httpx.Request) -> httpx.Response:
        attempts.append(str(request.url))
        return httpx.Response(503, json={"resourceType": "OperationOutcome", "issue": []})

    RESOLVES["ehr.public.test"] = [PUBLIC]
    try:
        app = build(tmp_path, httpx.MockTransport(refuse_network), ("*",))
        with TestClient(app) as client:
            response = client.post(f"/cds-services/{PV}", json=body("https://ehr.public.test/r4"))
    finally:
        del RESOLVES["ehr.public.test"]
    assert response.status_code == 412
    assert attempts and all(a.startswith("https://ehr.public.test/r4/") for a in attempts)


def test_patient_id_is_data_not_a_path(tmp_path: Path) -> None:
    """X14: a patientId cannot change the host or the path of the prefetch query."""
    chaos = ChaosServer()
    try:
        app = build(tmp_path, httpx.AsyncHTTPTransport(), (chaos.origin,))
        evil = "../../admin?_count=100000#"
        with TestClient(app) as client:
            for patient_id in (evil, f"https://evil.test/{evil}", "p1/../../x"):
                chaos.reset("ok")
                response = client.post(
                    f"/cds-services/{PV}", json=body(f"{chaos.origin}/fhir", patient_id)
                )
                assert response.status_code in (200, 412), response.text
                for seen in chaos.requests():
                    segments = seen.path.split("/")
                    assert segments[:2] == ["", "fhir"], seen.target
                    assert len(segments) <= 4, seen.target  # /fhir/<Type>[/<id>]
                    assert ".." not in segments and "admin" not in segments, seen.target
                    assert "_count=100000" not in seen.target, seen.target
    finally:
        chaos.close()
