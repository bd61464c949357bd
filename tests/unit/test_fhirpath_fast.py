"""The fhirpathpy speed-ups (``fhirpath_fast``) give fhirpathpy's own results.

Each expression runs twice on the same data: with the service's fast internals, and with
fhirpathpy's original functions restored (``original_fhirpathpy``). Results (typed and
plain), and failures, must be the same.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, cast

import pytest

from fhir_service.engine import fhirpath_fast
from fhir_service.engine.data import build_data_set
from fhir_service.engine.fhirpath import FhirPathCompiler, fhir_date, fhir_datetime, session
from fhir_service.engine.terminology import Terminology
from fhir_service.engine.values import to_json
from tests.conftest import DEFAULT_NOW

HERE = Path(__file__).resolve().parent.parent
MINI = HERE / "fixtures" / "definitions-mini"
RECORD = json.loads((HERE / "fhirpath" / "resources" / "record.json").read_text("utf-8"))
PATIENT = json.loads((HERE / "fhirpath" / "resources" / "patient.json").read_text("utf-8"))

SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
#: Codings with no system, two codings, a primitive extension next to a code, a choice type.
EXTRA: list[dict[str, Any]] = [
    {
        "resourceType": "Condition",
        "id": "x-multi",
        "clinicalStatus": {
            "coding": [
                {"code": "active"},
                {"system": SYSTEM, "code": "recurrence"},
                {"system": SYSTEM, "code": "active"},
            ]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "45352006"}]},
        "onsetDateTime": "2026-11-01",
    },
    {
        "resourceType": "Condition",
        "id": "x-ext",
        "clinicalStatus": {
            "coding": [{"system": SYSTEM, "code": "active", "_code": {"extension": [{"url": "u"}]}}]
        },
        "code": {"text": "no codings"},
    },
    {"resourceType": "Condition", "id": "x-empty"},
    {
        "resourceType": "Observation",
        "id": "x-obs",
        "status": "final",
        "_status": {"extension": [{"url": "u", "valueString": "s"}]},
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "valueQuantity": {"value": 7, "unit": "{score}"},
        "effectiveDateTime": "2026-11-30T10:00:00Z",
    },
    {
        "resourceType": "Observation",
        "id": "x-obs2",
        "status": "amended",
        "code": {"coding": [{"system": "http://loinc.org", "code": "82810-3"}]},
        "valueCodeableConcept": {
            "coding": [{"system": "http://snomed.info/sct", "code": "77386006"}]
        },
    },
]

EXPRESSIONS = [
    # where(): boolean, empty, non-boolean and nested criteria; $this, $index
    "%Condition.where(clinicalStatus.coding.where(system = '" + SYSTEM + "' and "
    "(code = 'active' or code = 'recurrence')).exists()).id",
    "%Condition.where(verificationStatus.coding.where(code = 'refuted').empty()).id",
    "%Condition.where(code.coding.code = '45352006').id",
    "%Condition.where(code.coding.where(system = 'http://snomed.info/sct').code).id",
    "%Condition.where(onset).id",
    "%Condition.where(id).id",
    "%Condition.where(clinicalStatus).clinicalStatus.coding.code",
    "%Condition.where({}).id",
    "%Condition.where($index > 1).id",
    "%Condition.where($this.id = 'x-ext').id",
    "%Condition.where(id = 'x-multi').clinicalStatus.coding.where(system.exists())",
    "%Condition.exists(code.coding.where(code = '45352006').exists())",
    "%Condition.exists(id = 'nope')",
    "%Observation.where(status = 'final' or status = 'amended').id",
    "%Observation.where(status = 'final').id",
    "%Observation.where(value.ofType(Quantity).value > 5).id",
    "%Observation.where(value.ofType(CodeableConcept).coding.where(code = '77386006')"
    ".exists()).value",
    "%Observation.where(code.memberOf('http://example.org/fhir/muscle-spasm/ValueSet/vs-mini-spasm')).id",
    "%Condition.where(code.memberOf('http://example.org/fhir/muscle-spasm/ValueSet/vs-mini-spasm')).id",
    "%Condition.where(clinicalDate().duration(today(), 'days') <= 30).id",
    "%Condition.select(id).where($this = 'x-ext' or $this = 'x-empty')",
    "%Condition.where(id = 'x-multi').clinicalStatus.coding.where(code = 'active').system",
    "{}.where(true)",
    # literals and identifiers (cached by text)
    "'it\\'s' + ' \\\\ ' + 'tab\\there' + '\\u0041'",
    "'a' = 'a' and 'it\\'s' = 'it\\'s'",
    "%`Condition`.count()",
    "Patient.`name`.given",
    "Patient.name.where(use = 'official').given.first()",
    "Patient.name.where(given.exists()).family",
    "Patient.gender = 'female'",
    "Patient.birthDate < @2000-01-01",
    "(1 | 2 | 3).where($this > 1)",
    "(1 | 2).select($this * 2).where($this = 4)",
    "('a' | 'b').where($this = 'b').exists()",
    "Patient.name.given.where($this.startsWith('J'))",
    "1 + 1 = 2 and (true or {}) and -(3) < 0",
    "%Condition.where(id = 'x-multi').single().id",
    "%Condition.single()",
    "%Condition.where(id.length() > 6).id",
]


@pytest.fixture(scope="module")
def compiler() -> FhirPathCompiler:
    value_sets = [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted(MINI.glob("ValueSet-*.json"))
    ]
    return FhirPathCompiler(Terminology(value_sets))


def _env() -> dict[str, Any]:
    resources = [e["resource"] for e in RECORD["entry"]] + copy.deepcopy(EXTRA)
    env: dict[str, Any] = {"now": fhir_datetime(DEFAULT_NOW), "today": fhir_date(DEFAULT_NOW)}
    for resource in resources:
        env.setdefault(resource["resourceType"], []).append(resource)
    return env


def _run(compiler: FhirPathCompiler, expression: str, typed: bool) -> tuple[str, Any]:
    env = _env()
    data = build_data_set([RECORD, *EXTRA])
    compiled = compiler.compile(expression)
    run = compiled.evaluate_typed if typed else compiled.evaluate
    try:
        with session(DEFAULT_NOW, data.resolve):
            return "ok", [to_json(v) for v in run(PATIENT, env)]
    except Exception as exc:  # compare failures too
        return "error", type(exc).__name__


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_same_result_as_fhirpathpy(
    compiler: FhirPathCompiler, expression: str, typed: bool
) -> None:
    fast = _run(compiler, expression, typed)
    with fhirpath_fast.original_fhirpathpy():
        original = _run(compiler, expression, typed)
    assert fast == original


def test_fast_internals_are_installed() -> None:
    from fhirpathpy import engine

    assert engine.doInvoke is fhirpath_fast.do_invoke
    assert engine.infix_invoke is fhirpath_fast.infix_invoke
    with fhirpath_fast.original_fhirpathpy():
        assert engine.doInvoke is not fhirpath_fast.do_invoke
    assert engine.doInvoke is fhirpath_fast.do_invoke


def test_where_evaluates_its_criteria_once_per_item() -> None:
    """fhirpathpy ran the criteria twice for each item they kept (``check_macro_expr``)."""
    fresh = FhirPathCompiler(Terminology([]))
    calls: list[Any] = []
    original = fresh._table["clinicalDate"]["fn"]  # noqa: SLF001 - count calls of a function

    def counting(inputs: list[Any]) -> list[str]:
        calls.append(inputs)
        return cast(list[str], original(inputs))

    fresh._table["clinicalDate"]["fn"] = counting  # noqa: SLF001
    result = _run(fresh, "%Condition.where(clinicalDate().exists()).id", False)
    assert result == ("ok", ["c-spasm", "c-cramp-icd", "c-recorded-only", "c-error", "x-multi"])
    assert len(calls) == len(_env()["Condition"])
