"""``ActivityDefinition/$apply`` building blocks: the request of each kind, dynamicValues, and
the value conversions they rely on
(https://hl7.org/fhir/R4/activitydefinition-operation-apply.html; draft/proposal)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity

from fhir_service.engine.apply.activity_definition import (
    apply_activity,
    apply_dynamic_values,
    elements_of,
    has_element,
)
from fhir_service.engine.apply.evaluation import (
    CallInput,
    Scope,
    check_parameter_value,
    parameter_value,
)
from fhir_service.engine.apply.values import is_simple_path, result_value, set_path, to_json
from fhir_service.engine.data.dataset import build_data_set
from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.errors import IssueLog
from fhir_service.fhir import validate_resource
from tests.conftest import DEFAULT_NOW

NOW = DEFAULT_NOW
URL = "http://example.org/fhir/muscle-spasm/ActivityDefinition/ad-x"
SCT = "http://snomed.info/sct"


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"id-{next(counter)}"


def scope(*record: dict[str, Any], **params: Any) -> Scope:
    data = build_data_set(list(record))
    return Scope(CallInput(data, NOW, "p1", None, params), {}, {}, IssueLog())


def activity(kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ActivityDefinition",
        "id": "ad-x",
        "url": URL,
        "version": "0.1.0",
        "status": "active",
        "kind": kind,
        **extra,
    }


def build(ad: dict[str, Any], in_scope: Scope | None = None) -> dict[str, Any]:
    in_scope = in_scope or scope()
    return apply_activity(
        ad, "Patient/p1", in_scope, FhirPathCompiler(), ids(), "ActivityDefinition/ad-x"
    )


def dv(path: str, expression: str, language: str = "text/fhirpath") -> dict[str, Any]:
    return {"path": path, "expression": {"language": language, "expression": expression}}


CODE = {"coding": [{"system": SCT, "code": "308447003", "display": "Referral"}]}


# --- the request of each kind ---------------------------------------------------------------


def test_service_request() -> None:
    body_site = [{"coding": [{"system": SCT, "code": "45048000"}]}]
    out = build(activity("ServiceRequest", code=CODE, bodySite=body_site, doNotPerform=True))
    assert out == {
        "resourceType": "ServiceRequest",
        "id": "id-1",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": "Patient/p1"},
        "instantiatesCanonical": [f"{URL}|0.1.0"],
        "code": CODE,
        "bodySite": body_site,
        "doNotPerform": True,
    }
    validate_resource(out)


def test_medication_request() -> None:
    product = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1"}]}
    dosage = [{"text": "1 tablet at night"}]
    out = build(activity("MedicationRequest", productCodeableConcept=product, dosage=dosage))
    assert out["medicationCodeableConcept"] == product
    assert out["dosageInstruction"] == dosage
    assert (out["status"], out["intent"]) == ("draft", "proposal")
    validate_resource(out)
    by_reference = build(activity("MedicationRequest", productReference={"reference": "#m"}))
    assert by_reference["medicationReference"] == {"reference": "#m"}


def test_communication_request_has_no_intent_in_r4() -> None:
    out = build(activity("CommunicationRequest", code=CODE, description="Rest and stretch."))
    assert "intent" not in out and "instantiatesCanonical" not in out
    assert out["status"] == "draft"
    assert out["payload"] == [{"contentString": "Rest and stretch."}]
    assert out["category"] == [CODE]
    validate_resource(out)


def test_task_names_its_subject_for() -> None:
    out = build(activity("Task", code=CODE, description="Collect the assessment"))
    assert out["for"] == {"reference": "Patient/p1"}
    assert "subject" not in out
    assert out["instantiatesCanonical"] == f"{URL}|0.1.0"  # 0..1 on Task
    assert (out["status"], out["intent"]) == ("draft", "proposal")
    assert out["description"] == "Collect the assessment"
    validate_resource(out)


def test_device_and_nutrition_requests() -> None:
    device = build(activity("DeviceRequest", code=CODE))
    assert device["codeCodeableConcept"] == CODE
    validate_resource(device)
    nutrition = build(activity("NutritionOrder"))
    assert nutrition["patient"] == {"reference": "Patient/p1"}
    assert nutrition["intent"] == "proposal"
    # R4 NutritionOrder.dateTime is 1..1 and nothing fills it: no definition uses this kind
    with pytest.raises(ValueError, match="dateTime"):
        validate_resource(nutrition)


def test_kinds_without_intent_or_canonical() -> None:
    contract = build(activity("Contract"))
    assert contract["subject"] == [{"reference": "Patient/p1"}]  # 0..* on Contract
    assert "intent" not in contract
    assert "instantiatesCanonical" not in contract  # a Reference on Contract, not a canonical
    validate_resource(contract)
    supply = build(activity("SupplyRequest"))
    assert "intent" not in supply and "subject" not in supply
    recommendation = build(activity("ImmunizationRecommendation"))
    assert "status" not in recommendation
    assert recommendation["patient"] == {"reference": "Patient/p1"}


def test_elements_come_from_the_r4b_model() -> None:
    assert has_element("Task", "for") and not has_element("Task", "subject")
    assert has_element("Task", "encounter")
    assert not has_element("CommunicationRequest", "intent")
    assert elements_of("NoSuchType") == {}


def test_without_url_no_canonical_and_without_version_no_bar() -> None:
    ad = activity("ServiceRequest", code=CODE)
    del ad["version"]
    assert build(ad)["instantiatesCanonical"] == [URL]
    del ad["url"]
    assert "instantiatesCanonical" not in build(ad)


def test_the_definition_is_not_modified() -> None:
    ad = activity("ServiceRequest", code=CODE, dynamicValue=[dv("code.text", "'changed'")])
    out = build(ad)
    assert out["code"]["text"] == "changed"
    assert "text" not in ad["code"]


# --- dynamicValues ----------------------------------------------------------------------------


def test_dynamic_values_in_document_order_later_wins() -> None:
    ad = activity(
        "ServiceRequest",
        code=CODE,
        dynamicValue=[
            dv("priority", "'routine'"),
            dv("priority", "'urgent'"),
            dv("note[1].text", "'second'"),
            dv("occurrenceDateTime", "now()"),
            dv("reasonReference[0].reference", "'Condition/' + %Condition.first().id"),
        ],
    )
    condition = {"resourceType": "Condition", "id": "c1"}
    out = build(ad, scope(condition))
    assert out["priority"] == "urgent"
    assert out["note"] == [{}, {"text": "second"}]
    assert out["occurrenceDateTime"] == "2026-12-01T12:00:00+00:00"
    assert out["reasonReference"] == [{"reference": "Condition/c1"}]


def test_empty_results_are_no_ops() -> None:
    ad = activity(
        "ServiceRequest", code=CODE, dynamicValue=[dv("priority", "%Condition.first().id")]
    )
    out = build(ad)
    assert "priority" not in out


def test_failures_are_issues_and_the_rest_applies() -> None:
    in_scope = scope()
    ad = activity(
        "Task",
        dynamicValue=[
            dv("description", "('a' + 1)"),
            dv("priority", "'routine'"),
            dv("code.text", "Foo", language="text/cql"),
            dv("note.where(x)", "'n'"),
            dv("authoredOn", "1 +"),
            {"path": "status"},
        ],
    )
    out = build(ad, in_scope)
    assert out["priority"] == "routine"
    assert "description" not in out and "code" not in out
    messages = [f"{i.severity}: {i.diagnostics}" for i in in_scope.issues.issues]
    text = "\n".join(messages)
    assert "expression failed" in text
    assert "language not supported" in text
    assert "unsupported dynamicValue path" in text
    assert "does not parse" in text
    wheres = [",".join(i.expression) for i in in_scope.issues.issues]
    assert "ActivityDefinition/ad-x.dynamicValue[0]" in wheres
    assert "ActivityDefinition/ad-x.dynamicValue[3]" in wheres


def test_apply_dynamic_values_reads_library_parameters() -> None:
    target: dict[str, Any] = {}
    in_scope = scope(P_X=14)
    apply_dynamic_values(
        target,
        [dv("dispenseRequest.expectedSupplyDuration.value", "%P_X")],
        in_scope,
        FhirPathCompiler(),
        "test",
    )
    assert target == {"dispenseRequest": {"expectedSupplyDuration": {"value": 14}}}


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            FP_Quantity(7, "days"),
            {"value": 7, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"},
        ),
        (
            FP_Quantity(Decimal("2.0"), "'mg'"),
            {"value": 2, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
        ),
        (
            FP_Quantity(Decimal("2.5"), "weeks"),
            {"value": 2.5, "unit": "weeks", "system": "http://unitsofmeasure.org", "code": "wk"},
        ),
        (FP_DateTime("2026-12-01"), "2026-12-01"),
        (Decimal("3.0"), 3),
        (Decimal("3.25"), 3.25),
        ({"a": [Decimal("1.5")]}, {"a": [1.5]}),
        ("text", "text"),
        (True, True),
    ],
)
def test_to_json(value: Any, expected: Any) -> None:
    assert to_json(value) == expected


def test_result_value() -> None:
    assert result_value([]) is None
    assert result_value(["a"]) == "a"
    assert result_value(["a", "b"]) == ["a", "b"]


def test_set_path_creates_parents() -> None:
    target: dict[str, Any] = {"note": [{"text": "keep"}]}
    set_path(target, "note[2].text", "third")
    set_path(target, "a.b.c", 1)
    set_path(target, "list[0]", "x")
    assert target == {
        "note": [{"text": "keep"}, {}, {"text": "third"}],
        "a": {"b": {"c": 1}},
        "list": ["x"],
    }


@pytest.mark.parametrize("path", ["", "a..b", "a.b()", "a[x]", "a.where(b)", "1a", "a[0]b"])
def test_paths_that_are_not_simple(path: str) -> None:
    assert not is_simple_path(path)
    with pytest.raises(ValueError, match="unsupported dynamicValue path"):
        set_path({}, path or ".", 1)


@pytest.mark.parametrize("path", ["title", "a.b[0].c", "reasonReference[0].reference"])
def test_simple_paths(path: str) -> None:
    assert is_simple_path(path)


# --- library parameter values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "unit"),
    [
        ("valueQuantity", {"value": 30, "unit": "days"}, "days"),
        ("valueDuration", {"value": 6, "code": "mo"}, "months"),
        ("valueAge", {"value": 65, "code": "a"}, "years"),
        ("valueDuration", {"value": 2, "code": "h"}, "hours"),
    ],
)
def test_quantity_parameters_become_fhirpath_quantities(key: str, value: Any, unit: str) -> None:
    converted = parameter_value(key, value)
    assert isinstance(converted, FP_Quantity)
    assert converted.unit == unit
    assert parameter_value("valueInteger", 3) == 3


@pytest.mark.parametrize(
    ("declared", "key", "value", "ok"),
    [
        ("integer", "valueInteger", 10, True),
        ("integer", "valueInteger", 1.5, False),
        ("integer", "valueInteger", True, False),
        ("integer", "valueString", "10", False),
        ("integer", "valueDecimal", 10.0, False),
        ("decimal", "valueDecimal", 37.5, True),
        ("decimal", "valueInteger", 37, True),
        ("decimal", "valueDecimal", "37.5", False),
        ("boolean", "valueBoolean", False, True),
        ("boolean", "valueBoolean", 0, False),
        ("string", "valueString", "", False),
        ("code", "valueCode", "active", True),
        ("date", "valueDate", "2026-12-01", True),
        ("Duration", "valueDuration", {"value": 3, "unit": "d"}, True),
        ("Duration", "valueDuration", {"unit": "d"}, False),
        ("Quantity", "valueQuantity", {"value": "3"}, False),
        (None, "valueInteger", 3, True),
        (None, "valueCoding", {"code": "x"}, True),
        (None, "valueCoding", None, False),
    ],
)
def test_check_parameter_value(declared: str | None, key: str, value: Any, ok: bool) -> None:
    problem = check_parameter_value(declared, key, value)
    assert (problem is None) is ok, problem
