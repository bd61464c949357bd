"""The service against a real FHIR R4 server (SEKMET on loopback), not a mock.

For every example patient (``examples/patients/*.json``, loaded as transaction Bundles with
``urn:uuid`` fullUrls and ``ifNoneExist``) and every CDS service in discovery, the cards the
service returns when it must fetch everything itself from ``fhirServer`` (no prefetch) equal the
cards it returns with full prefetch, built by running the discovery's prefetch templates against
the same server ourselves (as a CDS client does), and with partial prefetch. RF-01 is asserted
by name (spasm Condition + neck injury Condition within 30 days, clock pinned). ``$populate``
and ``$apply`` run on patient data read from SEKMET.

The app runs in-process (``TestClient``) with the real httpx transport: its outbound calls go
over TCP to SEKMET, admitted by an explicit allowlist entry for SEKMET's loopback origin.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.conftest import DEFAULT_NOW, make_app
from tests.integration._servers import PINNED_NOW, http_json
from tests.integration.conftest import Ehr, start_ehr

pytestmark = pytest.mark.slow

RULE_SYSTEM = "http://example.org/fhir/muscle-spasm/CodeSystem/rule"
Q_URL = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")
assert DEFAULT_NOW.isoformat().replace("+00:00", "Z") == PINNED_NOW

#: A draft order per example patient for order-select/order-sign (RxNorm SCD, days of supply).
DRAFTS = {
    "rf01-neck-injury": ("828348", "cyclobenzaprine hydrochloride 10 MG Oral Tablet", 10),
    "older-adult-cyclobenzaprine": (
        "828348",
        "cyclobenzaprine hydrochloride 10 MG Oral Tablet",
        30,
    ),
    "pregnant-nocturnal-cramps": ("997157", "quinine sulfate 260 MG Oral Tablet", 14),
    "post-stroke-spasticity": ("197527", "clonazepam 0.5 MG Oral Tablet", 30),
    "heat-cramps-hyperthermia": ("828348", "cyclobenzaprine hydrochloride 10 MG Oral Tablet", 7),
}


@pytest.fixture(scope="module")
def client(ehr: Ehr, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Our app in-process; its FHIR calls go to SEKMET over loopback (transport=None)."""
    app = make_app(tmp_path_factory.mktemp("app"), fhir_server_allowlist=(ehr.origin,))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def services(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/cds-services")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["services"]
    assert {s["hook"] for s in found} >= {
        "patient-view",
        "encounter-start",
        "order-select",
        "order-sign",
    }
    return found


# --------------------------------------------------------------------------------------------
# What a CDS client would send


def draft_order(patient_id: str, example: str) -> dict[str, Any]:
    code, display, days = DRAFTS[example]
    return {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": code, "display": display}],
            "text": display,
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": "2026-12-01",
        "dosageInstruction": [
            {"timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}}}
        ],
        "dispenseRequest": {
            "quantity": {"value": 3 * days},
            "expectedSupplyDuration": {
                "value": days,
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            },
        },
    }


def hook_context(hook: str, ehr: Ehr, example: str) -> dict[str, Any]:
    ids = ehr.ids[example]
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": ids["Patient"]}
    if hook == "encounter-start":
        context["encounterId"] = ids["Encounter"]
    if hook in ("order-select", "order-sign"):
        context["encounterId"] = ids["Encounter"]
        draft = draft_order(ids["Patient"], example)
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
        if hook == "order-select":
            context["selections"] = ["MedicationRequest/draft-1"]
    return context


def fill(template: str, context: dict[str, Any]) -> str | None:
    """A prefetch template with its STU2 tokens filled (URL-encoded), or None when one of
    its tokens has no primitive value in the context (a client skips such a template)."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        got = context.get(match.group(1))
        if not isinstance(got, str | int | float):
            missing = True
            return ""
        return quote(str(got), safe="/")

    filled = TOKEN.sub(value, template)
    return None if missing or "{{" in filled else filled


def fetch_prefetch(ehr: Ehr, service: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Run every prefetch template against SEKMET, as a client would; pages are merged."""
    prefetch: dict[str, Any] = {}
    for key, template in service.get("prefetch", {}).items():
        query = fill(template, context)
        if query is None:
            continue
        status, body = http_json("GET", f"{ehr.base}/{query}")
        assert status == 200, f"{key}: {query} -> {status} {body}"
        if body.get("resourceType") == "Bundle":
            entries = list(body.get("entry", []))
            nxt = next(
                (link["url"] for link in body.get("link", []) if link["relation"] == "next"), None
            )
            while nxt:
                status, page = http_json("GET", nxt)
                assert status == 200, page
                entries += page.get("entry", [])
                nxt = next(
                    (link["url"] for link in page.get("link", []) if link["relation"] == "next"),
                    None,
                )
            body = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
            if entries:
                body["entry"] = entries
        prefetch[key] = body
    return prefetch


def call(
    client: TestClient,
    ehr: Ehr,
    service: dict[str, Any],
    context: dict[str, Any],
    prefetch: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    body: dict[str, Any] = {
        "hook": service["hook"],
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": ehr.base,
        "context": context,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    response = client.post(f"/cds-services/{service['id']}", json=body)
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


def normalise(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cards with uuids and generated resource ids replaced by their order of appearance."""
    seen: dict[str, str] = {}

    def alias(value: str) -> str:
        return seen.setdefault(value, f"<generated-{len(seen) + 1}>")

    out = copy.deepcopy(cards)
    for card in out:
        card["uuid"] = alias(card["uuid"])
        for suggestion in card.get("suggestions", []):
            suggestion["uuid"] = alias(suggestion["uuid"])
            for action in suggestion.get("actions", []):
                resource = action.get("resource")
                if isinstance(resource, dict) and action.get("type") == "create":
                    if "id" in resource:
                        resource["id"] = alias(resource["id"])
    return out


def rule_ids(cards: list[dict[str, Any]]) -> list[str]:
    return [c["source"]["topic"]["code"] for c in cards]


# --------------------------------------------------------------------------------------------
# The tests


def test_example_patients_loaded(ehr: Ehr) -> None:
    for name, ids in ehr.ids.items():
        assert {"Patient", "Encounter"} <= set(ids), name
        status, patient = http_json("GET", f"{ehr.base}/Patient/{ids['Patient']}")
        assert status == 200 and patient["identifier"][0]["value"].startswith("ms-ex-")
        # references were rewritten from urn:uuid to the server's ids
        status, conditions = http_json("GET", f"{ehr.base}/Condition?patient={ids['Patient']}")
        assert status == 200
        for entry in conditions.get("entry", []):
            assert entry["resource"]["subject"]["reference"].endswith(f"Patient/{ids['Patient']}")


def test_rf01_fires_from_fhir_server_without_prefetch(
    client: TestClient, ehr: Ehr, services: list[dict[str, Any]]
) -> None:
    service = next(s for s in services if s["id"] == "muscle-spasm-patient-view")
    context = hook_context("patient-view", ehr, "rf01-neck-injury")
    fallback = call(client, ehr, service, context, None)
    assert "RF-01" in rule_ids(fallback)
    card = next(c for c in fallback if c["source"]["topic"]["code"] == "RF-01")
    assert card["indicator"] == "warning"
    assert card["source"]["topic"]["system"] == RULE_SYSTEM
    prefetched = call(client, ehr, service, context, fetch_prefetch(ehr, service, context))
    assert normalise(prefetched) == normalise(fallback)
    # negative control: no injury on record, no RF-01
    other = hook_context("patient-view", ehr, "post-stroke-spasticity")
    assert "RF-01" not in rule_ids(call(client, ehr, service, other, None))


@pytest.mark.parametrize("hook", ["patient-view", "encounter-start", "order-select", "order-sign"])
def test_fallback_equals_prefetch_for_every_patient(
    client: TestClient, ehr: Ehr, services: list[dict[str, Any]], hook: str
) -> None:
    """Whatever cards a service makes, fetching the data itself changes none of them."""
    compared = 0
    for service in (s for s in services if s["hook"] == hook):
        for example in ehr.ids:
            context = hook_context(hook, ehr, example)
            prefetch = fetch_prefetch(ehr, service, context)
            full = normalise(call(client, ehr, service, context, prefetch))
            none = normalise(call(client, ehr, service, context, None))
            assert none == full, f"{service['id']} / {example}: fallback differs from prefetch"
            for key in prefetch:  # partial: one key sent, the others fetched
                partial = normalise(call(client, ehr, service, context, {key: prefetch[key]}))
                assert partial == full, f"{service['id']} / {example}: only {key!r} sent"
            compared += 1
    assert compared >= len(ehr.ids)


def observations(ehr: Ehr, patient_id: str) -> dict[str, Any]:
    status, bundle = http_json("GET", f"{ehr.base}/Observation?patient={patient_id}&_count=100")
    assert status == 200 and bundle["resourceType"] == "Bundle"
    return bundle


def answers(qr: dict[str, Any], link_id: str) -> list[Any]:
    found: list[Any] = []

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            if item.get("linkId") == link_id:
                found.extend(item.get("answer", []))
            walk(item.get("item", []))
            for answer in item.get("answer", []):
                walk(answer.get("item", []))

    walk(qr.get("item", []))
    return found


@pytest.mark.parametrize(
    ("example", "pain", "pregnancy"),
    [
        ("rf01-neck-injury", 7, None),  # latest of 4 and 7; the 9 is older than 30 days
        ("pregnant-nocturnal-cramps", 6, "77386006"),
        ("post-stroke-spasticity", None, None),  # no Observation at all
    ],
)
def test_populate_with_patient_data_from_sekmet(
    client: TestClient, ehr: Ehr, example: str, pain: int | None, pregnancy: str | None
) -> None:
    patient_id = ehr.ids[example]["Patient"]
    data = observations(ehr, patient_id)
    subject = {"name": "subject", "valueReference": {"reference": f"Patient/{patient_id}"}}
    forms = [
        [{"name": "data", "resource": data}],
        [
            {
                "name": "context",
                "part": [
                    {"name": "name", "valueString": "patient"},
                    {"name": "content", "resource": data},
                ],
            }
        ],
    ]
    for form in forms:
        response = client.post(
            "/fhir/Questionnaire/muscle-spasm-assessment/$populate",
            json={"resourceType": "Parameters", "parameter": [subject, *form]},
            headers={"Content-Type": "application/fhir+json"},
        )
        assert response.status_code == 200, response.text
        qr = next(p["resource"] for p in response.json()["parameter"] if p["name"] == "response")
        assert qr["status"] == "in-progress"
        assert qr["subject"] == {"reference": f"Patient/{patient_id}"}
        got_pain = [a.get("valueInteger") for a in answers(qr, "pain-nrs")]
        assert got_pain == ([] if pain is None else [pain])
        got_pregnancy = [a["valueCoding"]["code"] for a in answers(qr, "pregnancy")]
        assert got_pregnancy == ([] if pregnancy is None else [pregnancy])


def test_apply_with_patient_data_from_sekmet(client: TestClient, ehr: Ehr) -> None:
    """``$apply`` of RF-01 on the Conditions SEKMET holds: the RequestGroup has its action."""
    patient_id = ehr.ids["rf01-neck-injury"]["Patient"]
    status, conditions = http_json("GET", f"{ehr.base}/Condition?patient={patient_id}")
    assert status == 200
    response = client.post(
        "/fhir/PlanDefinition/rf-01/$apply",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "subject", "valueString": f"Patient/{patient_id}"},
                {"name": "data", "resource": conditions},
            ],
        },
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 200, response.text
    care_plan = response.json()
    assert care_plan["resourceType"] == "CarePlan"
    assert care_plan["subject"] == {"reference": f"Patient/{patient_id}"}
    group = next(r for r in care_plan["contained"] if r["resourceType"] == "RequestGroup")
    assert [a["code"][0]["coding"][0]["code"] for a in group.get("action", [])] == ["RF-01"]
    # and the same operation finds nothing for a patient without an injury
    other = ehr.ids["post-stroke-spasticity"]["Patient"]
    status, conditions = http_json("GET", f"{ehr.base}/Condition?patient={other}")
    response = client.post(
        "/fhir/PlanDefinition/rf-01/$apply",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "subject", "valueString": f"Patient/{other}"},
                {"name": "data", "resource": conditions},
            ],
        },
        headers={"Content-Type": "application/fhir+json"},
    )
    group = next(r for r in response.json()["contained"] if r["resourceType"] == "RequestGroup")
    assert not group.get("action")


# --------------------------------------------------------------------------------------------
# A second SEKMET that answers with absolute references (as Firely does)


@pytest.fixture(scope="module")
def absolute_ehr(sekmet_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ehr]:
    yield from start_ehr(
        tmp_path_factory.mktemp("sekmet-absolute"), sekmet_bin, absolute_references=True
    )


def test_rf01_with_absolute_references(
    absolute_ehr: Ehr, tmp_path_factory: pytest.TempPathFactory
) -> None:
    patient_id = absolute_ehr.ids["rf01-neck-injury"]["Patient"]
    status, conditions = http_json("GET", f"{absolute_ehr.base}/Condition?patient={patient_id}")
    assert status == 200
    assert conditions["entry"][0]["resource"]["subject"]["reference"].startswith("http://")
    app = make_app(tmp_path_factory.mktemp("app-abs"), fhir_server_allowlist=(absolute_ehr.origin,))
    with TestClient(app) as client:
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": absolute_ehr.base,
            "context": {"userId": "Practitioner/example", "patientId": patient_id},
        }
        response = client.post("/cds-services/muscle-spasm-patient-view", json=body)
    assert response.status_code == 200, response.text
    assert "RF-01" in rule_ids(response.json()["cards"])


# --------------------------------------------------------------------------------------------
# A lenient server: SEKMET 0.1.1 ignores `patient` on QuestionnaireResponse searches


LEAK_BUNDLE = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:8d1c0f7e-0000-4000-8000-000000000001",
            "resource": {"resourceType": "Patient", "name": [{"family": "Target"}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "fullUrl": "urn:uuid:8d1c0f7e-0000-4000-8000-000000000002",
            "resource": {"resourceType": "Patient", "name": [{"family": "Other"}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {  # the target has a recent neck injury and no spasm on record
            "fullUrl": "urn:uuid:8d1c0f7e-0000-4000-8000-000000000003",
            "resource": {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "90460009"}]},
                "subject": {"reference": "urn:uuid:8d1c0f7e-0000-4000-8000-000000000001"},
                "onsetDateTime": "2026-11-20",
            },
            "request": {"method": "POST", "url": "Condition"},
        },
        {  # someone else's completed assessment (spasm evidence for *them*)
            "fullUrl": "urn:uuid:8d1c0f7e-0000-4000-8000-000000000004",
            "resource": {
                "resourceType": "QuestionnaireResponse",
                "questionnaire": Q_URL,
                "status": "completed",
                "subject": {"reference": "urn:uuid:8d1c0f7e-0000-4000-8000-000000000002"},
                "authored": "2026-11-30T08:00:00Z",
                "item": [{"linkId": "pain-nrs", "answer": [{"valueInteger": 4}]}],
            },
            "request": {"method": "POST", "url": "QuestionnaireResponse"},
        },
    ],
}


def test_other_patients_data_from_a_lenient_server_makes_no_card(
    sekmet_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.integration._servers import load_transaction, sekmet_server

    with sekmet_server(tmp_path_factory.mktemp("sekmet-lenient"), sekmet_bin) as server:
        made = load_transaction(server.base, LEAK_BUNDLE)
        target = made["urn:uuid:8d1c0f7e-0000-4000-8000-000000000001"].split("/")[1]
        # the premise: the server ignores `patient` here and returns the other patient's QR
        status, found = http_json("GET", f"{server.base}/QuestionnaireResponse?patient={target}")
        assert status == 200 and found["total"] == 1
        assert found["entry"][0]["resource"]["subject"]["reference"] != f"Patient/{target}"
        origin = server.base.rsplit("/fhir", 1)[0]
        app = make_app(tmp_path_factory.mktemp("app-lenient"), fhir_server_allowlist=(origin,))
        with TestClient(app) as client:
            body = {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": server.base,
                "context": {"userId": "Practitioner/example", "patientId": target},
            }
            response = client.post("/cds-services/muscle-spasm-patient-view", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}
