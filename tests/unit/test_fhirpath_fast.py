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

from fhir_service.engine import fhirpath_fast, fhirpath_fast_predicate
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
        "id": "x-odd",
        "_status": {"extension": [{"url": "u"}]},
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": 72514},
                {"system": ["http://loinc.org"], "code": "2823-3"},
                [{"system": "http://loinc.org", "code": "2823-3"}],
                "2823-3",
            ]
        },
        "interpretation": [{"coding": [{"system": "s", "code": "H"}, {"code": "H"}]}],
        "referenceRange": [{"low": "4.0", "high": {"value": 5.0}}],
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
    # shapes of fhirpath_fast_predicate, and where it must decline
    "%Condition.where(verificationStatus.coding.where(system = '" + SYSTEM + "' and "
    "(code = 'entered-in-error' or code = 'refuted')).empty()).id",
    "%Condition.where(clinicalStatus.coding.where(system = '" + SYSTEM + "' and "
    "code = 'active').exists() and code.coding.where(system = 'http://snomed.info/sct')"
    ".exists()).id",
    "%Condition.where(clinicalStatus.coding.code = 'active').id",
    "%Condition.where(clinicalStatus.coding.where(code = 'active').exists()).id",
    "%Condition.where(clinicalStatus.coding.where(system = '" + SYSTEM + "').code = 'active').id",
    "%Condition.where(clinicalStatus.coding.system = '" + SYSTEM + "').id",
    "%Condition.where(code.coding.where(code = '45352006' xor system = 'x').exists()).id",
    "%Condition.where((code.coding.code = '45352006') or (onset.exists())).id",
    "%Condition.where(code.coding.code = '45352006' and onsetDateTime.exists()).id",
    "%Condition.where(code.memberOf('http://example.org/fhir/muscle-spasm/ValueSet/vs-mini-spasm')"
    " or clinicalStatus.empty()).id",
    "%Condition.where(code.memberOf('http://example.org/fhir/muscle-spasm/ValueSet/vs-mini-spasm')"
    " and clinicalDate().duration(today(), 'days') <= 60).id",
    "%Condition.where(code.coding.memberOf('http://example.org/fhir/muscle-spasm/ValueSet/"
    "vs-mini-spasm')).id",
    "%Condition.where(code.coding.where(code = 'x').memberOf('http://example.org/fhir/"
    "muscle-spasm/ValueSet/vs-mini-spasm')).id",
    "%Condition.where(id = 'x-multi').clinicalStatus.coding.where(system = '" + SYSTEM + "')",
    "%Condition.clinicalStatus.coding.where(system = '" + SYSTEM + "' and code = 'active')",
    "%Condition.clinicalStatus.coding.where(system = '" + SYSTEM + "').exists()",
    "%Condition.where(clinicalStatus.coding.where(code = 'active').exists()).clinicalStatus",
    "%Observation.where(status = 'final' or status = 'amended' or status = 'corrected').id",
    "%Observation.where(status = 'final' and code.coding.where(system = 'http://loinc.org'"
    " and (code = '72514-3')).exists()).id",
    "%Observation.where(code.coding.where(system = 'http://loinc.org' and code = '2823-3')"
    ".exists()).id",
    "%Observation.where(code.coding.code = '2823-3').id",
    "%Observation.where(code.coding.where(code = '72514-3').exists()).id",
    "%Observation.where(interpretation.coding.where(system = 's' and (code = 'H' or "
    "code = 'L')).exists() or value.ofType(Quantity).value > 5).id",
    "%Observation.where(interpretation.coding.code = 'H').id",
    "%Observation.where(referenceRange.low = '4.0').id",
    "%Observation.where(referenceRange.high.exists()).id",
    "%Observation.where(value.exists()).id",
    "%Observation.where(effective.exists() and status = 'final').id",
    "%Observation.where(status.exists()).id",
    "%Observation.where(status = 'final').status",
    "%Observation.where(status = 'final' and (status = 'final')).id",
    "%Observation.where(id = 'x-odd').code.coding.where(system = 'http://loinc.org')",
    "%Observation.where(code.coding.where(system = 'http://loinc.org').code = '2823-3').id",
    "%Observation.where(code.coding.exists() and code.memberOf('http://example.org/fhir/"
    "muscle-spasm/ValueSet/vs-mini-spasm').not()).id",
    "%Observation.exists(code.coding.where(code = '82810-3').exists())",
    "%Observation.all(status = 'final' or status = 'amended')",
    "%Observation.select(status = 'final')",
    "%Observation.code.coding.where(code = '82810-3').exists() and %Condition.exists()",
    "Patient.name.where(use = 'official' and family = 'Rivera').given",
    "Patient.gender = 'female' and Patient.name.where(use = 'official').exists()",
    "gender = 'female' or birthDate = '1970'",
    "name.where(given = 'Ana').exists()",
    "name.given = 'Ana'",
    "%MedicationRequest.where((status = 'active' or status = 'draft') and "
    "(intent = 'order' or intent = 'plan')).id",
    "%MedicationRequest.where(medication.exists() and status = 'active').id",
    "%QuestionnaireResponse.descendants().where(linkId = 'pain-nrs').answer.value",
    "%QuestionnaireResponse.descendants().where(linkId.exists()).linkId",
    "%QuestionnaireResponse.where(descendants().where(linkId = 'pain-nrs').answer.exists()).id",
    "%QuestionnaireResponse.item.where(linkId = 'pain-nrs' or linkId.exists().not()).linkId",
    "%QuestionnaireResponse.item.answer.where(valueBoolean = 'true').exists()",
    "%typed.where(code.coding.where(system = 'http://loinc.org').exists()).id",
    "%typed.where(status = 'final').value",
    "%typed.code.coding.where(code = '72514-3' or code = '82810-3').code",
    "%typedValues.where(coding.where(system = 'http://snomed.info/sct').exists())",
    "%typedValues.where(value = 7)",
]


def _terminology() -> Terminology:
    value_sets = [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted(MINI.glob("ValueSet-*.json"))
    ]
    return Terminology(value_sets)


@pytest.fixture(scope="module")
def compiler() -> FhirPathCompiler:
    return FhirPathCompiler(_terminology())


@pytest.fixture(scope="module")
def plain() -> FhirPathCompiler:
    """fhirpathpy alone: no fast predicates (and, in the test, its own functions)."""
    return FhirPathCompiler(_terminology(), fast_predicates=False)


def _env() -> dict[str, Any]:
    resources = [e["resource"] for e in RECORD["entry"]] + copy.deepcopy(EXTRA)
    env: dict[str, Any] = {"now": fhir_datetime(DEFAULT_NOW), "today": fhir_date(DEFAULT_NOW)}
    for resource in resources:
        env.setdefault(resource["resourceType"], []).append(resource)
    return env


def _run(compiler: FhirPathCompiler, expression: str, typed: bool) -> tuple[str, Any]:
    env = _env()
    data = build_data_set([RECORD, *EXTRA])
    try:
        with session(DEFAULT_NOW, data.resolve):
            # typed variables hold fhirpathpy's ResourceNodes, as the engine's Scope does
            env["typed"] = compiler.compile("%Observation").evaluate_typed(PATIENT, env)
            env["typedValues"] = compiler.compile("%Observation.value").evaluate_typed(PATIENT, env)
            compiled = compiler.compile(expression)
            run = compiled.evaluate_typed if typed else compiled.evaluate
            return "ok", [to_json(v) for v in run(PATIENT, env)]
    except Exception as exc:  # compare failures too
        return "error", type(exc).__name__


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_same_result_as_fhirpathpy(
    compiler: FhirPathCompiler, plain: FhirPathCompiler, expression: str, typed: bool
) -> None:
    fast = _run(compiler, expression, typed)
    with fhirpath_fast.original_fhirpathpy():
        original = _run(plain, expression, typed)
    assert fast == original
    assert _run(plain, expression, typed) == original  # fast internals, no fast predicates


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


def _fast_nodes(node: Any) -> list[str]:
    if not isinstance(node, dict):
        return []
    if node.get("type") == fhirpath_fast_predicate.FAST_NODE:
        return [str(node["original"]["type"])]
    return [t for child in node.get("children") or [] for t in _fast_nodes(child)]


@pytest.mark.parametrize(
    ("expression", "fast"),
    [
        (
            "%C.where(code.coding.where(system = 'S' and (code = 'a' or code = 'b')).exists())",
            ["InvocationExpression"],
        ),
        ("%C.where(status = 'final' or status = 'amended')", ["OrExpression"]),
        ("%C.where(code.memberOf('u') and onset.exists())", ["AndExpression"]),
        ("%C.where(code.memberOf('u') and %x)", ["InvocationExpression"]),
        ("%C.where(Observation.exists())", []),  # a type name
        ("%C.where(status = %s)", []),  # only string literals
        ("%C.where(a.b.c.exists() xor x = 'y')", ["InvocationExpression", "EqualityExpression"]),
        ("%C.where($this.a = 'y')", []),
        ("%C.where(a.ofType(Coding).exists())", []),
        ("%C.where(a.where(b).exists())", []),
        ("%C.where(a.first() = 'y')", []),
        ("%C.where(`a` = 'y')", []),
        ("%C.where(a = 1)", []),
        ("'a' = 'a'", []),
    ],
)
def test_fast_predicate_shapes(
    compiler: FhirPathCompiler, expression: str, fast: list[Any]
) -> None:
    compiled = compiler.compile(expression)
    assert _fast_nodes(compiled.fn.parsedPath) == fast  # type: ignore[attr-defined]


def test_fast_predicate_declines_at_run_time() -> None:
    """A value the closure cannot compare exactly goes to fhirpathpy (same result)."""
    fresh = FhirPathCompiler(Terminology([]))
    calls: list[Any] = []
    original = fhirpath_fast_predicate.engine.do_eval

    def counting(ctx: Any, parent: Any, node: Any) -> Any:
        if node.get("type") == "EqualityExpression":
            calls.append(node)
        return original(ctx, parent, node)

    expression = "%C.where(code = 'a').id"
    env = {"C": [{"id": "n", "code": 1}, {"id": "s", "code": "a"}, {"id": "e", "_code": {}}]}
    fhirpath_fast_predicate.engine.do_eval = counting
    try:
        with session(DEFAULT_NOW):
            result = fresh.compile(expression).evaluate({}, env)
    finally:
        fhirpath_fast_predicate.engine.do_eval = original
    assert result == ["s"]
    assert len(calls) == 2  # the number and the extension-only code; the string was fast
