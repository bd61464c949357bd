"""Service calls (``POST /cds-services/{id}``): contract "Request errors", https://cds-hooks.hl7.org/2.0/#calling-a-cds-service,
§1.6 and §2 (the sandbox's request shapes).

Every error is an OperationOutcome with the contract's status; nothing a client sends yields a
5xx. All prefetch keys are sent as ``null`` (no data) unless a test says otherwise, so no call
reaches a FHIR server.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_cds_hooks_support import (
    PV,
    RULE_SYSTEM,
    SERVICES,
    cds_app,
    context,
    empty_values,
    hook_request,
    issue_text,
    outcome,
    rf01_prefetch,
    rule_codes,
)

REQUIRED = {
    "patient-view": ("userId", "patientId"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
    "encounter-start": ("userId", "patientId", "encounterId"),
}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(cds_app(tmp_path_factory.mktemp("calls"))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def null_prefetch(client: TestClient) -> dict[str, dict[str, Any]]:
    """Per service: every advertised prefetch key sent as ``null`` (no data, never fetched)."""
    services = client.get("/cds-services").json()["services"]
    return {s["id"]: dict.fromkeys(s.get("prefetch", {})) for s in services}


def call(client: TestClient, service_id: str, body: Any, **headers: str) -> Any:
    return client.post(
        f"/cds-services/{service_id}",
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )


def valid(service_id: str, null_prefetch: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return hook_request(service_id, prefetch=dict(null_prefetch[service_id]))


# -- happy path and exact empty body ------------------------------------------------------------


@pytest.mark.parametrize("service_id", sorted(SERVICES))
def test_no_card_is_exactly_cards_empty(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]], service_id: str
) -> None:
    response = call(client, service_id, valid(service_id, null_prefetch))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == b'{"cards":[]}'
    assert response.json() == {"cards": []}


def test_rf01_card_shape(client: TestClient) -> None:
    body = hook_request(
        "muscle-spasm-patient-view",
        prefetch=rf01_prefetch(),
    )
    response = call(client, "muscle-spasm-patient-view", body)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    assert "RF-01" in rule_codes(response.json())
    card = next(c for c in cards if c["source"]["topic"]["code"] == "RF-01")
    assert card["source"]["topic"]["system"] == RULE_SYSTEM
    assert card["source"]["label"] and card["uuid"]
    assert len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning", "critical")
    assert empty_values(response.json()) == []


# -- 400: the body ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{",
        b'{"hook": "patient-view",}',
        b"",
        b"   \n",
        b"[]",
        b'"patient-view"',
        b"42",
        b"null",
        b'{"hook": NaN}',
        b'{"hook": Infinity}',
        b'{"hook": -Infinity}',
        b'{"n": 1e999}',
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b"\xff\xfe{}",
        b'{"hook": "\xed\xa0\x80"}',
    ],
    ids=lambda raw: repr(raw[:20]),
)
def test_body_that_is_not_a_json_object_is_400(client: TestClient, raw: bytes) -> None:
    response = call(client, "muscle-spasm-patient-view", raw)
    outcome(response, 400)
    assert response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("member", ["hook", "hookInstance", "context"])
@pytest.mark.parametrize("how", ["missing", "null", "wrong-type"])
def test_missing_envelope_member_is_400(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]], member: str, how: str
) -> None:
    body = valid("muscle-spasm-patient-view", null_prefetch)
    if how == "missing":
        del body[member]
    else:
        body[member] = None if how == "null" else ["x"]
    response = call(client, "muscle-spasm-patient-view", body)
    outcome(response, 400)
    assert member in issue_text(response)


@pytest.mark.parametrize(
    ("service_id", "field"),
    [(sid, field) for sid, hook in sorted(SERVICES.items()) for field in REQUIRED[hook]],
)
@pytest.mark.parametrize("how", ["missing", "null", "empty"])
def test_missing_required_context_field_is_400(
    client: TestClient,
    null_prefetch: dict[str, dict[str, Any]],
    service_id: str,
    field: str,
    how: str,
) -> None:
    body = valid(service_id, null_prefetch)
    if how == "missing":
        del body["context"][field]
    else:
        body["context"][field] = None if how == "null" else type(body["context"][field])()
    response = call(client, service_id, body)
    outcome(response, 400)
    assert f"context.{field}" in issue_text(response)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patientId", 5),
        ("patientId", "Patient/"),
        ("selections", "MedicationRequest/draft-1"),
        ("draftOrders", "MedicationRequest/draft-1"),
        ("draftOrders", [1, 2]),
    ],
)
def test_context_field_of_the_wrong_type_is_400(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]], field: str, value: Any
) -> None:
    body = valid("muscle-spasm-order-select", null_prefetch)
    body["context"][field] = value
    response = call(client, "muscle-spasm-order-select", body)
    outcome(response, 400)
    assert f"context.{field}" in issue_text(response)


@pytest.mark.parametrize("service_id", sorted(SERVICES))
def test_hook_other_than_the_services_is_400(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]], service_id: str
) -> None:
    for hook in set(SERVICES.values()) - {SERVICES[service_id]}:
        body = valid(service_id, null_prefetch)
        body["hook"] = hook
        body["context"] = context(hook)
        response = call(client, service_id, body)
        outcome(response, 400)
        assert "hook" in issue_text(response)


def test_fhir_authorization_without_fhir_server_is_400(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]]
) -> None:
    body = valid("muscle-spasm-patient-view", null_prefetch)
    body["fhirAuthorization"] = {
        "access_token": "some-opaque-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    response = call(client, "muscle-spasm-patient-view", body)
    outcome(response, 400)
    assert "fhirServer" in issue_text(response)
    assert "some-opaque-token" not in response.text


@pytest.mark.parametrize("value", ["garbage", 42, ["Condition"], True])
def test_prefetch_value_that_is_not_a_resource_is_400(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]], value: Any
) -> None:
    body = valid("muscle-spasm-patient-view", null_prefetch)
    body["prefetch"]["conditions"] = value
    response = call(client, "muscle-spasm-patient-view", body)
    outcome(response, 400)
    assert "prefetch.conditions" in issue_text(response)


def test_prefetch_that_is_not_an_object_is_400(client: TestClient) -> None:
    body = hook_request("muscle-spasm-patient-view", prefetch=None)
    body["prefetch"] = ["conditions"]
    outcome(call(client, "muscle-spasm-patient-view", body), 400)


def test_unknown_prefetch_key_is_ignored(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]]
) -> None:
    body = valid("muscle-spasm-patient-view", null_prefetch)
    body["prefetch"]["somebodyElses"] = "not a resource at all"
    response = call(client, "muscle-spasm-patient-view", body)
    assert response.status_code == 200, response.text


# -- 404 / 405 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("service_id", ["nope", "muscle-spasm", "MUSCLE-SPASM-PATIENT-VIEW"])
def test_unknown_service_is_404(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]], service_id: str
) -> None:
    response = call(client, service_id, valid("muscle-spasm-patient-view", null_prefetch))
    outcome(response, 404)
    assert response.headers["content-type"].startswith("application/json")


def test_unknown_path_under_cds_services_is_404(client: TestClient) -> None:
    outcome(client.post("/cds-services/muscle-spasm-patient-view/nope", json={}), 404)
    outcome(client.get("/cds-services/a/b/c"), 404)


@pytest.mark.parametrize("path", [PV, PV + "/feedback"])
def test_get_on_a_service_is_405_or_404_outcome(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 405), response.text
    outcome(response, response.status_code)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_outcome(client: TestClient, method: str) -> None:
    for path in ("/cds-services", PV):
        outcome(client.request(method, path, json={}), 405)


# -- 415 / 413 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/fhir+xml",
        "application/jsonp",
        "json",
    ],
)
def test_other_content_types_are_415(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]], content_type: str
) -> None:
    body = json.dumps(valid("muscle-spasm-patient-view", null_prefetch)).encode()
    response = client.post(PV, content=body, headers={"Content-Type": content_type})
    outcome(response, 415)
    assert response.headers["content-type"].startswith("application/json")


def test_missing_content_type_is_415(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]]
) -> None:
    body = json.dumps(valid("muscle-spasm-patient-view", null_prefetch)).encode()
    response = client.post(PV, content=body)
    assert "content-type" not in {k.lower() for k in response.request.headers}
    outcome(response, 415)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
        "application/fhir+json",
        "application/fhir+json; charset=utf-8",
        "application/fhir+json; fhirVersion=4.0",
    ],
)
def test_json_media_types_with_any_parameters_are_accepted(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]], content_type: str
) -> None:
    body = json.dumps(valid("muscle-spasm-patient-view", null_prefetch)).encode()
    response = client.post(PV, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}


def test_body_over_max_body_bytes_is_413(tmp_path: Path) -> None:
    with TestClient(cds_app(tmp_path, max_body_bytes=2048)) as small:
        body = hook_request("muscle-spasm-patient-view", prefetch={}, padding="x" * 4096)
        response = call(small, "muscle-spasm-patient-view", body)
        outcome(response, 413)
        # a chunked body (no Content-Length) is capped too
        chunks = iter([json.dumps(body).encode()[i : i + 512] for i in range(0, 5000, 512)])
        response = small.post(PV, content=chunks, headers={"Content-Type": "application/json"})
        outcome(response, 413)
        # feedback has the same cap
        response = small.post(
            PV + "/feedback", content=b'{"feedback": []' + b" " * 4096 + b"}", headers=JSON
        )
        outcome(response, 413)


# -- normalisation and tolerance ----------------------------------------------------------------


def test_patient_prefix_on_patient_id_is_stripped(client: TestClient) -> None:
    """``Patient/p1`` reads the same data as ``p1``: RF-01 fires on p1's Conditions."""
    body = hook_request(
        "muscle-spasm-patient-view",
        prefetch=rf01_prefetch(),
    )
    body["context"]["patientId"] = "Patient/p1"
    response = call(client, "muscle-spasm-patient-view", body)
    assert response.status_code == 200, response.text
    assert "RF-01" in rule_codes(response.json())


def test_dstu2_medication_order_only_is_ignored_with_a_warning(
    client: TestClient,
    null_prefetch: dict[str, dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = valid("muscle-spasm-order-sign", null_prefetch)
    body["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationOrder",
                    "id": "mo-1",
                    "status": "draft",
                    "patient": {"reference": "Patient/p1"},
                    "medicationCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                "code": "197446",
                            }
                        ]
                    },
                }
            }
        ],
    }
    with caplog.at_level(logging.WARNING):
        response = call(client, "muscle-spasm-order-sign", body)
    assert response.status_code == 200, response.text
    assert response.content == b'{"cards":[]}'
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "MedicationOrder" in str(getattr(r, "types", "")) or "MedicationOrder" in r.getMessage()
        for r in warnings
    ), [r.getMessage() for r in warnings]


def sandbox_medication_request() -> dict[str, Any]:
    """cds-hooks/sandbox ``medication-reducers.js``: objects where R4 has arrays, no intent."""
    return {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "authoredOn": "2026-12-01",
        "category": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                    "code": "outpatient",
                }
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "reasonCode": {"coding": [{"system": "http://snomed.info/sct", "code": "45352006"}]},
        "medicationCodeableConcept": {
            "text": "cyclobenzaprine hydrochloride 10 MG Oral Tablet",
            "coding": [
                {
                    "display": "cyclobenzaprine hydrochloride 10 MG Oral Tablet",
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "828348",
                }
            ],
        },
        "dosageInstruction": [
            {
                "text": "1 tablet three times daily",
                "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
            }
        ],
    }


def test_sandbox_order_select_shape_is_accepted(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]]
) -> None:
    body = valid("muscle-spasm-order-select", null_prefetch)
    body["fhirServer"] = "https://launch.smarthealthit.org/v/r4/fhir"
    body["context"] = {
        "patientId": "p1",
        "userId": "Practitioner/COREPRACTITIONER1",
        "selections": ["MedicationRequest/request-123"],
        "draftOrders": {
            "resourceType": "Bundle",
            "entry": [{"resource": sandbox_medication_request()}],
        },
    }
    response = call(client, "muscle-spasm-order-select", body)
    assert response.status_code == 200, response.text
    assert "cards" in response.json()
    assert empty_values(response.json()) == []


def test_sandbox_order_sign_shape_is_accepted(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]]
) -> None:
    body = valid("muscle-spasm-order-sign", null_prefetch)
    body["context"] = {
        "patientId": "p1",
        "userId": "Practitioner/COREPRACTITIONER1",
        "draftOrders": {
            "resourceType": "Bundle",
            "entry": [{"resource": sandbox_medication_request()}],
        },
    }
    response = call(client, "muscle-spasm-order-sign", body)
    assert response.status_code == 200, response.text


def test_top_level_extra_members_are_ignored(client: TestClient) -> None:
    body = hook_request(
        "muscle-spasm-patient-view",
        prefetch=rf01_prefetch(),
    )
    body |= {
        "user": "Practitioner/example",
        "patient": "p1",
        "redirect": "http://sandbox/",
        "extension": {"com.example.flags": {"x": 1}},
        "fhirVersion": "4.0.1",
    }
    body["context"]["somethingElse"] = {"x": [1]}
    response = call(client, "muscle-spasm-patient-view", body)
    assert response.status_code == 200, response.text
    assert "RF-01" in rule_codes(response.json())


def test_order_select_rules_see_only_selected_drafts(
    client: TestClient, null_prefetch: dict[str, dict[str, Any]]
) -> None:
    """A selection naming no draft is fine: the drafts are context only (200)."""
    body = valid("muscle-spasm-order-select", null_prefetch)
    body["context"]["selections"] = ["MedicationRequest/not-in-the-bundle"]
    response = call(client, "muscle-spasm-order-select", body)
    assert response.status_code == 200, response.text


def test_same_call_twice_gives_the_same_rules(client: TestClient) -> None:
    body = hook_request(
        "muscle-spasm-patient-view",
        prefetch=rf01_prefetch(),
    )
    first = call(client, "muscle-spasm-patient-view", copy.deepcopy(body)).json()["cards"]
    second = call(client, "muscle-spasm-patient-view", body).json()["cards"]
    assert [c["source"]["topic"] for c in first] == [c["source"]["topic"] for c in second]
    for cards in (first, second):
        uuids = [c["uuid"] for c in cards] + [
            s["uuid"] for c in cards for s in c.get("suggestions", [])
        ]
        assert len(uuids) == len(set(uuids))
