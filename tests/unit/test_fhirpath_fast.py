"""The service's compiled FHIRPath (``fhirpath.closures``) gives plain fhirpathpy's results.

Each expression runs twice on the same data: compiled into the service's closures, and with
``fhirpathpy.compile`` (``tests/fhirpath/plain.py``: its own interpreter, the service's
functions given as a user table). Results (typed and plain), and failures, must be the same.
The shapes below are the ones the closures handle specially (string equality, ``where``,
``exists(criteria)``, member steps over choice types and primitive extensions, typed
variables) and where they must fall back to fhirpathpy's functions.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.apply.values import to_json
from fhir_service.engine.data.dataset import build_data_set
from fhir_service.engine.fhirpath import (
    EvaluationSession,
    FhirPathCompiler,
    fhir_date,
    fhir_datetime,
)
from fhir_service.engine.fhirpath.closures import ClosureCompiler
from fhir_service.engine.terminology.membership import Terminology
from tests.conftest import DEFAULT_NOW
from tests.fhirpath.plain import PlainArm

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
    # shapes the closures specialise (string equality, where, exists), and their fallbacks
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
def plain(compiler: FhirPathCompiler) -> PlainArm:
    return PlainArm(compiler)


def _env(compiler: FhirPathCompiler, session: EvaluationSession) -> dict[str, Any]:
    resources = [e["resource"] for e in RECORD["entry"]] + copy.deepcopy(EXTRA)
    env: dict[str, Any] = {"now": fhir_datetime(DEFAULT_NOW), "today": fhir_date(DEFAULT_NOW)}
    for resource in resources:
        env.setdefault(resource["resourceType"], []).append(resource)
    # typed variables hold fhirpathpy's ResourceNodes, as the engine's Scope does
    env["typed"] = compiler.compile("%Observation").evaluate_typed(PATIENT, env, session)
    env["typedValues"] = compiler.compile("%Observation.value").evaluate_typed(
        PATIENT, env, session
    )
    return env


def _session() -> EvaluationSession:
    data = build_data_set([RECORD, *EXTRA])
    return EvaluationSession(DEFAULT_NOW, data.resolve, data.resolve_scoped)


def _outcome(run: Any) -> tuple[str, Any]:
    try:
        return "ok", [to_json(v) for v in run()]
    except Exception as exc:  # compare failures too
        return "error", type(exc).__name__


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_same_result_as_fhirpathpy(
    compiler: FhirPathCompiler, plain: PlainArm, expression: str, typed: bool
) -> None:
    session = _session()
    env = _env(compiler, session)
    compiled = compiler.compile(expression)
    run = compiled.evaluate_typed if typed else compiled.evaluate
    ours = _outcome(lambda: run(PATIENT, env, session))
    theirs = _outcome(lambda: plain.evaluate(expression, PATIENT, env, session, typed=typed))
    assert ours == theirs


def test_where_evaluates_its_criteria_once_per_item() -> None:
    calls: list[Any] = []
    fresh = FhirPathCompiler(Terminology([]))

    def counting(_ctx: Any, inputs: list[Any]) -> list[str]:
        calls.append(inputs)
        return ["2026-01-01"]

    fresh.functions["clinicalDate"] = {"fn": counting, "arity": {0: []}}
    fresh = _recompiling(fresh)
    items = [{"resourceType": "Condition", "id": str(i)} for i in range(3)]
    result = fresh.compile("%xs.where(clinicalDate().exists())").evaluate({}, {"xs": items})
    assert [r["id"] for r in result] == ["0", "1", "2"]
    assert len(calls) == 3  # fhirpathpy evaluates the criteria twice for each kept item


def _recompiling(compiler: FhirPathCompiler) -> FhirPathCompiler:
    """``compiler`` with its closure compiler rebuilt over its (changed) function table."""
    compiler._closures = ClosureCompiler(compiler.functions, None)
    return compiler


def test_every_fhirpathpy_node_kind_has_a_closure() -> None:
    from fhirpathpy.engine.evaluators import evaluators

    known = {k for k in evaluators if k not in ("Functn", "ParamList", "Identifier")}
    missing = {k for k in known if not hasattr(ClosureCompiler, f"_n_{k}")}
    assert not missing


def test_short_circuit_is_the_only_boolean_difference(
    compiler: FhirPathCompiler, plain: PlainArm
) -> None:
    """``false and <error>`` is false here and an error in fhirpathpy (docs/fhirpath.md)."""
    session = _session()
    expression = "false and ((1 | 2).single() = 1)"
    ours = _outcome(lambda: compiler.compile(expression).evaluate({}, {}, session))
    theirs = _outcome(lambda: plain.evaluate(expression, {}, {}, session, typed=False))
    assert ours == ("ok", [False])
    assert theirs[0] == "error"
    for decided in ("true and false", "true or {}", "{} implies true", "false xor true"):
        ours = _outcome(lambda: compiler.compile(decided).evaluate({}, {}, session))  # noqa: B023
        theirs = _outcome(lambda: plain.evaluate(decided, {}, {}, session, typed=False))  # noqa: B023
        assert ours == theirs


def test_trace_takes_a_name_and_a_projection(compiler: FhirPathCompiler) -> None:
    session = _session()
    compiled = compiler.compile("%xs.trace('xs', $this.id).count()")
    assert compiled.evaluate({}, {"xs": [{"id": "a"}, {"id": "b"}]}, session) == [2]
