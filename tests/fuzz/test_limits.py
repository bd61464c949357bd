"""Resource limits on every body endpoint (RSP §6.3 L1-L3): a body over ``max_body_bytes`` →
413 (declared or chunked), more than ``max_resources`` resources → 413, JSON deeper than
``max_json_depth`` → 400; each an OperationOutcome, never a 5xx."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.faults.apps import build_app
from tests.fuzz.conftest import check_response

MAX_BYTES = 64 * 1024
MAX_RESOURCES = 40
MAX_DEPTH = 64
QUESTIONNAIRE = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"
BODY_ENDPOINTS = [
    "/cds-services/muscle-spasm-patient-view",
    "/cds-services/muscle-spasm-patient-view/feedback",
    "/fhir/PlanDefinition/rf-01/$apply",
    "/fhir/Questionnaire/$populate",
    "/fhir/QuestionnaireResponse/$extract",
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = build_app(
        Path(tempfile.mkdtemp(prefix="fuzz-limits-")),
        max_body_bytes=MAX_BYTES,
        max_resources=MAX_RESOURCES,
        max_json_depth=MAX_DEPTH,
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def post(client: TestClient, path: str, content: Any) -> Any:
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    check_response(
        response.status_code, response.content, response.headers.get("content-type", ""), path
    )
    return response


def conditions(count: int) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": f"c{i}",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                }
            }
            for i in range(count)
        ],
    }


def big_body(path: str) -> dict[str, Any]:
    padding = "x" * (MAX_BYTES + 1024)
    if "$apply" in path or "$populate" in path:
        return {"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": padding}]}
    if "$extract" in path:
        return {"resourceType": "QuestionnaireResponse", "questionnaire": padding}
    if path.endswith("/feedback"):
        return {"feedback": [], "padding": padding}
    return {"hook": "patient-view", "hookInstance": padding, "context": {}}


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
def test_body_over_the_cap_is_413(client: TestClient, path: str) -> None:
    raw = orjson.dumps(big_body(path))
    assert post(client, path, raw).status_code == 413


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
def test_chunked_body_over_the_cap_is_413(client: TestClient, path: str) -> None:
    raw = orjson.dumps(big_body(path))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must hold while streaming
        for start in range(0, len(raw), 8192):
            yield raw[start : start + 8192]

    assert post(client, path, chunks()).status_code == 413


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
def test_json_deeper_than_the_limit_is_400(client: TestClient, path: str) -> None:
    nested: Any = "leaf"
    for _ in range(MAX_DEPTH + 1):
        nested = [nested]
    body: dict[str, Any] = {"resourceType": "Parameters", "parameter": nested, "context": nested}
    assert post(client, path, orjson.dumps(body)).status_code == 400
    at_limit: Any = "leaf"
    for _ in range(MAX_DEPTH - 3):
        at_limit = [at_limit]
    ok = post(client, path, orjson.dumps({"x": at_limit}))
    assert ok.status_code != 400 or "deeper" not in ok.text  # the limit is not off by much


def test_too_many_resources_in_a_hook_call_is_413(client: TestClient) -> None:
    service = {s["id"]: s for s in client.get("/cds-services").json()["services"]}[
        "muscle-spasm-patient-view"
    ]
    keys = list(service.get("prefetch") or {})
    searches = [k for k in keys if "?" in service["prefetch"][k]]
    if not searches:
        pytest.skip("patient-view advertises no search key")
    prefetch: dict[str, Any] = dict.fromkeys(keys)
    prefetch[searches[0]] = conditions(MAX_RESOURCES + 1)
    body = {
        "hook": "patient-view",
        "hookInstance": "2b0a0e1e-limits-0001",
        "context": {"userId": "Practitioner/u1", "patientId": "p1"},
        "prefetch": prefetch,
    }
    path = "/cds-services/muscle-spasm-patient-view"
    assert post(client, path, orjson.dumps(body)).status_code == 413
    prefetch[searches[0]] = conditions(MAX_RESOURCES - 1)
    assert post(client, path, orjson.dumps(body)).status_code == 200


@pytest.mark.parametrize(
    "path", ["/fhir/PlanDefinition/rf-01/$apply", "/fhir/Questionnaire/$populate"]
)
def test_too_many_resources_in_operation_data_is_413(client: TestClient, path: str) -> None:
    parameters: list[dict[str, Any]] = [
        {"name": "subject", "valueString": "Patient/p1"}
        if "$apply" in path
        else {"name": "subject", "valueReference": {"reference": "Patient/p1"}},
        {"name": "data", "resource": conditions(MAX_RESOURCES + 1) | {"type": "collection"}},
    ]
    if "$populate" in path:
        parameters.append({"name": "questionnaire", "valueCanonical": QUESTIONNAIRE})
    body = {"resourceType": "Parameters", "parameter": parameters}
    assert post(client, path, orjson.dumps(body)).status_code == 413
