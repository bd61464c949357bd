"""$extract engine: Observation-based and template-based extraction (SDC)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.sdc.questionnaire_extract import extract, extract_with_issues
from fhir_service.fhir import validate_resource

DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SCT = "http://snomed.info/sct"
LOCAL = "http://example.org/fhir/muscle-spasm/CodeSystem/muscle-spasm-assessment"
SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition"
PAIN_DISPLAY = "Pain severity - 0-10 verbal numeric rating [Score] - Reported"


@pytest.fixture(scope="module")
def questionnaire() -> dict[str, Any]:
    path = DEFINITIONS / "Questionnaire-muscle-spasm-assessment.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(counter):012d}"


def qr(items: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment|0.1.0",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-12-01T10:00:00Z",
        "item": items,
        **fields,
    }


def answer(link_id: str, *values: dict[str, Any]) -> dict[str, Any]:
    return {"linkId": link_id, "answer": list(values)}


def coding(system: str, code: str) -> dict[str, Any]:
    return {"valueCoding": {"system": system, "code": code}}


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


def test_nothing_to_extract(questionnaire: dict[str, Any]) -> None:
    bundle = extract(questionnaire, qr([answer("swelling", {"valueBoolean": True})]), NOW, ids())
    assert bundle == {"resourceType": "Bundle", "type": "transaction", "entry": []}
    validate_resource(bundle)


def test_pain_observation(questionnaire: dict[str, Any]) -> None:
    response = qr(
        [{"linkId": "symptoms", "item": [answer("pain-nrs", {"valueInteger": 8})]}],
        id="qr-1",
        encounter={"reference": "Encounter/e1"},
        author={"reference": "Practitioner/dr"},
        basedOn=[{"reference": "ServiceRequest/sr"}],
    )
    bundle = extract(questionnaire, response, NOW, ids())
    validate_resource(bundle)
    assert bundle["entry"] == [
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
            "resource": {
                "resourceType": "Observation",
                "basedOn": [{"reference": "ServiceRequest/sr"}],
                "status": "final",
                "code": {
                    "coding": [
                        {
                            "system": "http://loinc.org",
                            "code": "72514-3",
                            "display": PAIN_DISPLAY,
                        }
                    ]
                },
                "subject": {"reference": "Patient/p1"},
                "encounter": {"reference": "Encounter/e1"},
                "effectiveDateTime": "2026-12-01T10:00:00Z",
                "issued": "2026-12-01T10:00:00Z",
                "performer": [{"reference": "Practitioner/dr"}],
                "valueInteger": 8,
                "derivedFrom": [{"reference": "QuestionnaireResponse/qr-1"}],
            },
            "request": {"method": "POST", "url": "Observation"},
        }
    ]


def test_pregnancy_observation_and_answers_at_top_level(questionnaire: dict[str, Any]) -> None:
    response = qr([answer("pregnancy", coding(SCT, "60001007"))])
    [obs] = resources(extract(questionnaire, response, NOW, ids()))
    assert obs["code"]["coding"][0]["code"] == "82810-3"
    assert obs["valueCodeableConcept"] == {"coding": [{"system": SCT, "code": "60001007"}]}
    assert "derivedFrom" not in obs


def test_injury_conditions(questionnaire: dict[str, Any]) -> None:
    response = qr(
        [
            {
                "linkId": "context",
                "item": [
                    answer(
                        "recent-injury",
                        coding(SCT, "82271004"),
                        coding(LOCAL, "none"),
                        coding(SCT, "712893003"),
                    ),
                    answer("injury-date", {"valueDate": "2026-11-28"}),
                ],
            }
        ]
    )
    bundle = extract(questionnaire, response, NOW, ids())
    validate_resource(bundle)
    conditions = resources(bundle)
    assert [c["code"]["coding"][0]["code"] for c in conditions] == ["82271004", "712893003"]
    assert conditions[0] == {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "provisional",
                }
            ]
        },
        "code": {"coding": [{"system": SCT, "code": "82271004"}]},
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2026-11-28",
        "recordedDate": "2026-12-01T10:00:00Z",
    }
    assert [e["request"] for e in bundle["entry"]] == [{"method": "POST", "url": "Condition"}] * 2
    assert len({e["fullUrl"] for e in bundle["entry"]}) == 2


def test_injury_none_and_no_date(questionnaire: dict[str, Any]) -> None:
    none = qr([answer("recent-injury", coding(LOCAL, "none"))])
    assert resources(extract(questionnaire, none, NOW, ids())) == []
    undated = qr([answer("recent-injury", coding(SCT, "90460009"))])
    [condition] = resources(extract(questionnaire, undated, NOW, ids()))
    assert "onsetDateTime" not in condition


def test_full_order_and_missing_authored(questionnaire: dict[str, Any]) -> None:
    response = qr(
        [
            answer("pregnancy", coding(SCT, "77386006")),
            answer("recent-injury", coding(SCT, "90460009")),
            answer("pain-nrs", {"valueInteger": 3}),
        ]
    )
    del response["authored"]
    bundle, issues = extract_with_issues(questionnaire, response, NOW, ids())
    assert issues == []
    assert [(r["resourceType"], r.get("issued")) for r in resources(bundle)] == [
        ("Observation", "2026-12-01T12:00:00Z"),
        ("Condition", None),
        ("Observation", "2026-12-01T12:00:00Z"),
    ]


def test_disabled_answers_are_not_extracted(questionnaire: dict[str, Any]) -> None:
    q = {
        **questionnaire,
        "item": [
            {
                **questionnaire["item"][1]["item"][0],
                "enableWhen": [{"question": "gate", "operator": "exists", "answerBoolean": True}],
            }
        ],
    }
    assert resources(extract(q, qr([answer("pain-nrs", {"valueInteger": 3})]), NOW, ids())) == []


def test_response_without_subject_gives_invalid_condition(questionnaire: dict[str, Any]) -> None:
    response = qr([answer("recent-injury", coding(SCT, "90460009"))])
    del response["subject"]
    bundle, issues = extract_with_issues(questionnaire, response, NOW, ids())
    assert len(bundle["entry"]) == 1
    assert [i.code for i in issues] == ["business-rule"]
    assert "Condition is not valid R4" in (issues[0].diagnostics or "")


# ---- the engine is generic: synthetic Questionnaires


def flagged(value: bool) -> dict[str, Any]:
    return {"url": f"{SDC}/sdc-questionnaire-observationExtract", "valueBoolean": value}


def test_observation_flags_units_categories_and_value_types() -> None:
    category = {
        "url": f"{SDC}/sdc-questionnaire-observation-extract-category",
        "valueCodeableConcept": {"coding": [{"code": "survey"}]},
    }
    q = {
        "resourceType": "Questionnaire",
        "extension": [flagged(True), category],
        "item": [
            {
                "linkId": "weight",
                "type": "decimal",
                "code": [{"code": "w"}],
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/questionnaire-unit",
                        "valueCoding": {"system": "http://unitsofmeasure.org", "code": "kg"},
                    }
                ],
            },
            {"linkId": "ratio", "type": "decimal", "code": [{"code": "r"}]},
            {"linkId": "day", "type": "date", "code": [{"code": "d"}]},
            {
                "linkId": "codes",
                "type": "string",
                "code": [{"code": "a", "extension": [flagged(True)]}, {"code": "b"}],
            },
            {
                "linkId": "off",
                "type": "group",
                "extension": [flagged(False)],
                "item": [{"linkId": "inner", "type": "string", "code": [{"code": "i"}]}],
            },
            {"linkId": "uncoded", "type": "string"},
            {"linkId": "file", "type": "attachment", "code": [{"code": "f"}]},
        ],
    }
    response = qr(
        [
            answer("weight", {"valueDecimal": 70.5}),
            answer("ratio", {"valueDecimal": 0.5}),
            answer("day", {"valueDate": "2026-11-01"}),
            answer("codes", {"valueString": "x"}, {"valueString": "y"}),
            answer("inner", {"valueString": "no"}),
            answer("uncoded", {"valueString": "no"}),
            answer("file", {"valueAttachment": {"contentType": "text/plain"}}),
        ],
        author={"reference": "Device/d1"},
    )
    bundle, issues = extract_with_issues(q, response, NOW, ids())
    obs = resources(bundle)
    assert [o["code"]["coding"] for o in obs] == [
        [{"code": "w"}],
        [{"code": "r"}],
        [{"code": "d"}],
        [{"code": "a"}],
        [{"code": "a"}],
    ]
    assert obs[0]["valueQuantity"] == {
        "value": 70.5,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    assert obs[1]["valueQuantity"] == {"value": 0.5}
    assert obs[2]["valueDateTime"] == "2026-11-01"
    assert [o["valueString"] for o in obs[3:]] == ["x", "y"]
    assert all(o["category"] == [{"coding": [{"code": "survey"}]}] for o in obs)
    assert all("performer" not in o for o in obs)
    assert [i.code for i in issues] == ["not-supported"]


TEMPLATE_CONTEXT = f"{SDC}/sdc-questionnaire-templateExtractContext"
TEMPLATE_VALUE = f"{SDC}/sdc-questionnaire-templateExtractValue"


def directive(url: str, expression: str) -> dict[str, Any]:
    return {"extension": [{"url": url, "valueString": expression}]}


def test_root_template_with_nested_contexts_and_primitives() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "tpl",
        "extension": [
            {"url": "http://example.org/keep", "valueString": "kept"},
        ],
        "active": True,
        "name": [
            {
                **directive(TEMPLATE_CONTEXT, "%resource.descendants().where(linkId = 'name')"),
                "_family": directive(TEMPLATE_VALUE, "item.where(linkId = 'family').answer.value"),
                "_given": [directive(TEMPLATE_VALUE, "item.where(linkId = 'given').answer.value")],
            }
        ],
        "_birthDate": directive(
            TEMPLATE_VALUE, "%resource.descendants().where(linkId = 'born').answer.value"
        ),
        "telecom": [
            directive(TEMPLATE_VALUE, "%resource.descendants().where(linkId = 'none').answer.value")
        ],
        "gender": "unknown",
        "_gender": {"id": "plain"},
        "managingOrganization": directive(TEMPLATE_VALUE, "{}"),
    }
    q = {
        "resourceType": "Questionnaire",
        "contained": [patient],
        "extension": [
            {
                "url": f"{SDC}/sdc-questionnaire-templateExtract",
                "extension": [{"url": "template", "valueReference": {"reference": "#tpl"}}],
            }
        ],
        "item": [],
    }
    response = qr(
        [
            {
                "linkId": "name",
                "item": [
                    answer("family", {"valueString": "Doe"}),
                    answer("given", {"valueString": "Jo"}, {"valueString": "Ann"}),
                ],
            },
            {"linkId": "name", "item": [answer("family", {"valueString": "Roe"})]},
            answer("born", {"valueDate": "1970-01-01"}),
        ]
    )
    bundle, issues = extract_with_issues(q, response, NOW, ids())
    assert issues == []
    [made] = resources(bundle)
    assert made == {
        "resourceType": "Patient",
        "extension": [{"url": "http://example.org/keep", "valueString": "kept"}],
        "active": True,
        "name": [{"family": "Doe", "given": ["Jo", "Ann"]}, {"family": "Roe"}],
        "birthDate": "1970-01-01",
        "gender": "unknown",
        "_gender": {"id": "plain"},
    }
    assert q["contained"][0]["id"] == "tpl"  # the template itself is untouched


def test_template_problems_are_issues() -> None:
    def q_with(ref: str, contained: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "resourceType": "Questionnaire",
            "contained": contained,
            "item": [
                {
                    "linkId": "a",
                    "type": "string",
                    "extension": [
                        {
                            "url": f"{SDC}/sdc-questionnaire-templateExtract",
                            "extension": [
                                {"url": "template", "valueReference": {"reference": ref}}
                            ],
                        }
                    ],
                }
            ],
        }

    response = qr([answer("a", {"valueString": "x"})])
    _, issues = extract_with_issues(q_with("#missing", []), response, NOW, ids())
    assert [i.code for i in issues] == ["not-found"]
    broken = {
        "resourceType": "Basic",
        "id": "b",
        "code": {"text": "t"},
        "_created": directive(TEMPLATE_VALUE, "'x"),
    }
    bundle, issues = extract_with_issues(q_with("#b", [broken]), response, NOW, ids())
    assert [i.code for i in issues] == ["processing"]
    assert resources(bundle) == [{"resourceType": "Basic", "code": {"text": "t"}}]
