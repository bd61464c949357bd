"""A resource about another patient is ignored by every operation: CDS Hooks calls,
``PlanDefinition/$apply``, ``ActivityDefinition/$apply``, ``$populate`` and ``$extract``.

Each test sends the same data twice, once about the call's patient and once about another one,
so that it shows the data would have mattered (``engine/data/patient_data.py`` decides for all).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_cds_hooks_support import (
    INJURY,
    SPASM,
    hook_request,
    rf01_prefetch,
    rule_codes,
    searchset,
)
from tests.api.test_operations import MINI, care_plan, parameters, spasm
from tests.conftest import make_app

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
EXTRACT_RESOLVE = ROOT / "tests" / "fixtures" / "definitions-extract-resolve"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def about(value: Any, patient: str) -> Any:
    """``value`` with each ``Patient/p1`` reference (and Patient p1 itself) moved to ``patient``."""
    text = json.dumps(value).replace('"Patient/p1"', f'"Patient/{patient}"')
    moved = json.loads(text)
    for resource in _resources(moved):
        if resource.get("resourceType") == "Patient" and resource.get("id") == "p1":
            resource["id"] = patient
    return moved


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "resourceType" in value:
            yield value
        for inner in value.values():
            yield from _resources(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _resources(inner)


def golden_body(case: str) -> dict[str, Any]:
    request = json.loads((GOLDEN / case / "request.json").read_text())
    assert "now" not in request  # the app below runs at the default instant
    body: dict[str, Any] = request["body"]
    return body


def with_data(body: dict[str, Any], patient: str) -> dict[str, Any]:
    """The Parameters ``body`` with its ``data`` (not its ``subject``) about ``patient``."""
    out = copy.deepcopy(body)
    for param in out["parameter"]:
        if param["name"] == "data":
            param["resource"] = about(param["resource"], patient)
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path_factory.mktemp("scope"))) as test_client:
        yield test_client


def test_cds_hooks_call(client: TestClient) -> None:
    service = "muscle-spasm-patient-view"
    path = f"/cds-services/{service}"
    own = client.post(path, json=hook_request(service, prefetch=rf01_prefetch()))
    assert "RF-01" in rule_codes(own.json())
    others = rf01_prefetch(conditions=searchset(about(SPASM, "p2"), about(INJURY, "p2")))
    other = client.post(path, json=hook_request(service, prefetch=others))
    assert other.status_code == 200
    assert "RF-01" not in rule_codes(other.json())


def test_plan_definition_apply(client: TestClient) -> None:
    body = golden_body("apply/rf-01-applicable-post")
    path = "/fhir/PlanDefinition/rf-01/$apply"
    own = client.post(path, json=with_data(body, "p1"), headers=FHIR_JSON)
    assert [a["id"] for a in care_plan(own.json()).get("action", [])] != []
    other = client.post(path, json=with_data(body, "p2"), headers=FHIR_JSON)
    assert other.status_code == 200
    assert care_plan(other.json()).get("action", []) == []


def test_activity_definition_apply(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path, definitions_dir=MINI)) as mini:
        path = "/fhir/ActivityDefinition/mini-referral/$apply"
        own = mini.post(path, json=parameters(spasm()), headers=FHIR_JSON).json()
        assert own["priority"] == "urgent"  # a recent spasm in the patient's record
        other = mini.post(path, json=parameters(about(spasm(), "p2")), headers=FHIR_JSON).json()
        assert other["priority"] == "routine"


def populated(response: Any) -> tuple[list[str], list[str]]:
    """The answered linkIds and the issue texts of a ``$populate`` answer."""
    assert response.status_code == 200, response.text
    parts = {p["name"]: p["resource"] for p in response.json()["parameter"]}
    answered = [i["linkId"] for i in _items(parts["response"].get("item", []))]
    issues = [i["diagnostics"] for i in parts.get("issues", {}).get("issue", [])]
    return answered, issues


def _items(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        if "answer" in item:
            yield item
        yield from _items(item.get("item", []))


def test_populate(client: TestClient) -> None:
    body = golden_body("sdc/populate-pain-inside-window")
    path = "/fhir/Questionnaire/muscle-spasm-assessment/$populate"
    answered, _ = populated(client.post(path, json=with_data(body, "p1"), headers=FHIR_JSON))
    assert "pain-nrs" in answered
    answered, issues = populated(client.post(path, json=with_data(body, "p2"), headers=FHIR_JSON))
    assert "pain-nrs" not in answered
    assert any("about another subject were ignored" in text for text in issues)


def extraction_request(patient: str) -> dict[str, Any]:
    finding = {
        "resourceType": "Observation",
        "id": "finding",
        "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "45352006"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/fhir/muscle-spasm/Questionnaire/extract-resolve",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-12-01T10:00:00Z",
        "contained": [finding],
        "item": [{"linkId": "finding", "answer": [{"valueReference": {"reference": "#finding"}}]}],
    }


def test_extract(tmp_path: Path) -> None:
    path = "/fhir/QuestionnaireResponse/$extract"
    with TestClient(make_app(tmp_path, definitions_dir=EXTRACT_RESOLVE)) as app:
        own = app.post(path, json=extraction_request("p1"), headers=FHIR_JSON)
        assert own.status_code == 200, own.text
        [entry] = own.json()["entry"]
        assert entry["resource"]["code"]["coding"][0]["code"] == "45352006"
        assert entry["resource"]["subject"] == {"reference": "Patient/p1"}
        other = app.post(path, json=extraction_request("p2"), headers=FHIR_JSON)
        assert other.status_code == 200, other.text
        assert other.json().get("entry", []) == []
