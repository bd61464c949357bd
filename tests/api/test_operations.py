"""``PlanDefinition/$apply``, ``PlanDefinition/$apply?url=``, ``ActivityDefinition/$apply``.

Contract "FHIR R4 REST": subject required (400), unknown id/url 404, CarePlan draft/proposal
with ``instantiatesCanonical`` and an activity referencing a contained RequestGroup; resources
with ``status`` ``draft`` in ``data`` are the orders being decided. Engine faults are reported
in a contained OperationOutcome named by ``cqf-messages`` and never fail the call. The last
section proves the event loop stays free while hook calls are evaluated.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.operationoutcome import OperationOutcome

from fhir_service.cds import invoke
from fhir_service.fhir import validate_resource
from tests.conftest import DEFAULT_NOW, make_app

FHIR_JSON = "application/fhir+json"
CANONICAL = "http://example.org/fhir/muscle-spasm"
RF01_URL = f"{CANONICAL}/PlanDefinition/rf-01"
CQF_MESSAGES = "http://hl7.org/fhir/StructureDefinition/cqf-messages"
SCT = "http://snomed.info/sct"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MINI = Path(__file__).resolve().parent.parent / "fixtures" / "definitions-mini"
DEFINITIONS = Path(__file__).resolve().parent.parent.parent / "definitions"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path_factory.mktemp("ops"))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = make_app(tmp_path_factory.mktemp("ops-mini"), definitions_dir=MINI)
    with TestClient(app) as test_client:
        yield test_client


# --- builders -----------------------------------------------------------------------------


def day(days_ago: int) -> str:
    return (DEFAULT_NOW - timedelta(days=days_ago)).date().isoformat()


def condition(cid: str, code: str, days_ago: int, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
        "code": {"coding": [{"system": SCT, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": day(days_ago),
    }


def spasm(days_ago: int = 3) -> dict[str, Any]:
    return condition("c-spasm", "45352006", days_ago)


def neck_injury(days_ago: int = 20) -> dict[str, Any]:
    return condition("c-injury", "90460009", days_ago, "resolved")


def medication_request(mid: str, status: str, code: str = "828348") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": day(1),
        "dispenseRequest": {"expectedSupplyDuration": {"value": 30, "unit": "days"}},
    }


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


def parameters(
    *resources: dict[str, Any],
    subject: str | None = "Patient/p1",
    overrides: dict[str, Any] | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if subject is not None:
        parts.append({"name": "subject", "valueString": subject})
    if resources:
        parts.append({"name": "data", "resource": bundle(*resources)})
    if overrides:
        inner = [{"name": k, **v} for k, v in overrides.items()]
        parts.append(
            {"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": inner}}
        )
    parts += extra or []
    return {"resourceType": "Parameters", "parameter": parts}


def post(client: TestClient, path: str, body: Any, content_type: str = FHIR_JSON) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"Content-Type": content_type})


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = response.json()
    return body


def outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    OperationOutcome.model_validate(body)
    return body


def care_plan(body: dict[str, Any], subject: str = "Patient/p1") -> dict[str, Any]:
    """Check the contract shape of an ``$apply`` CarePlan; return its RequestGroup."""
    CarePlan.model_validate(body)
    assert body["resourceType"] == "CarePlan"
    assert body["status"] == "draft"
    assert body["intent"] == "proposal"
    assert body["subject"] == {"reference": subject}
    contained = {r["id"]: r for r in body["contained"]}
    assert len(contained) == len(body["contained"]), "contained ids are unique"
    reference = body["activity"][0]["reference"]["reference"]
    assert reference.startswith("#")
    group = contained[reference[1:]]
    assert group["resourceType"] == "RequestGroup"
    assert group["status"] == "draft"
    assert group["intent"] == "proposal"
    assert group["subject"] == {"reference": subject}
    assert group["instantiatesCanonical"] == body["instantiatesCanonical"]
    for resource in body["contained"]:
        validate_resource(resource)
        if "instantiatesCanonical" in resource:  # created (not a changed copy of a draft)
            assert resource["status"] == "draft"
            if resource["resourceType"] not in ("CommunicationRequest",):  # no intent in R4
                assert resource["intent"] == "proposal"
    for action in _walk(group.get("action", [])):
        ref = action.get("resource", {}).get("reference", "")
        if ref.startswith("#"):
            assert ref[1:] in contained, f"{ref} does not resolve within the CarePlan"
    return group


def _walk(actions: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for action in actions:
        yield action
        yield from _walk(action.get("action", []))


def action_ids(group: dict[str, Any]) -> list[str]:
    return [a.get("id", "") for a in group.get("action", [])]


def messages(body: dict[str, Any]) -> dict[str, Any] | None:
    """The OperationOutcome the ``cqf-messages`` extension names, if any."""
    for ext in body.get("extension", []):
        if ext["url"] == CQF_MESSAGES:
            ref = ext["valueReference"]["reference"]
            found = [r for r in body["contained"] if f"#{r['id']}" == ref]
            assert len(found) == 1
            assert found[0]["resourceType"] == "OperationOutcome"
            OperationOutcome.model_validate(found[0])
            return found[0]
    return None


# --- PlanDefinition/{id}/$apply -------------------------------------------------------------


def test_get_apply_with_subject_only(client: TestClient) -> None:
    body = ok(client.get("/fhir/PlanDefinition/rf-01/$apply?subject=Patient/p1"))
    group = care_plan(body)
    assert body["instantiatesCanonical"] == [f"{RF01_URL}|0.1.0"]
    assert "action" not in group
    assert messages(body) is None


def test_post_apply_applicable_patient(client: TestClient) -> None:
    body = ok(post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(spasm(), neck_injury())))
    group = care_plan(body)
    assert action_ids(group) == ["rf-01"]
    action = group["action"][0]
    assert action["code"][0]["coding"][0]["code"] == "RF-01"
    assert action["priority"] == "urgent"
    assert action["title"]


def test_post_apply_non_applicable_patient(client: TestClient) -> None:
    body = ok(post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(spasm())))
    assert "action" not in care_plan(body)


def test_every_action_is_evaluated_whatever_its_trigger(mini: TestClient) -> None:
    # a-error is triggered by order-sign and a-fires by patient-view: $apply evaluates both
    body = ok(post(mini, "/fhir/PlanDefinition/mini-rule/$apply", parameters(spasm())))
    assert {"a-fires", "a-always"} <= set(action_ids(care_plan(body)))


def test_subject_forms(client: TestClient) -> None:
    for query, subject in (("p7", "Patient/p7"), ("Patient/p7", "Patient/p7")):
        body = ok(client.get(f"/fhir/PlanDefinition/rf-01/$apply?subject={query}"))
        care_plan(body, subject)
    reference = {"name": "subject", "valueReference": {"reference": "Patient/p8"}}
    body = ok(
        post(
            client, "/fhir/PlanDefinition/rf-01/$apply", parameters(subject=None, extra=[reference])
        )
    )
    care_plan(body, "Patient/p8")


def test_encounter_and_practitioner_are_carried(client: TestClient) -> None:
    body = ok(
        client.get(
            "/fhir/PlanDefinition/rf-01/$apply?subject=Patient/p1"
            "&encounter=Encounter/e1&practitioner=Practitioner/dr"
        )
    )
    assert body["encounter"] == {"reference": "Encounter/e1"}
    assert body["author"] == {"reference": "Practitioner/dr"}


# --- PlanDefinition/$apply?url= -----------------------------------------------------------


def test_type_level_get_by_url_with_and_without_version(client: TestClient) -> None:
    plain = ok(client.get(f"/fhir/PlanDefinition/$apply?url={RF01_URL}&subject=Patient/p1"))
    care_plan(plain)
    versioned = ok(
        client.get(f"/fhir/PlanDefinition/$apply?url={RF01_URL}&version=0.1.0&subject=Patient/p1")
    )
    assert versioned["instantiatesCanonical"] == plain["instantiatesCanonical"]
    piped = ok(client.get(f"/fhir/PlanDefinition/$apply?url={RF01_URL}|0.1.0&subject=Patient/p1"))
    care_plan(piped)


def test_type_level_post_by_url(client: TestClient) -> None:
    url = {"name": "url", "valueUri": RF01_URL}
    version = {"name": "version", "valueString": "0.1.0"}
    for extra in ([url], [url, version]):
        body = ok(
            post(
                client,
                "/fhir/PlanDefinition/$apply",
                parameters(spasm(), neck_injury(), extra=extra),
            )
        )
        assert action_ids(care_plan(body)) == ["rf-01"]
    # url and version on the query string of a POST
    body = ok(
        post(
            client,
            f"/fhir/PlanDefinition/$apply?url={RF01_URL}&version=0.1.0",
            parameters(spasm(), neck_injury()),
        )
    )
    assert action_ids(care_plan(body)) == ["rf-01"]
    outcome(
        post(client, f"/fhir/PlanDefinition/$apply?url={RF01_URL}&version=2.0", parameters()), 404
    )


def test_type_level_errors(client: TestClient) -> None:
    outcome(client.get("/fhir/PlanDefinition/$apply?subject=Patient/p1"), 400)
    outcome(
        client.get(f"/fhir/PlanDefinition/$apply?url={CANONICAL}/PlanDefinition/nope&subject=p1"),
        404,
    )
    outcome(client.get(f"/fhir/PlanDefinition/$apply?url={RF01_URL}&version=9&subject=p1"), 404)
    # a canonical of another type is not a PlanDefinition
    vs = f"{CANONICAL}/ValueSet/vs-spasm-family"
    outcome(client.get(f"/fhir/PlanDefinition/$apply?url={vs}&subject=p1"), 404)


# --- errors -------------------------------------------------------------------------------


def test_unknown_id_is_404(client: TestClient) -> None:
    outcome(client.get("/fhir/PlanDefinition/nope/$apply?subject=Patient/p1"), 404)
    outcome(post(client, "/fhir/PlanDefinition/nope/$apply", parameters()), 404)
    outcome(client.get("/fhir/ActivityDefinition/nope/$apply?subject=Patient/p1"), 404)


def test_missing_subject_is_400(client: TestClient) -> None:
    body = outcome(client.get("/fhir/PlanDefinition/rf-01/$apply"), 400)
    assert body["issue"][0]["expression"] == ["subject"]
    outcome(client.get("/fhir/PlanDefinition/rf-01/$apply?subject="), 400)
    outcome(
        post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(spasm(), subject=None)), 400
    )
    outcome(client.get("/fhir/ActivityDefinition/ad-pt-referral/$apply"), 400)
    outcome(
        post(client, "/fhir/ActivityDefinition/ad-pt-referral/$apply", parameters(subject=None)),
        400,
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"resourceType": "Patient", "id": "p1"}, "Parameters"),
        ([{"name": "subject"}], "Parameters"),
        ({"resourceType": "Parameters", "parameter": "subject"}, "array"),
        ({"resourceType": "Parameters", "parameter": [{"valueString": "x"}]}, "name"),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "subject", "valueString": "Patient/p1"},
                    {"name": "subject", "valueString": "Patient/p2"},
                ],
            },
            "only once",
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "subject", "valueString": "Patient/p1"},
                    {"name": "data", "resource": {"resourceType": "Patient"}},
                ],
            },
            "Bundle",
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "subject", "valueString": "Patient/p1"},
                    {"name": "data", "valueString": "x"},
                ],
            },
            "Bundle",
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "subject", "valueBoolean": True}],
            },
            "subject",
        ),
    ],
)
def test_bodies_that_are_not_what_apply_takes_are_400(
    client: TestClient, body: Any, words: str
) -> None:
    response = outcome(post(client, "/fhir/PlanDefinition/rf-01/$apply", body), 400)
    assert words in json.dumps(response)


def test_malformed_json_is_400(client: TestClient) -> None:
    outcome(
        post(client, "/fhir/PlanDefinition/rf-01/$apply", b'{"resourceType": "Parameters",'), 400
    )
    outcome(post(client, "/fhir/PlanDefinition/rf-01/$apply", b""), 400)
    outcome(post(client, "/fhir/PlanDefinition/rf-01/$apply", b'{"a": NaN}'), 400)
    outcome(post(client, "/fhir/ActivityDefinition/ad-pt-referral/$apply", b"[1,"), 400)


def test_wrong_content_type_is_415(client: TestClient) -> None:
    body = json.dumps(parameters()).encode()
    for media in ("text/plain", "application/xml", "application/fhir+xml", ""):
        outcome(post(client, "/fhir/PlanDefinition/rf-01/$apply", body, media), 415)
    outcome(post(client, "/fhir/ActivityDefinition/ad-pt-referral/$apply", body, "text/plain"), 415)
    ok(post(client, "/fhir/PlanDefinition/rf-01/$apply", body, "application/json; charset=utf-8"))


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Condition", "id": "c1", "onsetDateTime": 5},
        {"resourceType": "Condition", "id": "c1", "code": "spasm"},
        {"resourceType": "Condition", "id": "c1", "colour": "blue"},
        {"resourceType": "NoSuchType", "id": "x"},
        {"id": "no-type"},
    ],
)
def test_data_that_does_not_parse_as_fhir_is_400(
    client: TestClient, resource: dict[str, Any]
) -> None:
    body = outcome(post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(resource)), 400)
    assert body["issue"][0]["expression"] == ["data.entry[0].resource"]


def test_data_bundle_envelope_errors_are_400(client: TestClient) -> None:
    data = {
        "name": "data",
        "resource": {"resourceType": "Bundle", "type": "collection", "entry": {}},
    }
    outcome(post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(extra=[data])), 400)
    data["resource"]["entry"] = ["x"]  # type: ignore[index]
    outcome(post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(extra=[data])), 400)


def test_non_r4_orders_in_data_are_ignored(client: TestClient) -> None:
    dstu2 = {"resourceType": "MedicationOrder", "id": "mo1", "status": "active"}
    body = ok(
        post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(dstu2, spasm(), neck_injury()))
    )
    assert action_ids(care_plan(body)) == ["rf-01"]


# --- library parameters -------------------------------------------------------------------


@pytest.mark.parametrize(("days", "fires"), [(10, False), (19, False), (20, True), (30, True)])
def test_parameters_override_a_library_parameter(
    client: TestClient, days: int, fires: bool
) -> None:
    body = ok(
        post(
            client,
            "/fhir/PlanDefinition/rf-01/$apply",
            parameters(
                spasm(),
                neck_injury(20),
                overrides={"P_INJURY_LOOKBACK_DAYS": {"valueInteger": days}},
            ),
        )
    )
    assert action_ids(care_plan(body)) == (["rf-01"] if fires else [])


def test_default_lookback_applies_without_override(client: TestClient) -> None:
    for days_ago, fires in ((30, True), (31, False)):
        body = ok(
            post(
                client,
                "/fhir/PlanDefinition/rf-01/$apply",
                parameters(spasm(), neck_injury(days_ago)),
            )
        )
        assert action_ids(care_plan(body)) == (["rf-01"] if fires else []), days_ago


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"P_NOT_A_PARAMETER": {"valueInteger": 1}}, "unknown library parameter"),
        ({"rf01Criteria": {"valueBoolean": True}}, "unknown library parameter"),
        ({"P_INJURY_LOOKBACK_DAYS": {"valueString": "10"}}, "valueInteger"),
        ({"P_INJURY_LOOKBACK_DAYS": {"valueInteger": 1.5}}, "valid Integer"),
        ({"P_INJURY_LOOKBACK_DAYS": {"valueInteger": True}}, "valid Integer"),
        ({"P_INJURY_LOOKBACK_DAYS": {}}, "needs a value"),
    ],
)
def test_bad_library_parameters_are_400(
    client: TestClient, overrides: dict[str, Any], words: str
) -> None:
    body = outcome(
        post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(spasm(), overrides=overrides)),
        400,
    )
    assert words in body["issue"][0]["diagnostics"]


def test_parameters_must_be_a_parameters_resource(client: TestClient) -> None:
    extra = [{"name": "parameters", "resource": bundle()}]
    outcome(post(client, "/fhir/PlanDefinition/rf-01/$apply", parameters(extra=extra)), 400)


def test_decimal_parameter_accepts_an_integer(mini: TestClient) -> None:
    for value in ({"valueDecimal": 38.5}, {"valueInteger": 38}):
        ok(
            post(
                mini,
                "/fhir/PlanDefinition/mini-rule/$apply",
                parameters(overrides={"P_LIMIT": value}),
            )
        )
    outcome(
        post(
            mini,
            "/fhir/PlanDefinition/mini-rule/$apply",
            parameters(overrides={"P_LIMIT": {"valueString": "38"}}),
        ),
        400,
    )


def test_fixture_parameter_override_changes_the_result(mini: TestClient) -> None:
    old_spasm = spasm(days_ago=20)
    fired = ok(post(mini, "/fhir/PlanDefinition/mini-rule/$apply", parameters(old_spasm)))
    assert "a-fires" in action_ids(care_plan(fired))
    title = care_plan(fired)["action"][0]["title"]
    assert title == "Spasm within 30 days"
    silenced = ok(
        post(
            mini,
            "/fhir/PlanDefinition/mini-rule/$apply",
            parameters(old_spasm, overrides={"P_DAYS": {"valueInteger": 10}}),
        )
    )
    assert "a-fires" not in action_ids(care_plan(silenced))


# --- run-time failures --------------------------------------------------------------------


def test_a_failing_expression_is_reported_not_raised(mini: TestClient) -> None:
    body = ok(post(mini, "/fhir/PlanDefinition/mini-rule/$apply", parameters(spasm())))
    group = care_plan(body)
    # a-error (condition errors) and a-nonbool (not a boolean) do not apply; the others do
    assert action_ids(group) == ["a-fires", "a-always", "a-nested"]
    issues = messages(body)
    assert issues is not None
    text = json.dumps(issues)
    # the library variable that fails, and the condition that fails, are both named
    assert "Library/mini-common.variable[brokenValue]" in text
    assert "PlanDefinition/mini-rule.PlanDefinition.action[1].condition[0]" in text
    assert "PlanDefinition/mini-rule.PlanDefinition.action[2].condition[0]" in text
    assert "did not return a boolean" in text
    assert any(i["severity"] == "error" for i in issues["issue"])


def test_no_issue_no_outcome(mini: TestClient) -> None:
    # without a spasm, a-nonbool yields empty (not an issue); a-error still fails
    body = ok(mini.get("/fhir/PlanDefinition/mini-nested/$apply?subject=Patient/p1"))
    care_plan(body)
    assert messages(body) is None
    assert [r["resourceType"] for r in body["contained"]] == ["RequestGroup"]


# --- definitionCanonical, nested plans ----------------------------------------------------


def test_created_requests_and_nested_plans_are_contained(mini: TestClient) -> None:
    patient = {"resourceType": "Patient", "id": "p1"}
    body = ok(post(mini, "/fhir/PlanDefinition/mini-rule/$apply", parameters(patient, spasm())))
    group = care_plan(body)
    contained = {r["id"]: r for r in body["contained"]}
    fires = group["action"][0]
    create = fires["action"][0]
    assert create["id"] == "a-fires-create"
    referral = contained[create["resource"]["reference"][1:]]
    assert referral["resourceType"] == "ServiceRequest"
    assert referral["subject"] == {"reference": "Patient/p1"}
    assert referral["instantiatesCanonical"] == [
        f"{CANONICAL}/ActivityDefinition/mini-referral|0.1.0"
    ]
    # ActivityDefinition dynamicValues, then the action's
    assert referral["priority"] == "urgent"
    assert referral["note"] == [{"text": "referral for p1"}]
    assert referral["reasonReference"] == [{"reference": "Condition/c-spasm"}]
    nested_action = group["action"][2]
    nested = contained[nested_action["resource"]["reference"][1:]]
    assert nested["resourceType"] == "RequestGroup"
    assert nested["instantiatesCanonical"] == [f"{CANONICAL}/PlanDefinition/mini-nested|0.1.0"]
    assert [a["id"] for a in nested["action"]] == ["n-educate"]
    education = contained[nested["action"][0]["resource"]["reference"][1:]]
    assert education["resourceType"] == "CommunicationRequest"
    assert education["payload"] == [{"contentString": "Stretch gently."}]


# --- draft orders -------------------------------------------------------------------------


def test_draft_resources_are_the_orders_being_decided(mini: TestClient) -> None:
    draft = medication_request("mr-draft", "draft")
    active = medication_request("mr-active", "active")
    body = ok(post(mini, "/fhir/PlanDefinition/mini-orders/$apply", parameters(draft, active)))
    group = care_plan(body)
    assert action_ids(group) == ["o-drafts", "o-record"]
    decided = group["action"][0]
    assert decided["title"] == "Deciding 1 draft(s); record has 1 order(s)"
    update, remove = decided["action"]
    assert update["id"] == "o-update" and remove["id"] == "o-remove"
    contained = {r["id"]: r for r in body["contained"]}
    assert update["resource"] == {"reference": "#mr-draft"}
    changed = contained["mr-draft"]
    assert changed["dispenseRequest"]["expectedSupplyDuration"]["value"] == 7
    assert changed["note"] == [{"text": "names: 1"}]
    assert remove["resource"] == {"reference": "MedicationRequest/mr-draft"}
    # the input draft was not modified
    assert draft["dispenseRequest"]["expectedSupplyDuration"]["value"] == 30


def test_without_a_draft_no_order_action(mini: TestClient) -> None:
    body = ok(
        post(
            mini,
            "/fhir/PlanDefinition/mini-orders/$apply",
            parameters(medication_request("mr-active", "active")),
        )
    )
    assert action_ids(care_plan(body)) == ["o-record"]
    body = ok(
        post(
            mini,
            "/fhir/PlanDefinition/mini-orders/$apply",
            parameters(medication_request("mr-d", "draft")),
        )
    )
    group = care_plan(body)
    assert action_ids(group) == ["o-drafts"]
    assert group["action"][0]["title"] == "Deciding 1 draft(s); record has 0 order(s)"


# --- ActivityDefinition/{id}/$apply -------------------------------------------------------


def test_activity_apply_get_and_post(client: TestClient) -> None:
    got = ok(client.get("/fhir/ActivityDefinition/ad-pt-referral/$apply?subject=Patient/p1"))
    posted = ok(post(client, "/fhir/ActivityDefinition/ad-pt-referral/$apply", parameters(spasm())))
    for body in (got, posted):
        validate_resource(body)
        assert body["resourceType"] == "ServiceRequest"
        assert body["status"] == "draft"
        assert body["intent"] == "proposal"
        assert body["subject"] == {"reference": "Patient/p1"}
        assert body["instantiatesCanonical"] == [
            f"{CANONICAL}/ActivityDefinition/ad-pt-referral|0.1.0"
        ]


ACTIVITY_DEFINITIONS = sorted(
    p.stem.removeprefix("ActivityDefinition-")
    for p in DEFINITIONS.glob("ActivityDefinition-*.json")
)


@pytest.mark.parametrize("rid", ACTIVITY_DEFINITIONS)
def test_every_activity_definition_applies_to_a_valid_request(client: TestClient, rid: str) -> None:
    body = ok(client.get(f"/fhir/ActivityDefinition/{rid}/$apply?subject=Patient/p1"))
    validate_resource(body)
    ad = json.loads((DEFINITIONS / f"ActivityDefinition-{rid}.json").read_text())
    assert body["resourceType"] == ad["kind"]
    assert body["status"] == "draft"
    if "intent" in body:
        assert body["intent"] == "proposal"
    assert "extension" not in body or all(e["url"] != CQF_MESSAGES for e in body["extension"])


def test_activity_apply_reports_a_failing_dynamic_value(mini: TestClient) -> None:
    body = ok(mini.get("/fhir/ActivityDefinition/mini-broken/$apply?subject=Patient/p1"))
    validate_resource(body)
    assert body["resourceType"] == "Task"
    assert body["priority"] == "routine"  # the dynamicValue after the failing one still applies
    assert body["description"] == "A task"
    issues = messages(body)
    assert issues is not None
    assert "brokenValue" in json.dumps(issues)


# --- output validity ----------------------------------------------------------------------


PLAN_DEFINITIONS = sorted(
    p.stem.removeprefix("PlanDefinition-") for p in DEFINITIONS.glob("PlanDefinition-*.json")
)


@pytest.mark.parametrize("rid", PLAN_DEFINITIONS)
def test_every_plan_definition_applies_to_a_valid_care_plan(client: TestClient, rid: str) -> None:
    data = parameters(
        spasm(),
        neck_injury(),
        medication_request("mr-d", "draft"),
        medication_request("mr-a", "active"),
    )
    body = ok(post(client, f"/fhir/PlanDefinition/{rid}/$apply", data))
    care_plan(body)


# --- the event loop stays free --------------------------------------------------------------


def hundred_resources() -> dict[str, Any]:
    """A patient-view request with 100 resources in its prefetch."""
    conditions = [
        condition(f"c{i}", "45352006" if i % 3 else "90460009", i % 40) for i in range(40)
    ]
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": day(i % 60),
            "valueQuantity": {"value": i % 11, "unit": "{score}"},
        }
        for i in range(30)
    ]
    orders = [
        medication_request(f"m{i}", "active", "828348" if i % 2 else "197361") for i in range(20)
    ]
    services = [
        {
            "resourceType": "ServiceRequest",
            "id": f"s{i}",
            "status": "active",
            "intent": "order",
            "code": {"coding": [{"system": SCT, "code": "308447003"}]},
            "subject": {"reference": "Patient/p1"},
        }
        for i in range(5)
    ]
    procedures = [
        {
            "resourceType": "Procedure",
            "id": f"pr{i}",
            "status": "completed",
            "code": {"coding": [{"system": SCT, "code": "91251008"}]},
            "subject": {"reference": "Patient/p1"},
            "performedDateTime": day(i),
        }
        for i in range(5)
    ]

    def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources],
        }

    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/dr", "patientId": "p1"},
        "prefetch": {
            "conditions": searchset(conditions),
            "observations": searchset(observations),
            "medicationRequests": searchset(orders),
            "serviceRequests": searchset(services),
            "procedures": searchset(procedures),
            "assessments": None,
        },
    }


def test_hundred_resource_request_has_a_hundred_resources() -> None:
    prefetch = hundred_resources()["prefetch"]
    assert sum(len(v["entry"]) for v in prefetch.values() if v) == 100


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_hook_evaluation_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules of a hook call run in a worker thread, never on the loop that serves the
    other requests (discovery, /healthz) meanwhile; the loop only parses, awaits and
    serialises. (A timing probe cannot tell: calls are now shorter than its resolution.)"""
    threads: list[int] = []
    evaluate = invoke.evaluate_service

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(invoke, "evaluate_service", spy)
    transport = httpx.ASGITransport(app=make_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post(
            "/cds-services/muscle-spasm-patient-view", json=hundred_resources()
        )
        assert response.status_code == 200, response.text
        health = await http.get("/healthz")
        assert health.json() == {"status": "ok"}
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()  # the test's loop thread


@pytest.mark.anyio
async def test_hook_evaluation_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Four 100-resource patient-view calls in flight: /healthz still answers at once.

    The rules run in worker threads; the loop only parses, awaits and serialises. A blocked
    loop would hold /healthz until a call ends (hundreds of ms); GIL sharing with the workers
    costs the probe a few ms at most.
    """
    app = make_app(tmp_path)
    request = hundred_resources()
    transport = httpx.ASGITransport(app=app)
    finished: list[float] = []
    during: list[float] = []  # latencies of the probes answered while rules were evaluating
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        warm = await http.post("/cds-services/muscle-spasm-patient-view", json=request)
        assert warm.status_code == 200, warm.text

        async def call() -> None:
            response = await http.post("/cds-services/muscle-spasm-patient-view", json=request)
            assert response.status_code == 200, response.text
            finished.append(time.perf_counter())

        async def probe() -> None:
            # from the moment rules are evaluating in worker threads until the last call ends;
            # a probe counts when rules were evaluating from its start to its answer (a fixed
            # head start, or the first call's end, raced the other calls' parsing on the loop)
            limiter = app.state.runtime.limiter
            while limiter.borrowed_tokens == 0 and not finished:
                await anyio.sleep(0.001)
            while len(finished) < 4:
                evaluating = limiter.borrowed_tokens > 0
                started = time.perf_counter()
                response = await http.get("/healthz")
                done = time.perf_counter()
                assert response.json() == {"status": "ok"}
                if evaluating and limiter.borrowed_tokens > 0:
                    during.append(done - started)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(call)
            group.start_soon(probe)
    assert len(finished) == 4
    assert during, "no /healthz answer came back while the rules were evaluating"
    assert min(during) < 0.1, during


def test_apply_uses_the_pinned_clock(mini: TestClient) -> None:
    # 30 days before the pinned now is in the window, 31 is not: the wall clock is never read
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert now == DEFAULT_NOW
    inside = ok(post(mini, "/fhir/PlanDefinition/mini-nested/$apply", parameters(spasm(30))))
    outside = ok(post(mini, "/fhir/PlanDefinition/mini-nested/$apply", parameters(spasm(31))))
    assert action_ids(care_plan(inside)) == ["n-educate"]
    assert action_ids(care_plan(outside)) == []
