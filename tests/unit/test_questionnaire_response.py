"""QuestionnaireResponse helpers: answers at any depth, enableWhen, validation (SDC)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.sdc.questionnaire_response import (
    Enablement,
    answers_by_link_id,
    condition_met,
    find_answers,
    index_questionnaire,
    parse_response,
    refers_to,
    require_questionnaire,
    validate_response,
)
from fhir_service.errors import BusinessRuleError, InvalidRequest

DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"
SCT = "http://snomed.info/sct"
LOCAL = "http://example.org/fhir/muscle-spasm/CodeSystem/muscle-spasm-assessment"


@pytest.fixture(scope="module")
def questionnaire() -> dict[str, Any]:
    path = DEFINITIONS / "Questionnaire-muscle-spasm-assessment.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def qr(items: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-12-01T10:00:00Z",
        "item": items,
    }


def answer(link_id: str, *values: dict[str, Any]) -> dict[str, Any]:
    return {"linkId": link_id, "answer": list(values)}


def coding(system: str, code: str) -> dict[str, Any]:
    return {"valueCoding": {"system": system, "code": code}}


def test_answers_found_at_any_depth() -> None:
    response = qr(
        [
            answer("pain-nrs", {"valueInteger": 4}),
            {"linkId": "symptoms", "item": [answer("swelling", {"valueBoolean": True})]},
            {
                "linkId": "sensory-change",
                "answer": [
                    {"valueBoolean": True, "item": [answer("sensory-detail", coding(SCT, "1"))]}
                ],
            },
        ]
    )
    assert find_answers(response, "pain-nrs") == [4]
    assert find_answers(response, "swelling") == [True]
    assert find_answers(response, "sensory-detail") == [{"system": SCT, "code": "1"}]
    assert find_answers(response, "absent") == []
    assert set(answers_by_link_id(response)) == {
        "pain-nrs",
        "swelling",
        "sensory-change",
        "sensory-detail",
    }


@pytest.mark.parametrize(
    ("operator", "expected", "answers", "met"),
    [
        ("exists", True, [], False),
        ("exists", False, [], True),
        ("exists", True, [1], True),
        ("=", True, [True], True),
        ("=", True, [False], False),
        ("=", {"system": SCT, "code": "a"}, [{"system": SCT, "code": "b"}, {"code": "a"}], True),
        ("=", {"system": SCT, "code": "a"}, [{"system": "other", "code": "a"}], False),
        ("!=", {"code": "none"}, [{"code": "x"}], True),
        ("!=", {"code": "none"}, [{"code": "none"}], False),
        (">", 0, [0], False),
        (">", 0, [3], True),
        (">=", 5, [5], True),
        ("<", 5, [4.5], True),
        ("<=", "2026-01-01", ["2025-12-31"], True),
        ("<", 3, ["text"], False),
        ("??", 3, [3], False),
    ],
)
def test_condition_met(operator: str, expected: Any, answers: list[Any], met: bool) -> None:
    key = "answerCoding" if isinstance(expected, dict) else "answerDecimal"
    assert condition_met({"question": "q", "operator": operator, key: expected}, answers) is met


def test_enablement_follows_the_questionnaire(questionnaire: dict[str, Any]) -> None:
    index = index_questionnaire(questionnaire)
    response = qr(
        [
            answer("sensory-change", {"valueBoolean": True}),
            answer("environment", coding(LOCAL, "cold")),
            answer("recent-injury", coding(LOCAL, "none"), coding(SCT, "90460009")),
            answer("pain-nrs", {"valueInteger": 0}),
            answer("neuro-history", coding(SCT, "24700007")),
        ]
    )
    enabled = Enablement(index, answers_by_link_id(response))
    assert enabled.enabled("sensory-detail")
    assert not enabled.enabled("other-neuro-text")
    assert not enabled.enabled("heavy-sweating")
    assert enabled.enabled("injury-date")
    assert not enabled.enabled("pain-character")
    assert enabled.enabled("spasticity-distribution")
    assert enabled.enabled("unknown-link-id")
    assert enabled.enabled("pattern")


def test_disabled_question_counts_as_unanswered() -> None:
    questionnaire = {
        "item": [
            {"linkId": "a", "type": "boolean"},
            {
                "linkId": "b",
                "type": "boolean",
                "enableWhen": [{"question": "a", "operator": "=", "answerBoolean": True}],
            },
            {
                "linkId": "c",
                "type": "boolean",
                "enableWhen": [{"question": "b", "operator": "exists", "answerBoolean": True}],
            },
            {
                "linkId": "loop",
                "type": "boolean",
                "enableWhen": [{"question": "loop", "operator": "exists", "answerBoolean": False}],
            },
        ]
    }
    answers = answers_by_link_id(
        qr([answer("a", {"valueBoolean": False}), answer("b", {"valueBoolean": True})])
    )
    enabled = Enablement(index_questionnaire(questionnaire), answers)
    assert not enabled.enabled("b")
    assert not enabled.enabled("c")
    assert enabled.values("b") == []
    assert enabled.enabled("loop")


def test_valid_response_has_no_issue(questionnaire: dict[str, Any]) -> None:
    response = qr(
        [
            {
                "linkId": "symptoms",
                "item": [
                    answer("pain-nrs", {"valueInteger": 10}),
                    answer("pain-character", coding(LOCAL, "sharp")),
                    answer("sensory-change", {"valueBoolean": True}),
                    answer("sensory-detail", coding(SCT, "44077006"), coding(SCT, "91019004")),
                ],
            },
            answer("recent-injury", coding(SCT, "82271004")),
            answer("injury-date", {"valueDate": "2026-11-20"}),
            answer("movement-text", {"valueString": "turning the head"}),
            *RED_FLAGS_NO,
        ]
    )
    assert validate_response(questionnaire, response) == []


#: The other red-flag items a completed response must answer (R2.7), answered "no".
RED_FLAGS_NO = [
    answer(link_id, {"valueBoolean": False})
    for link_id in (
        "new-weakness",
        "other-neuro",
        "swelling",
        "skin-change",
        "self-care-tried",
        "altered-mentation",
    )
] + [answer("frequency", coding(LOCAL, "first"))]


def test_red_flag_items_are_required_in_a_completed_response(
    questionnaire: dict[str, Any],
) -> None:
    response = qr([answer("pain-nrs", {"valueInteger": 3})])
    missing = {i.diagnostics.split("'")[1] for i in validate_response(questionnaire, response)}
    assert missing == {
        "frequency",
        "new-weakness",
        "sensory-change",
        "other-neuro",
        "swelling",
        "skin-change",
        "recent-injury",
        "self-care-tried",
    }
    # altered-mentation is required only once enabled (heat, exertion or a neurological symptom)
    exertion = qr([answer("exercise-trigger", {"valueBoolean": True})])
    assert "altered-mentation" in str(validate_response(questionnaire, exertion))
    assert validate_response(questionnaire, {**response, "status": "in-progress"}) == []


def test_an_exclusive_none_cannot_be_combined(questionnaire: dict[str, Any]) -> None:
    both = qr(
        [
            answer("environment", coding(LOCAL, "none"), coding(LOCAL, "heat")),
            answer("recent-injury", coding(LOCAL, "none"), coding(SCT, "90460009")),
        ]
    )
    issues = [i for i in validate_response(questionnaire, both) if i.code == "business-rule"]
    assert [i.expression[0] for i in issues] == [
        "QuestionnaireResponse.item[0].answer[0]",
        "QuestionnaireResponse.item[1].answer[0]",
    ]
    assert all("exclusive" in i.diagnostics for i in issues)
    alone = qr([answer("environment", coding(LOCAL, "heat"), coding(LOCAL, "cold"))])
    assert not [i for i in validate_response(questionnaire, alone) if i.code == "business-rule"]


def test_invalid_answers_are_located(questionnaire: dict[str, Any]) -> None:
    response = qr(
        [
            {
                "linkId": "symptoms",
                "item": [
                    answer("pain-nrs", {"valueInteger": 11}),
                    answer("pain-character", {"valueString": "sharp"}),
                    answer("sensory-detail", coding(SCT, "44077006")),
                    answer("swelling", {"valueBoolean": True}, {"valueBoolean": False}),
                ],
            },
            answer("frequency", coding(LOCAL, "hourly")),
            answer("mystery", {"valueString": "?"}),
            {"linkId": "pattern", "answer": [{"valueString": "x"}]},
        ]
    )
    issues = validate_response(questionnaire, response)
    found = {(i.expression[0], i.code) for i in issues}
    assert ("QuestionnaireResponse.item[0].item[0].answer[0]", "invalid") in found  # > maxValue
    assert ("QuestionnaireResponse.item[0].item[1].answer[0]", "invalid") in found  # type
    assert ("QuestionnaireResponse.item[0].item[2]", "business-rule") in found  # disabled
    assert ("QuestionnaireResponse.item[0].item[3]", "invalid") in found  # repeats
    assert ("QuestionnaireResponse.item[1].answer[0]", "invalid") in found  # not an option
    assert ("QuestionnaireResponse.item[2]", "invalid") in found  # unknown linkId
    assert ("QuestionnaireResponse.item[3].answer[0]", "invalid") in found  # group answered
    assert all(i.severity == "error" for i in issues)
    assert any("above maxValue 10" in (i.diagnostics or "") for i in issues)


def test_required_only_checked_when_complete() -> None:
    questionnaire = {
        "url": "http://x/Questionnaire/q",
        "item": [
            {
                "linkId": "g",
                "type": "group",
                "required": True,
                "item": [
                    {"linkId": "a", "type": "string", "required": True, "maxLength": 3},
                ],
            },
            {"linkId": "b", "type": "string", "required": True},
        ],
    }
    done = qr([answer("b", {"valueString": "long text"})])
    issues = validate_response(questionnaire, done)
    assert {i.diagnostics for i in issues if i.code == "required"} == {
        "required item 'g' is not answered",
        "required item 'a' is not answered",
    }
    assert (
        validate_response(questionnaire, qr([answer("b", {"valueString": "abc"})], "in-progress"))
        == []
    )
    too_long = validate_response(
        questionnaire, qr([answer("a", {"valueString": "abcd"})], "in-progress")
    )
    assert [i.diagnostics for i in too_long] == ["a: the answer is longer than maxLength 3"]


def test_questionnaire_reference(questionnaire: dict[str, Any]) -> None:
    url = questionnaire["url"]
    assert refers_to(url, questionnaire)
    assert refers_to(f"{url}|0.1.0", questionnaire)
    assert refers_to(f"{url}|9.9.9", questionnaire)
    assert not refers_to("http://other/Questionnaire/x", questionnaire)
    assert not refers_to(None, questionnaire)
    require_questionnaire(qr([]), questionnaire)
    with pytest.raises(BusinessRuleError) as err:
        require_questionnaire(
            {**qr([]), "questionnaire": "http://other/Questionnaire/x"}, questionnaire
        )
    assert err.value.status_code == 422


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"resourceType": "Patient"},
        {"resourceType": "QuestionnaireResponse"},  # status is required
        {"resourceType": "QuestionnaireResponse", "status": "completed", "item": "x"},
        {"resourceType": "QuestionnaireResponse", "status": "bogus"},
    ],
)
def test_parse_response_rejects_garbage(data: Any) -> None:
    with pytest.raises(InvalidRequest):
        parse_response(data)


def test_parse_response_accepts_a_response() -> None:
    response = qr([answer("pain-nrs", {"valueInteger": 3})])
    assert parse_response(response) is response
