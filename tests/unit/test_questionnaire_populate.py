"""$populate engine: expression-based population driven by the Questionnaire (SDC)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.data.patient_data import to_json
from fhir_service.engine.fhirpath import FhirPathCompiler, fhir_date, quantity
from fhir_service.engine.sdc.questionnaire_populate import (
    compile_questionnaire,
    fhir_instant,
    populate,
    to_answer,
)
from fhir_service.engine.sdc.questionnaire_response import find_answers

DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
SUBJECT = {"reference": "Patient/p1"}
COMPILER = FhirPathCompiler()


@pytest.fixture(scope="module")
def questionnaire() -> dict[str, Any]:
    path = DEFINITIONS / "Questionnaire-muscle-spasm-assessment.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def obs(oid: str, code: str, status: str = "final", **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": SUBJECT,
        **fields,
    }


def pain(oid: str, when: str, value: Any = 5, **fields: Any) -> dict[str, Any]:
    key = "valueQuantity" if isinstance(value, dict) else "valueInteger"
    return obs(oid, "72514-3", effectiveDateTime=when, **{key: value}, **fields)


def preg(oid: str, when: str, code: str, **fields: Any) -> dict[str, Any]:
    value = {"coding": [{"system": SCT, "code": code}]}
    return obs(oid, "82810-3", effectiveDateTime=when, valueCodeableConcept=value, **fields)


def run(questionnaire: dict[str, Any], resources: list[dict[str, Any]]) -> tuple[Any, Any]:
    compiled = compile_questionnaire(questionnaire, COMPILER)
    return populate(questionnaire, compiled, SUBJECT, resources, NOW)


def pain_of(questionnaire: dict[str, Any], resources: list[dict[str, Any]]) -> list[Any]:
    return find_answers(run(questionnaire, resources)[0], "pain-nrs")


def test_shape_without_data(questionnaire: dict[str, Any]) -> None:
    response, issues = run(questionnaire, [])
    assert response == {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": f"{questionnaire['url']}|0.1.0",
        "status": "in-progress",
        "subject": SUBJECT,
        "authored": "2026-12-01T12:00:00Z",
    }
    assert issues == []


def test_both_items_nested_in_their_groups(questionnaire: dict[str, Any]) -> None:
    response, issues = run(
        questionnaire,
        [
            {"resourceType": "Patient", "id": "p1"},
            pain("a", "2026-11-20", 6),
            preg("b", "2026-06-01", "77386006"),
        ],
    )
    assert issues == []
    assert response["item"] == [
        {
            "linkId": "symptoms",
            "text": "Associated symptoms",
            "item": [
                {
                    "linkId": "pain-nrs",
                    "text": "Pain at worst, 0–10",
                    "answer": [{"valueInteger": 6}],
                }
            ],
        },
        {
            "linkId": "context",
            "text": "History / context",
            "item": [
                {
                    "linkId": "pregnancy",
                    "text": "Currently pregnant?",
                    "answer": [
                        {"valueCoding": {"system": SCT, "code": "77386006", "display": "Pregnant"}}
                    ],
                }
            ],
        },
    ]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2026-11-01", [5]),  # exactly 30 days back: inside
        ("2026-10-31", []),  # 31 days back: outside
        ("2026-11-01T00:00:00Z", [5]),
        ("2026-12-01T23:00:00Z", [5]),  # later today
        ("2026-12-02", []),  # in the future
    ],
)
def test_pain_window(questionnaire: dict[str, Any], when: str, expected: list[Any]) -> None:
    assert pain_of(questionnaire, [pain("a", when)]) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("final", [5]),
        ("amended", [5]),
        ("corrected", [5]),
        ("preliminary", []),
        ("entered-in-error", []),
        ("cancelled", []),
        ("registered", []),
    ],
)
def test_only_valid_observations(
    questionnaire: dict[str, Any], status: str, expected: list[Any]
) -> None:
    assert pain_of(questionnaire, [pain("a", "2026-11-20", status=status)]) == expected


def test_invalid_later_observation_does_not_hide_a_valid_one(questionnaire: dict[str, Any]) -> None:
    resources = [
        pain("old", "2026-11-10", 3),
        pain("err", "2026-11-30", 9, status="entered-in-error"),
        pain("pre", "2026-11-29", 8, status="preliminary"),
    ]
    assert pain_of(questionnaire, resources) == [3]


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        # by effective[x]
        ([pain("a", "2026-11-20", 2), pain("b", "2026-11-25", 7)], [7]),
        ([pain("b", "2026-11-25", 7), pain("a", "2026-11-20", 2)], [7]),
        # time zones are compared as instants
        (
            [pain("a", "2026-11-25T08:00:00+02:00", 1), pain("b", "2026-11-25T07:00:00Z", 2)],
            [2],
        ),
        # equal effective: issued decides
        (
            [
                pain("a", "2026-11-25T08:00:00Z", 1, issued="2026-11-25T10:00:00Z"),
                pain("b", "2026-11-25T08:00:00Z", 2, issued="2026-11-25T09:00:00Z"),
            ],
            [1],
        ),
        # issued stands in when effective[x] is absent; effectivePeriod.start and effectiveInstant
        (
            [
                pain("a", "2026-11-20", 1),
                {**obs("b", "72514-3", issued="2026-11-28T10:00:00Z"), "valueInteger": 2},
                {
                    **obs("c", "72514-3", effectivePeriod={"start": "2026-11-27T00:00:00Z"}),
                    "valueInteger": 3,
                },
            ],
            [2],
        ),
        (
            [
                {
                    **obs("c", "72514-3", effectiveInstant="2026-11-29T10:00:00.123Z"),
                    "valueInteger": 4,
                },
                {
                    **obs("d", "72514-3", effectivePeriod={"start": "2026-11-29T11:00:00Z"}),
                    "valueInteger": 3,
                },
            ],
            [3],
        ),
    ],
)
def test_latest(
    questionnaire: dict[str, Any], observations: list[dict[str, Any]], expected: list[Any]
) -> None:
    assert pain_of(questionnaire, observations) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"value": 6.0, "unit": "{score}"}, [6]),
        ({"value": 6, "unit": "{score}"}, [6]),
        ({"value": 0}, [0]),
        ({"value": 6.5}, []),
        ({"value": 11}, []),
        ({"value": -1}, []),
    ],
)
def test_pain_quantity(
    questionnaire: dict[str, Any], value: dict[str, Any], expected: list[Any]
) -> None:
    assert pain_of(questionnaire, [pain("a", "2026-11-20", value)]) == expected


def test_latest_unusable_value_is_not_replaced_by_an_older_one(
    questionnaire: dict[str, Any],
) -> None:
    resources = [pain("a", "2026-11-10", 4), pain("b", "2026-11-20", {"value": 6.5})]
    assert pain_of(questionnaire, resources) == []


def test_integer_out_of_range_becomes_an_issue(questionnaire: dict[str, Any]) -> None:
    response, issues = run(questionnaire, [pain("a", "2026-11-20", 15)])
    assert find_answers(response, "pain-nrs") == []
    assert len(issues) == 1 and issues[0].severity == "warning"
    assert "pain-nrs not populated" in (issues[0].diagnostics or "")
    assert "maxValue" in (issues[0].diagnostics or "")


def test_pregnancy_window_and_later_not_pregnant_wins(questionnaire: dict[str, Any]) -> None:
    def answer(resources: list[dict[str, Any]]) -> list[str]:
        return [c["code"] for c in find_answers(run(questionnaire, resources)[0], "pregnancy")]

    assert answer([preg("a", "2026-02-23", "77386006")]) == ["77386006"]  # 40 weeks ago
    assert answer([preg("a", "2026-02-01", "77386006")]) == []  # more than 42 weeks ago
    assert answer([preg("a", "2026-06-01", "77386006"), preg("b", "2026-09-01", "60001007")]) == [
        "60001007"
    ]
    assert answer([preg("b", "2026-09-01", "60001007"), preg("a", "2026-06-01", "77386006")]) == [
        "60001007"
    ]
    # the latest has another value: nothing is prefilled
    assert answer([preg("a", "2026-06-01", "77386006"), preg("b", "2026-09-01", "261665006")]) == []


def test_pregnancy_window_boundary(questionnaire: dict[str, Any]) -> None:
    def answer(when: str) -> list[Any]:
        resources = [preg("a", when, "60001007")]
        return find_answers(run(questionnaire, resources)[0], "pregnancy")

    assert answer("2026-02-10")  # 2026-12-01 minus 42 weeks (294 days)
    assert answer("2026-02-10T23:59:59Z")
    assert not answer("2026-02-09")
    assert not answer("2026-02-09T23:59:59Z")


def test_other_patients_data_is_ignored(questionnaire: dict[str, Any]) -> None:
    other = {**pain("x", "2026-11-30", 9), "subject": {"reference": "http://ehr/fhir/Patient/p2"}}
    mine = {**pain("y", "2026-11-20", 2), "subject": {"reference": "http://ehr/fhir/Patient/p1"}}
    anonymous = {k: v for k, v in pain("z", "2026-11-10", 1).items() if k != "subject"}
    response, issues = run(questionnaire, [other, mine, anonymous])
    assert find_answers(response, "pain-nrs") == [2]
    assert [i.severity for i in issues] == ["information"]


# ---- the engine is generic: a synthetic Questionnaire


def synthetic(items: list[dict[str, Any]], variables: list[tuple[str, str]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "resourceType": "Questionnaire",
        "url": "http://x/Questionnaire/s",
        "status": "draft",
        "extension": [
            {
                "url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-launchContext",
                "extension": [
                    {"url": "name", "valueCoding": {"code": "patient"}},
                    {"url": "type", "valueCode": "Patient"},
                ],
            },
            *[
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/variable",
                    "valueExpression": {"name": n, "language": "text/fhirpath", "expression": e},
                }
                for n, e in variables
            ],
        ],
        "item": items,
    }


def initial(expression: str) -> dict[str, Any]:
    return {
        "url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-initialExpression",
        "valueExpression": {"language": "text/fhirpath", "expression": expression},
    }


def item(
    link_id: str, item_type: str, expression: str | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"linkId": link_id, "type": item_type, **extra}
    if expression is not None:
        out["extension"] = [initial(expression)]
    return out


def run_synthetic(q: dict[str, Any], resources: list[dict[str, Any]] = ()) -> tuple[Any, Any]:  # type: ignore[assignment]
    compiled = compile_questionnaire(q, COMPILER)
    return populate(q, compiled, SUBJECT, list(resources), NOW)


def test_launch_context_types_and_conversions() -> None:
    q = synthetic(
        [
            item("name", "string", "%patient.name.given.first()"),
            item("born", "date", "%patient.birthDate"),
            item("today", "date", "today()"),
            item("when", "dateTime", "now()"),
            item("age", "integer", "%patient.birthDate.duration(today(), 'years')"),
            item("weight", "decimal", "%Observation.value.ofType(Quantity).first()"),
            item("dead", "boolean", "%patient.deceased.ofType(boolean)"),
            item("me", "reference", "%patient"),
            item("q", "quantity", "%Observation.value.ofType(Quantity).first()"),
            item("conditions", "integer", "%Condition.count()"),
            item("static", "string", None, initial=[{"valueString": "fixed"}]),
            item(
                "sex",
                "choice",
                "%patient.gender",
                answerOption=[
                    {"valueCoding": {"system": "s", "code": "female"}},
                    {"valueCoding": {"system": "s", "code": "male"}},
                ],
            ),
            item("free", "open-choice", "'typed'", answerOption=[{"valueCoding": {"code": "x"}}]),
            item(
                "numbered", "choice", "2", answerOption=[{"valueInteger": 1}, {"valueInteger": 2}]
            ),
        ]
    )
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "birthDate": "1960-07-15",
        "gender": "female",
        "deceasedBoolean": False,
        "name": [{"given": ["Jane"]}],
    }
    weight = {
        "resourceType": "Observation",
        "id": "w",
        "status": "final",
        "code": {},
        "valueQuantity": {"value": 70.5, "unit": "kg"},
    }
    response, issues = run_synthetic(q, [patient, weight])
    assert issues == []
    values = {i["linkId"]: i["answer"][0] for i in response["item"]}
    assert values == {
        "name": {"valueString": "Jane"},
        "born": {"valueDate": "1960-07-15"},
        "today": {"valueDate": "2026-12-01"},
        "when": {"valueDateTime": "2026-12-01T12:00:00+00:00"},  # as the rule engine writes it
        "age": {"valueInteger": 66},
        "weight": {"valueDecimal": 70.5},
        "dead": {"valueBoolean": False},
        "me": {"valueReference": {"reference": "Patient/p1"}},
        "q": {"valueQuantity": {"value": 70.5, "unit": "kg"}},
        "conditions": {"valueInteger": 0},
        "static": {"valueString": "fixed"},
        "sex": {"valueCoding": {"system": "s", "code": "female"}},
        "free": {"valueString": "typed"},
        "numbered": {"valueInteger": 2},
    }


def test_patient_context_is_empty_without_the_patient() -> None:
    q = synthetic([item("name", "string", "%patient.name.given.first()")])
    response, issues = run_synthetic(
        q, [{"resourceType": "Patient", "id": "p2", "name": [{"given": ["X"]}]}]
    )
    assert "item" not in response  # another Patient is left out, as by the rules (patient_data)
    assert [i.diagnostics for i in issues] == ["1 resource(s) about another subject were ignored"]


def test_data_problems_become_issues() -> None:
    q = synthetic(
        [
            item("boom", "integer", "%Observation.value.ofType(Quantity).value.sum()"),
            item("many", "string", "'a' | 'b'"),
            item("wrong", "integer", "'text'"),
            item("repeating", "string", "'a' | 'b'", repeats=True),
            item("outside", "choice", "'zzz'", answerOption=[{"valueCoding": {"code": "x"}}]),
        ],
        [("broken", "%Observation.value.ofType(Quantity).value.sum()")],
    )
    weight = {
        "resourceType": "Observation",
        "id": "w",
        "status": "final",
        "code": {},
        "valueQuantity": {"value": 70.5, "unit": "kg"},
    }
    response, issues = run_synthetic(q, [weight, {**weight, "id": "w2"}])
    assert [i["linkId"] for i in response["item"]] == ["repeating"]
    assert response["item"][0]["answer"] == [{"valueString": "a"}, {"valueString": "b"}]
    diagnostics = [i.diagnostics or "" for i in issues]
    assert any(d.startswith("variable %broken failed") for d in diagnostics)
    assert any(d.startswith("initialExpression of boom failed") for d in diagnostics)
    assert any("many not populated: 2 values" in d for d in diagnostics)
    assert any("wrong not populated" in d for d in diagnostics)
    assert any("outside not populated" in d for d in diagnostics)


def test_disabled_items_are_not_populated() -> None:
    q = synthetic(
        [
            item("flag", "boolean", "false"),
            item(
                "detail",
                "string",
                "'x'",
                enableWhen=[{"question": "flag", "operator": "=", "answerBoolean": True}],
            ),
            {"linkId": "g", "type": "group", "item": [item("child", "string", "'c'")]},
            {"linkId": "empty", "type": "group", "item": [item("nothing", "string")]},
        ]
    )
    response, issues = run_synthetic(q)
    assert [i["linkId"] for i in response["item"]] == ["flag", "g"]
    assert [i.diagnostics for i in issues] == ["detail not populated: item disabled"]


def test_item_variables_are_scoped() -> None:
    q = synthetic(
        [
            {
                "linkId": "g",
                "type": "group",
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/variable",
                        "valueExpression": {
                            "name": "v",
                            "language": "text/fhirpath",
                            "expression": "%root + 1",
                        },
                    }
                ],
                "item": [item("inner", "integer", "%v + 1")],
            }
        ],
        [("root", "1")],
    )
    response, _ = run_synthetic(q)
    assert find_answers(response, "inner") == [3]
    outside = synthetic([item("g", "group"), item("outer", "integer", "%v")])
    with pytest.raises(ValueError, match="undefined variable %v"):
        compile_questionnaire(outside, COMPILER)


@pytest.mark.parametrize(
    ("extension", "message"),
    [
        (
            {"valueExpression": {"language": "text/cql", "expression": "1"}},
            "unsupported expression language",
        ),
        (
            {"valueExpression": {"language": "text/fhirpath", "expression": "'open"}},
            "does not parse",
        ),
        ({"valueString": "1"}, "no valueExpression"),
    ],
)
def test_compile_refuses_bad_expressions(extension: dict[str, Any], message: str) -> None:
    ext = {
        "url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-initialExpression",
        **extension,
    }
    q = synthetic([{"linkId": "a", "type": "string", "extension": [ext]}])
    with pytest.raises(ValueError, match=message):
        compile_questionnaire(q, COMPILER)


def test_compile_refuses_duplicate_variables_and_nameless_context() -> None:
    q = synthetic([], [("a", "1"), ("a", "2")])
    with pytest.raises(ValueError, match="duplicate"):
        compile_questionnaire(q, COMPILER)
    nameless = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-launchContext",
                "extension": [],
            }
        ]
    }
    with pytest.raises(ValueError, match="launchContext without a name"):
        compile_questionnaire(nameless, COMPILER)


def test_helpers() -> None:
    assert fhir_instant(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    assert to_json(Decimal("2.50")) == 2.5
    assert to_json([fhir_date(NOW), quantity(3, "kg")]) == [
        "2026-12-01",
        {"value": 3, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    ]
    assert to_answer({"type": "integer"}, Decimal("2.5")) is None
    assert to_answer({"type": "integer"}, True) is None
    assert to_answer({"type": "display"}, "x") is None
    assert to_answer(
        {"type": "choice", "answerOption": [{"valueCoding": {"code": "a"}}]},
        {"coding": [{"code": "a"}]},
    ) == (
        "valueCoding",
        {"code": "a"},
    )
    assert to_answer({"type": "choice"}, {"system": "s", "code": "c", "userSelected": True}) == (
        "valueCoding",
        {"system": "s", "code": "c"},
    )
