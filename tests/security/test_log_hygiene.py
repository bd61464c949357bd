"""Token and PHI hygiene of the logs and of ``/metrics`` (RSP §6.3 H1, §2.5).

A representative run — hook calls carrying ``fhirAuthorization`` tokens against a real loopback
FHIR server (success and upstream failure), JWT-authenticated calls (valid, replayed, expired,
wrong audience), prefetch with a Patient's name, birth date and identifiers, ``$populate`` and
``$apply`` with the same patient data, feedback with a free-text comment, and error paths — is
captured at DEBUG on the root logger (every record's message *and* extra fields) and through the
service's own JSON formatter. No bearer token, no JWT compact string and no patient name, birth
date or identifier value may appear in any line. The same runs then read ``/metrics``: no
label value holds any of them, a query string, or a path that is not a route template.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bench.issuer import ISSUER, KID, Issuer
from fhir_service.api import cds_hooks, fhir_rest, operations, sdc
from fhir_service.logging_setup import JsonFormatter
from tests.faults.apps import build_app
from tests.faults.chaos import ChaosServer
from tests.observability.helpers import samples

ACCESS_TOKEN = "at-7Hq2ZrX9vLw4KpN8sTb3YdF6"
FAMILY = "Zyxwvutsonian"
GIVEN = "Qwertyna"
BIRTH_DATE = "1931-07-23"
MRN = "MRN-77341-SECRET"
SSN = "987-65-4329"
COMMENT = f"Discussed with {GIVEN} {FAMILY}"
QUESTIONNAIRE = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": MRN},
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": SSN},
    ],
    "name": [{"family": FAMILY, "given": [GIVEN]}],
    "birthDate": BIRTH_DATE,
    "gender": "female",
}
CONDITION = {
    "resourceType": "Condition",
    "id": "c1",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
            }
        ]
    },
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "45352006"}]},
    "subject": {"reference": "Patient/p1", "display": f"{GIVEN} {FAMILY}"},
    "onsetDateTime": "2026-11-28",
    "note": [{"text": f"{FAMILY} reports cramps; MRN {MRN}"}],
}
PAIN = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
    "subject": {"reference": "Patient/p1", "display": f"{GIVEN} {FAMILY}"},
    "effectiveDateTime": "2026-11-30T10:00:00Z",
    "valueQuantity": {"value": 7, "unit": "{score}"},
}


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


#: The test's own HTTP client (Starlette's TestClient transport) logs the URLs *we* request.
TEST_CLIENT_LOGGERS = ("httpx2",)


def service_record(record: logging.LogRecord) -> bool:
    return not record.name.startswith(TEST_CLIENT_LOGGERS)


class Capture(logging.Handler):
    """Every record at DEBUG, formatted by the service's JSON formatter, plus raw fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.formatter_ = JsonFormatter()
        self.lines: list[str] = []
        self.addFilter(service_record)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))
        self.lines.append(repr(vars(record)))
        if record.exc_info and record.exc_info[1] is not None:
            self.lines.append(str(record.exc_info[1]))


@pytest.fixture
def capture(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[Capture, io.StringIO]]:
    handler = Capture()
    stream = io.StringIO()
    stream_handler = logging.StreamHandler(stream)
    stream_handler.setFormatter(JsonFormatter())
    stream_handler.addFilter(service_record)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.addHandler(stream_handler)
    caplog.set_level(logging.DEBUG)
    try:
        yield handler, stream
    finally:
        root.removeHandler(handler)
        root.removeHandler(stream_handler)
        root.setLevel(level)


@pytest.fixture
def chaos() -> Iterator[ChaosServer]:
    server = ChaosServer()
    yield server
    server.close()


def secrets(extra: list[str]) -> list[str]:
    return [ACCESS_TOKEN, FAMILY, GIVEN, BIRTH_DATE, MRN, SSN, *extra]


def assert_clean(
    capture: tuple[Capture, io.StringIO], caplog: pytest.LogCaptureFixture, extra: list[str]
) -> None:
    handler, stream = capture
    corpus = handler.lines + [stream.getvalue()]
    corpus += [r.getMessage() for r in caplog.records if service_record(r)]
    assert handler.lines, "nothing was logged: the capture is broken"
    for secret in secrets(extra):
        for line in corpus:
            assert secret not in line, f"{secret[:12]}... leaked into a log line: {line[:300]}"


def assert_metrics_clean(client: TestClient, extra: list[str]) -> None:
    """No secret in ``/metrics``; every route label is a route template of the app."""
    text = client.get("/metrics").text
    for secret in secrets(extra):
        assert secret not in text, f"{secret[:12]}... leaked into /metrics"
    app = client.app
    assert isinstance(app, FastAPI)
    routers = (cds_hooks.router, operations.router, sdc.router, fhir_rest.router)
    templates = {getattr(r, "path", None) for r in app.routes} | {"(unmatched)"}
    templates |= {getattr(r, "path", None) for router in routers for r in router.routes}
    found = samples(text)
    assert any(name == "fhir_service_cds_hook_calls_total" for name, _, _ in found)
    for name, labels, _ in found:
        if "route" in labels:
            assert labels["route"] in templates, (name, labels)
        for label, value in labels.items():
            assert "?" not in value and "=" not in value, (name, label, value)
            assert label != "path" and "@" not in value, (name, label, value)


def pv_body(fhir_server: str | None, prefetch: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "7c0d6a43-hygiene-0001",
        "context": {"userId": "Practitioner/u1", "patientId": "p1"},
    }
    if fhir_server:
        body["fhirServer"] = fhir_server
        body["fhirAuthorization"] = {
            "access_token": ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-service",
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def full_prefetch(client: TestClient, service_id: str) -> dict[str, Any]:
    service = {s["id"]: s for s in client.get("/cds-services").json()["services"]}[service_id]
    prefetch: dict[str, Any] = {}
    for key, query in (service.get("prefetch") or {}).items():
        kind = query.split("?")[0].split("/")[0]
        if "?" not in query:
            prefetch[key] = PATIENT if kind == "Patient" else None
        else:
            prefetch[key] = searchset(
                *[r for r in (CONDITION, PAIN, PATIENT) if r["resourceType"] == kind]
            )
    prefetch.setdefault("patient", PATIENT)
    return prefetch


def test_no_token_or_phi_in_logs_without_jwt(
    tmp_path: Path,
    chaos: ChaosServer,
    capture: tuple[Capture, io.StringIO],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build_app(
        tmp_path,
        transport=None,
        fhir_server_allowlist=(chaos.origin,),
        prefetch_deadline_seconds=1.0,
        log_level="DEBUG",
    )
    logging.getLogger().setLevel(logging.DEBUG)
    with TestClient(app, raise_server_exceptions=False) as client:
        pv = "/cds-services/muscle-spasm-patient-view"
        prefetch = full_prefetch(client, "muscle-spasm-patient-view")
        # Prefetch complete: name, birth date and identifiers in the body.
        assert client.post(pv, json=pv_body(None, prefetch)).status_code == 200
        # Every key fetched from the EHR with the bearer token (upstream fine, then failing).
        for mode, status in (("ok", 200), ("401", 412), ("html", 412), ("hang", 412)):
            chaos.reset(mode)
            response = client.post(pv, json=pv_body(f"{chaos.origin}/fhir", None))
            assert response.status_code == status, (mode, response.text)
        # A token that is not a valid bearer token (echo risk in errors).
        body = pv_body(f"{chaos.origin}/fhir", None)
        body["fhirAuthorization"]["access_token"] = f"{ACCESS_TOKEN} \n{MRN}"
        assert client.post(pv, json=body).status_code in (400, 412)
        # Malformed prefetch holding patient data (error paths).
        bad = dict(prefetch)
        bad["conditions"] = [PATIENT]
        client.post(pv, json=pv_body(None, bad))
        client.post(
            pv,
            content=b'{"hook": "patient-view", "x": "' + MRN.encode() + b'"',
            headers={"content-type": "application/json"},
        )
        # order-sign with the patient in prefetch and in the drafts' subject display.
        os_prefetch = full_prefetch(client, "muscle-spasm-order-sign")
        draft = {
            "resourceType": "MedicationRequest",
            "id": "d1",
            "status": "draft",
            "intent": "proposal",
            "subject": {"reference": "Patient/p1", "display": f"{GIVEN} {FAMILY}"},
            "medicationCodeableConcept": {
                "coding": [
                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "828299"}
                ]
            },
            "note": [{"text": f"for {FAMILY}, born {BIRTH_DATE}"}],
        }
        client.post(
            "/cds-services/muscle-spasm-order-sign",
            json={
                "hook": "order-sign",
                "hookInstance": "7c0d6a43-hygiene-0002",
                "context": {
                    "userId": "Practitioner/u1",
                    "patientId": "p1",
                    "draftOrders": {
                        "resourceType": "Bundle",
                        "type": "collection",
                        "entry": [{"resource": draft}],
                    },
                },
                "prefetch": os_prefetch,
            },
        )
        # Feedback with a free-text comment naming the patient.
        client.post(
            "/cds-services/muscle-spasm-patient-view/feedback",
            json={
                "feedback": [
                    {
                        "card": "c-1",
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-12-01T12:00:00Z",
                        "overrideReason": {"userComment": COMMENT},
                    },
                    {
                        "card": "c-2",
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-12-01T12:00:00Z",
                        "overrideReason": {"reason": {"system": "urn:x", "code": MRN}},
                    },
                ]
            },
        )
        # $populate and $apply with the patient's data (valid and invalid).
        data = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in (PATIENT, CONDITION, PAIN)],
        }
        populate = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "subject", "valueReference": {"reference": "Patient/p1"}},
                {"name": "questionnaire", "valueCanonical": QUESTIONNAIRE},
                {"name": "context", "part": [{"name": "content", "resource": data}]},
            ],
        }
        assert client.post("/fhir/Questionnaire/$populate", json=populate).status_code == 200
        apply = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "subject", "valueString": "Patient/p1"},
                {"name": "data", "resource": data},
            ],
        }
        assert client.post("/fhir/PlanDefinition/rf-01/$apply", json=apply).status_code == 200
        broken = dict(PATIENT, birthDate=f"{BIRTH_DATE}T99", gender=MRN)
        apply["parameter"][1]["resource"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": broken}],
        }
        assert client.post("/fhir/PlanDefinition/rf-01/$apply", json=apply).status_code == 400
        client.get(f"/fhir/PlanDefinition?name={FAMILY}&identifier={MRN}")
        client.get(f"/fhir/Patient/{MRN}?name={FAMILY}")
        client.get(f"/{FAMILY}/{MRN}?birthdate={BIRTH_DATE}")
        assert_metrics_clean(client, [])
    assert_clean(capture, caplog, [])


def test_no_jwt_or_token_in_logs_with_jwt_auth(
    tmp_path: Path,
    chaos: ChaosServer,
    capture: tuple[Capture, io.StringIO],
    caplog: pytest.LogCaptureFixture,
) -> None:
    issuer = Issuer()
    app = build_app(
        tmp_path,
        auth="jwt",
        trusted_issuers=issuer.write_trusted_issuers(tmp_path / "issuers.json"),
        transport=None,
        fhir_server_allowlist=(chaos.origin,),
        prefetch_deadline_seconds=1.0,
        log_level="DEBUG",
    )
    logging.getLogger().setLevel(logging.DEBUG)
    base = "http://127.0.0.1:8000"
    minted: list[str] = []

    def bearer(path: str, **claims: Any) -> dict[str, str]:
        if claims:
            now = int(time.time())
            payload = {
                "iss": ISSUER,
                "sub": "c",
                "aud": base + path,
                "iat": now,
                "exp": now + 300,
                "jti": f"j-{len(minted)}",
                **claims,
            }
            token = jwt.encode(
                payload, issuer.key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"}
            )
        else:
            token = issuer.token(base + path)
        minted.append(token)
        return {"authorization": f"Bearer {token}"}

    pv = "/cds-services/muscle-spasm-patient-view"
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/cds-services", headers=bearer("/cds-services")).status_code == 200
        chaos.reset("ok")
        headers = bearer(pv)
        body = pv_body(f"{chaos.origin}/fhir", None)
        assert client.post(pv, json=body, headers=headers).status_code == 200
        assert client.post(pv, json=body, headers=headers).status_code == 401  # replayed jti
        assert client.post(pv, json=body, headers=bearer(pv, exp=1000, iat=900)).status_code == 401
        assert client.post(pv, json=body, headers=bearer("/cds-services")).status_code == 401
        assert (
            client.post(
                pv,
                json=body,
                headers=bearer(pv, iss="https://untrusted.example"),
            ).status_code
            == 401
        )
        tampered = headers["authorization"][:-6] + "AAAAAA"
        minted.append(tampered.removeprefix("Bearer "))
        assert client.post(pv, json=body, headers={"authorization": tampered}).status_code == 401
        assert (
            client.post(
                pv, json=body, headers={"authorization": f"Bearer {ACCESS_TOKEN}"}
            ).status_code
            == 401
        )
        assert (
            client.post(
                pv, json=body, headers={"authorization": f"Basic {ACCESS_TOKEN}"}
            ).status_code
            == 401
        )
        parts = [p for token in minted for p in token.split(".")]
        assert_metrics_clean(client, minted + [p for p in parts if len(p) > 20])
    assert_clean(capture, caplog, minted + [p for p in parts if len(p) > 20])


def test_rule_errors_on_client_data_do_not_echo_it_into_logs(
    tmp_path: Path, capture: tuple[Capture, io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    """A FHIRPath error raised while evaluating malformed client data (here a
    QuestionnaireResponse whose ``questionnaire`` is an object holding the patient's name and
    MRN) is logged by rule and reason, never with the offending value."""
    app = build_app(tmp_path, log_level="DEBUG")
    logging.getLogger().setLevel(logging.DEBUG)
    with TestClient(app, raise_server_exceptions=False) as client:
        for service_id in ("muscle-spasm-patient-view", "muscle-spasm-order-sign"):
            prefetch = dict.fromkeys(full_prefetch(client, service_id))
            odd_qr = {
                "resourceType": "QuestionnaireResponse",
                "id": "qr1",
                "status": "completed",
                "authored": "2026-11-30",
                "subject": {"reference": "Patient/p1"},
                "questionnaire": {"display": f"{GIVEN} {FAMILY}, {MRN}, born {BIRTH_DATE}"},
            }
            prefetch["assessments"] = searchset(odd_qr)
            prefetch["conditions"] = searchset(dict(CONDITION, onsetDateTime={"text": SSN}))
            context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": "p1"}
            if service_id.endswith("order-sign"):
                context["draftOrders"] = {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [],
                }
            response = client.post(
                f"/cds-services/{service_id}",
                json={
                    "hook": service_id.removeprefix("muscle-spasm-"),
                    "hookInstance": "7c0d6a43-hygiene-0003",
                    "context": context,
                    "prefetch": prefetch,
                },
            )
            assert response.status_code in (200, 400), response.text
    assert_clean(capture, caplog, [])
