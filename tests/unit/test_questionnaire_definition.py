"""The assessment Questionnaire and its answer CodeSystem (docs/guideline.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.engine.sdc.questionnaire_populate import compile_questionnaire
from fhir_service.engine.sdc.questionnaire_response import index_questionnaire
from fhir_service.fhir import validate_resource

DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"
BASE = "http://example.org/fhir/muscle-spasm"
LOCAL = f"{BASE}/CodeSystem/muscle-spasm-assessment"
SCT = "http://snomed.info/sct"

#: docs/guideline.md: linkId → (group, type, repeats, answer codes)
TABLE: dict[str, tuple[str | None, str, bool, tuple[str, ...]]] = {
    "pattern": (None, "group", False, ()),
    "onset-context": ("pattern", "choice", False, ("exercise", "at-rest", "both", "unknown")),
    "time-of-day": ("pattern", "choice", False, ("nocturnal", "daytime", "both")),
    "episode-duration": ("pattern", "choice", False, ("seconds", "minutes", "prolonged")),
    "frequency": ("pattern", "choice", False, ("first", "lt-weekly", "weekly", "daily")),
    "body-site": (
        "pattern",
        "choice",
        True,
        ("calf-leg", "thigh", "foot", "back", "neck", "abdomen", "arm-hand", "other"),
    ),
    "symptoms": (None, "group", False, ()),
    "pain-nrs": ("symptoms", "integer", False, ()),
    "pain-character": (
        "symptoms",
        "choice",
        False,
        ("cramping", "aching", "sharp", "burning-tingling"),
    ),
    "new-weakness": ("symptoms", "boolean", False, ()),
    "sensory-change": ("symptoms", "boolean", False, ()),
    "sensory-detail": ("symptoms", "choice", True, ("44077006", "91019004", "397974008")),
    "other-neuro": ("symptoms", "boolean", False, ()),
    "other-neuro-text": ("symptoms", "string", False, ()),
    "function-limit": ("symptoms", "choice", False, ("none", "mild", "moderate", "severe")),
    "swelling": ("symptoms", "boolean", False, ()),
    "skin-change": ("symptoms", "boolean", False, ()),
    "triggers": (None, "group", False, ()),
    "exercise-trigger": ("triggers", "boolean", False, ()),
    "intensity-above-usual": ("triggers", "boolean", False, ()),
    "environment": ("triggers", "choice", True, ("heat", "cold", "none")),
    "heavy-sweating": ("triggers", "boolean", False, ()),
    "altered-mentation": ("triggers", "boolean", False, ()),
    "movement-trigger": ("triggers", "boolean", False, ()),
    "movement-text": ("triggers", "string", False, ()),
    "emotional-stress": ("triggers", "boolean", False, ()),
    "low-fluid-intake": ("triggers", "boolean", False, ()),
    "context": (None, "group", False, ()),
    "recent-injury": (
        "context",
        "choice",
        True,
        ("none", "82271004", "90460009", "712893003"),
    ),
    "injury-date": ("context", "date", False, ()),
    "neuro-history": (
        "context",
        "choice",
        True,
        ("230690007", "24700007", "90584004", "other", "none"),
    ),
    "spasticity-distribution": ("context", "choice", False, ("focal", "multifocal", "generalized")),
    "pregnancy": ("context", "choice", False, ("77386006", "60001007", "na")),
    "med-change": ("context", "boolean", False, ()),
    "med-change-text": ("context", "string", False, ()),
    "selfcare": (None, "group", False, ()),
    "self-care-tried": ("selfcare", "boolean", False, ()),
    "self-care-measures": (
        "selfcare",
        "choice",
        True,
        ("rest", "stretching", "heat-cold", "massage", "hydration"),
    ),
    "self-care-response": ("selfcare", "choice", False, ("resolved", "partial", "no-improvement")),
}

#: linkId → (behavior, [(question, operator, answer)])
ENABLE_WHEN: dict[str, tuple[str | None, list[tuple[str, str, Any]]]] = {
    "spasticity-distribution": (
        "any",
        [("neuro-history", "=", c) for c in ("230690007", "24700007", "90584004")],
    ),
    "pain-character": (None, [("pain-nrs", ">", 0)]),
    "sensory-detail": (None, [("sensory-change", "=", True)]),
    "other-neuro-text": (None, [("other-neuro", "=", True)]),
    "intensity-above-usual": (None, [("exercise-trigger", "=", True)]),
    "heavy-sweating": (None, [("environment", "=", "heat")]),
    # R2.7: asked whenever heat or exertion is involved or a neurological symptom is answered
    "altered-mentation": (
        "any",
        [
            ("environment", "=", "heat"),
            ("exercise-trigger", "=", True),
            ("new-weakness", "=", True),
            ("sensory-change", "=", True),
            ("other-neuro", "=", True),
        ],
    ),
    "injury-date": (
        "any",
        [("recent-injury", "=", c) for c in ("82271004", "90460009", "712893003")],
    ),
    "self-care-measures": (None, [("self-care-tried", "=", True)]),
    "self-care-response": (None, [("self-care-tried", "=", True)]),
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEFINITIONS / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def questionnaire() -> dict[str, Any]:
    return load("Questionnaire-muscle-spasm-assessment.json")


@pytest.fixture(scope="module")
def code_system() -> dict[str, Any]:
    return load("CodeSystem-muscle-spasm-assessment.json")


def test_questionnaire_metadata(questionnaire: dict[str, Any]) -> None:
    validate_resource(questionnaire)
    assert questionnaire["id"] == "muscle-spasm-assessment"
    assert questionnaire["url"] == f"{BASE}/Questionnaire/muscle-spasm-assessment"
    assert questionnaire["version"] == "0.1.0"
    assert questionnaire["status"] == "draft"
    assert questionnaire["subjectType"] == ["Patient"]


def test_items_follow_the_table(questionnaire: dict[str, Any]) -> None:
    index = index_questionnaire(questionnaire)
    assert list(index.items) == list(TABLE)
    for link_id, (group, item_type, repeats, codes) in TABLE.items():
        item = index.items[link_id]
        assert index.parents[link_id] == group, link_id
        assert item["type"] == item_type, link_id
        assert bool(item.get("repeats")) is repeats, link_id
        assert item.get("text"), link_id
        options = [o["valueCoding"] for o in item.get("answerOption", [])]
        assert [o["code"] for o in options] == list(codes), link_id
        for option in options:
            expected = SCT if option["code"].isdigit() else LOCAL
            assert option["system"] == expected and option.get("display"), (link_id, option)


def test_no_que_4_and_no_answer_lists_on_non_choice(questionnaire: dict[str, Any]) -> None:
    for item in index_questionnaire(questionnaire).items.values():
        assert not ("answerOption" in item and "answerValueSet" in item), item["linkId"]
        if item["type"] not in ("choice", "open-choice"):
            assert "answerOption" not in item and "answerValueSet" not in item


def test_enable_when_follows_the_table(questionnaire: dict[str, Any]) -> None:
    index = index_questionnaire(questionnaire)
    for link_id, item in index.items.items():
        if link_id not in ENABLE_WHEN:
            assert "enableWhen" not in item, link_id
            continue
        behavior, conditions = ENABLE_WHEN[link_id]
        assert item.get("enableBehavior") == behavior, link_id
        found = []
        for cond in item["enableWhen"]:
            assert cond["question"] in index.items
            key = next(k for k in cond if k.startswith("answer"))
            value = cond[key]["code"] if key == "answerCoding" else cond[key]
            found.append((cond["question"], cond["operator"], value))
        assert found == conditions, link_id


def test_codes_and_value_limits(questionnaire: dict[str, Any]) -> None:
    index = index_questionnaire(questionnaire)
    pain = index.items["pain-nrs"]
    assert [(c["system"], c["code"]) for c in pain["code"]] == [("http://loinc.org", "72514-3")]
    limits = {e["url"].rsplit("/", 1)[1]: e.get("valueInteger") for e in pain["extension"]}
    assert limits["minValue"] == 0 and limits["maxValue"] == 10
    pregnancy = index.items["pregnancy"]
    assert [c["code"] for c in pregnancy["code"]] == ["82810-3"]


def test_every_local_code_is_in_the_code_system(
    questionnaire: dict[str, Any], code_system: dict[str, Any]
) -> None:
    validate_resource(code_system)
    assert code_system["url"] == LOCAL
    concepts = {c["code"]: c["display"] for c in code_system["concept"]}
    assert code_system["count"] == len(concepts)
    used = set()
    for item in index_questionnaire(questionnaire).items.values():
        for option in item.get("answerOption", []):
            coding = option["valueCoding"]
            if coding["system"] == LOCAL:
                used.add(coding["code"])
                assert coding["display"] == concepts[coding["code"]]
        for cond in item.get("enableWhen", []):
            coding = cond.get("answerCoding")
            if coding and coding["system"] == LOCAL:
                assert coding["code"] in concepts
    assert used == set(concepts)


def test_population_expressions_compile(questionnaire: dict[str, Any]) -> None:
    compiled = compile_questionnaire(questionnaire, FhirPathCompiler())
    assert compiled.canonical.endswith("muscle-spasm-assessment|0.1.0")
    assert [c.name for c in compiled.launch_contexts] == ["patient"]
    assert [v.name for v in compiled.variables] == [
        "validObservationStatus",
        "painLookback",
        "pregnancyLookback",
    ]
    assert set(compiled.items) == {"pain-nrs", "pregnancy"}
    assert [v.name for v in compiled.items["pain-nrs"].variables] == [
        "painObservations",
        "painLatest",
    ]
    assert compiled.data_types == {"Observation"}


def test_windows_are_named_variables_not_literals(questionnaire: dict[str, Any]) -> None:
    root = {
        e["valueExpression"]["name"]: e["valueExpression"]["expression"]
        for e in questionnaire["extension"]
        if "valueExpression" in e
    }
    assert root["painLookback"] == "30 days"
    assert root["pregnancyLookback"] == "42 weeks"
    for item in index_questionnaire(questionnaire).items.values():
        for ext in item.get("extension", []):
            expression = ext.get("valueExpression", {}).get("expression", "")
            assert " days" not in expression and " weeks" not in expression


def test_extraction_metadata(questionnaire: dict[str, Any]) -> None:
    index = index_questionnaire(questionnaire)
    flagged = [
        link_id
        for link_id, item in index.items.items()
        if any(e["url"].endswith("observationExtract") for e in item.get("extension", []))
    ]
    assert flagged == ["pain-nrs", "pregnancy"]
    injury = index.items["recent-injury"]
    template = next(e for e in injury["extension"] if e["url"].endswith("templateExtract"))
    ref = template["extension"][0]["valueReference"]["reference"]
    contained = {f"#{c['id']}": c for c in questionnaire["contained"]}
    condition = contained[ref]
    assert condition["resourceType"] == "Condition"
    assert condition["verificationStatus"]["coding"][0]["code"] == "provisional"


#: R2.7: the red-flag items a completed response must answer (RF-01..RF-06 and TY-HEAT-X).
RED_FLAG_ITEMS = {
    "pain-nrs",
    "frequency",
    "new-weakness",
    "sensory-change",
    "other-neuro",
    "swelling",
    "skin-change",
    "altered-mentation",
    "recent-injury",
    "self-care-tried",
}


def test_red_flag_items_are_required(questionnaire: dict[str, Any]) -> None:
    index = index_questionnaire(questionnaire)
    required = {link_id for link_id, item in index.items.items() if item.get("required")}
    assert required == RED_FLAG_ITEMS


def test_no_item_is_hidden_by_an_item_of_a_later_group(questionnaire: dict[str, Any]) -> None:
    """R2.7: a clinician filling the form in order sees every item an earlier answer enables."""
    index = index_questionnaire(questionnaire)
    order = {link_id: n for n, link_id in enumerate(index.items)}
    for link_id, item in index.items.items():
        for cond in item.get("enableWhen") or ():
            assert order[cond["question"]] < order[link_id], (link_id, cond["question"])


def test_none_answers_are_exclusive(questionnaire: dict[str, Any]) -> None:
    exclusive = "http://hl7.org/fhir/StructureDefinition/questionnaire-optionExclusive"
    for item in index_questionnaire(questionnaire).items.values():
        for option in item.get("answerOption") or ():
            flagged = any(
                e["url"] == exclusive and e["valueBoolean"] for e in option.get("extension", [])
            )
            is_none = option.get("valueCoding", {}).get("code") == "none"
            assert flagged is (is_none and bool(item.get("repeats"))), (item["linkId"], option)
