"""The rough edges a real EHR client (the CDS Hooks Sandbox in a browser) met, reproduced
(contract, Additions of 2026-12: "Paths", "401 answers").

* Discovery typed with a trailing slash: the client concatenates ``…/cds-services/`` and
  ``/<id>`` and calls (and signs ``aud`` for) ``/cds-services//muscle-spasm-patient-view``.
* The client on ``localhost`` while the service was configured for ``127.0.0.1``: the client
  saw a bare 401, and nobody could tell why. The 401 stays bare; the server log now says why,
  in one line, without the token.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bench.issuer import ISSUER, Issuer
from fhir_service.paths import called_paths, without_empty_segments
from tests.conftest import make_app
from tests.observability.helpers import PV, pv_request

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def jwt_app(tmp_path: Path, issuer: Issuer) -> FastAPI:
    issuers = issuer.write_trusted_issuers(tmp_path / "issuers.json")
    return make_app(tmp_path, auth="jwt", trusted_issuers=issuers, public_base_url=BASE)


def bearer(issuer: Issuer, audience: str) -> dict[str, str]:
    return {"authorization": f"Bearer {issuer.token(audience)}"}


def test_service_path_with_an_empty_segment_is_served(jwt_app: FastAPI, issuer: Issuer) -> None:
    """The sandbox with discovery URL ``http://127.0.0.1:8000/cds-services/``."""
    called = "/cds-services//muscle-spasm-patient-view"
    with TestClient(jwt_app) as client:
        # aud exactly as the client called it, `//` included
        response = client.post(called, json=pv_request(), headers=bearer(issuer, BASE + called))
        assert response.status_code == 200, response.text
        cards = response.json()["cards"]
        assert {c["source"]["topic"]["code"] for c in cards} == {"RF-05", "LAB-01"}
        # aud of the path as served works too
        body = pv_request() | {"hookInstance": "e81422ba-0000-0000-0000-000000000002"}
        response = client.post(called, json=body, headers=bearer(issuer, BASE + PV))
        assert response.status_code == 200
        # feedback, as the same client sends it
        feedback = f"{called}/feedback"
        item = {
            "card": cards[0]["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-12-01T12:05:00Z",
        }
        response = client.post(
            feedback, json={"feedback": [item]}, headers=bearer(issuer, BASE + feedback)
        )
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 1
        # an aud for another URL is still refused
        wrong = bearer(issuer, BASE + "/cds-services//muscle-spasm-order-sign")
        assert client.post(called, json=pv_request(), headers=wrong).status_code == 401


@pytest.mark.parametrize("called", ["//cds-services", "/cds-services//", "//cds-services//"])
def test_discovery_with_empty_segments_is_served(
    jwt_app: FastAPI, issuer: Issuer, called: str
) -> None:
    with TestClient(jwt_app) as client:
        # (a full URL: a bare "//cds-services" would be a network-path reference to httpx)
        url = "http://testserver" + called
        response = client.get(url, headers=bearer(issuer, BASE + called))
    assert response.status_code == 200, response.text
    ids = {s["id"] for s in response.json()["services"]}
    assert "muscle-spasm-patient-view" in ids


def test_empty_segments_on_the_fhir_side(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path)) as client:
        response = client.get("/fhir//PlanDefinition//rf-05")
    assert response.status_code == 200
    assert response.json()["id"] == "rf-05"


def test_path_helpers() -> None:
    assert without_empty_segments("/cds-services//x///feedback") == "/cds-services/x/feedback"
    assert called_paths({"path": "/a"}) == ["/a"]
    scope = {"path": "/a/b", "fhir_service.called_path": "/a//b"}
    assert called_paths(scope) == ["/a/b", "/a//b"]


def unauthorized_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("fhir_service") and "unauthorized" in r.getMessage()
    ]


def test_localhost_client_against_127_0_0_1_service(
    jwt_app: FastAPI, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    """The body stays bare; one log line names the check, iss and both auds, not the token."""
    token = issuer.token("http://localhost:8000" + PV)
    caplog.set_level(logging.INFO)
    with TestClient(jwt_app) as client:
        response = client.post(PV, json=pv_request(), headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login"}],
    }
    (line,) = unauthorized_lines(caplog)
    message = line.getMessage()
    assert "check=aud" in message
    assert f"iss={ISSUER!r}" in message
    assert f"expected aud=['{BASE}{PV}']" in message
    assert f"received aud='http://localhost:8000{PV}'" in message
    assert line.levelno == logging.WARNING
    fields = {k: getattr(line, k) for k in ("check", "iss", "expectedAud", "receivedAud")}
    assert fields == {
        "check": "aud",
        "iss": ISSUER,
        "expectedAud": [BASE + PV],
        "receivedAud": "http://localhost:8000" + PV,
    }
    logged = json.dumps([r.getMessage() for r in caplog.records] + [str(vars(line))])
    for part in token.split("."):
        assert part not in logged


@pytest.mark.parametrize(
    ("authorization", "check"),
    [
        (None, "bearer"),
        ("Bearer not-a-jwt", "bearer"),
        ("Bearer a.b.c", "token"),
        ("another issuer's key", "signature"),
    ],
)
def test_each_refusal_is_one_line_naming_its_check(
    jwt_app: FastAPI, caplog: pytest.LogCaptureFixture, authorization: str | None, check: str
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    if authorization == "another issuer's key":  # same iss and kid, a key it does not have
        headers["authorization"] = "Bearer " + Issuer().token(BASE + PV)
    caplog.set_level(logging.INFO)
    with TestClient(jwt_app) as client:
        response = client.post(PV, json=pv_request(), headers=headers)
    assert response.status_code == 401
    (line,) = unauthorized_lines(caplog)
    assert line.check == check  # type: ignore[attr-defined]
