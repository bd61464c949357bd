"""The FHIRPath layer: compile once (cache), strict parsing, the session clock, thread safety.

The expression cases themselves live in ``tests/fhirpath/*.yaml``; this file checks the
machinery around them, including that serving calls compiles nothing after start-up.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhirpathpy.parser import parse as fhirpathpy_parse

import fhir_service.engine.fhirpath as fhirpath_module
from fhir_service.engine.apply.values import to_json
from fhir_service.engine.fhirpath import (
    EvaluationSession,
    FhirPathCompiler,
    as_boolean,
    clinical_date,
    parse_strict,
)
from tests.conftest import DEFAULT_NOW, make_app

NOW = DEFAULT_NOW


def run(compiler: FhirPathCompiler, expression: str, resource: Any = None, **env: Any) -> Any:
    compiled = compiler.compile(expression)
    return [to_json(v) for v in compiled.evaluate(resource, env, EvaluationSession(NOW))]


# --- compile once -------------------------------------------------------------------------


def test_compile_is_cached() -> None:
    compiler = FhirPathCompiler()
    first = compiler.compile("%a.exists() and %b.not()")
    assert compiler.compiled_count == 1
    for _ in range(5):
        assert compiler.compile("%a.exists() and %b.not()") is first
    assert compiler.compiled_count == 1
    compiler.compile("%a.exists()")
    assert compiler.compiled_count == 2


def test_evaluating_does_not_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = FhirPathCompiler()
    compiled = compiler.compile("%xs.where($this > 1).count()")
    parses: list[str] = []
    original = fhirpath_module.parse_strict

    def counting(expression: str) -> dict[str, Any]:
        parses.append(expression)
        return original(expression)

    monkeypatch.setattr(fhirpath_module, "parse_strict", counting)
    for n in range(20):
        assert compiled.evaluate({}, {"xs": list(range(n))}) == [max(0, n - 2)]
    compiler.compile("%xs.where($this > 1).count()")
    assert parses == []


def test_a_failed_compile_is_not_cached() -> None:
    compiler = FhirPathCompiler()
    for _ in range(2):
        with pytest.raises(ValueError, match="does not parse"):
            compiler.compile("1 +")
    assert compiler.compiled_count == 0


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("%a and %b.exists()", {"a", "b"}),
        ("%`vs-name`.exists() or %c_1", {"vs-name", "c_1"}),
        ("%context.id = %resource.id and %ucum.exists()", set()),
        ("Patient.name", set()),
    ],
)
def test_variables_read_by_an_expression(expression: str, names: set[str]) -> None:
    assert FhirPathCompiler().compile(expression).variables == names


# --- strict parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "Patient.name.where(use = 'official').given.first()",
        "%a.exists() and (%b or %c.not())",
        "iif(%x > 1, 'a', 'b') + 'c'",
        "today() - 30 days",
        "@2024-01-31 + 1 month",
        "Observation.value.ofType(Quantity).value >= 7",
        "code.coding.where(memberOf('http://x/vs')).exists()",
        "(1 | 2 | 3).select($this * 2)",
        "'it\\'s'",
    ],
)
def test_strict_parse_gives_the_ast_fhirpathpy_builds(expression: str) -> None:
    assert parse_strict(expression) == fhirpathpy_parse(expression)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("'the seed's text'", "near"),
        ("where(code = ).exists(", "syntax error"),
        ("a b", "unexpected 'b'"),
        ("1 +", "syntax error"),
        ("'unterminated", "does not parse"),
    ],
)
def test_strict_parse_errors_say_where(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FhirPathCompiler().compile(expression)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("Patient.name.foo()", r"foo\(\) is not supported"),
        ("Patient.name.where()", r"where\(\) takes 1 argument"),
        ("memberOf()", r"memberOf\(\) takes 1 argument"),
        ("today(1)", r"today\(\) takes 0 argument"),
        ("Patient.resolve('x')", r"resolve\(\) takes 0"),
    ],
)
def test_unknown_functions_and_wrong_arity_are_refused(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FhirPathCompiler().compile(expression)


# --- the session clock --------------------------------------------------------------------


def test_now_and_today_need_a_session() -> None:
    compiled = FhirPathCompiler().compile("today()")
    with pytest.raises(RuntimeError, match="without an evaluation session"):
        compiled.evaluate({}, {})


def test_each_evaluation_reads_its_own_session() -> None:
    compiled = FhirPathCompiler().compile("today()")
    first = EvaluationSession(datetime(2020, 1, 1, tzinfo=UTC))
    second = EvaluationSession(datetime(2021, 6, 1, tzinfo=UTC))
    assert [str(v) for v in compiled.evaluate({}, {}, second)] == ["2021-06-01"]
    assert [str(v) for v in compiled.evaluate({}, {}, first)] == ["2020-01-01"]


def test_now_and_percent_now_are_one_clock() -> None:
    """FHIRPath ``now()`` and the engine's ``%now`` read the call's one instant."""
    from fhir_service.engine.apply.evaluation import CallInput, Scope
    from fhir_service.engine.data.dataset import DataSet
    from fhir_service.errors import IssueLog

    call = CallInput(DataSet(), datetime(2024, 2, 29, 8, 30, tzinfo=UTC))
    scope = Scope(call, {}, {}, IssueLog())
    compiled = FhirPathCompiler().compile("now() = %now and today() = %today")
    assert scope.evaluate(compiled, "test") == [True]


def test_each_thread_sees_its_own_clock() -> None:
    compiled = FhirPathCompiler().compile("today()")
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        current = EvaluationSession(NOW + timedelta(days=n))
        barrier.wait()
        out = []
        for _ in range(20):
            out += [str(v) for v in compiled.evaluate({}, {}, current)]
        results[n] = out

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(4):
        expected = (NOW + timedelta(days=n)).date().isoformat()
        assert set(results[n]) == {expected}


def test_the_wall_clock_is_never_read() -> None:
    long_ago = EvaluationSession(datetime(1999, 12, 31, 23, 0, tzinfo=UTC))
    for expression, expected in (("today()", "1999-12-31"), ("timeOfDay()", "23:00:00")):
        compiled = FhirPathCompiler().compile(expression)
        assert [str(v) for v in compiled.evaluate({}, {}, long_ago)] == [expected]


# --- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected"),
    [([True], True), ([False], False), ([], None), ([True, True], None), (["true"], None)],
)
def test_as_boolean(result: list[Any], expected: bool | None) -> None:
    assert as_boolean(result) is expected


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Condition", "onsetPeriod": {"start": "2026-01-02"}}, "2026-01-02"),
        ({"resourceType": "Condition", "onsetString": "childhood"}, None),
        (
            {"resourceType": "Observation", "effectiveInstant": "2026-01-02T03:04:05Z"},
            "2026-01-02T03:04:05Z",
        ),
        ({"resourceType": "Procedure", "performedDateTime": "2026-01-03"}, "2026-01-03"),
        ({"resourceType": "Encounter", "period": {"start": "2026-01-04"}}, "2026-01-04"),
        ({"resourceType": "MedicationDispense", "whenPrepared": "2026-01-05"}, "2026-01-05"),
        ({"resourceType": "Patient", "birthDate": "2000-01-01"}, None),
        ("not a resource", None),
    ],
)
def test_clinical_date_paths(resource: Any, expected: str | None) -> None:
    assert clinical_date(resource) == expected


def test_member_of_an_unknown_value_set_fails_the_expression() -> None:
    compiler = FhirPathCompiler()
    with pytest.raises(KeyError):
        run(compiler, "%c.memberOf('http://x/unknown')", c={"system": "s", "code": "c"})


# --- serving compiles nothing ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path_factory.mktemp("compile-once"))) as client:
        yield client


def _record() -> dict[str, list[dict[str, Any]]]:
    day = (NOW - timedelta(days=3)).date().isoformat()
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "45352006"}]},
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": day,
    }
    order = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "828348"}]
        },
        "subject": {"reference": "Patient/p1"},
        "authoredOn": day,
    }
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": day + "T10:00:00Z",
        "valueQuantity": {"value": 8, "unit": "{score}"},
    }
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}
    return {
        "Condition": [condition],
        "MedicationRequest": [order],
        "Observation": [observation],
        "Patient": [patient],
    }


def _hook_body(client: TestClient, service_id: str) -> dict[str, Any]:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    service = runtime.services[service_id]
    record = _record()
    prefetch: dict[str, Any] = {}
    for template in service.prefetch:
        found = record.get(template.resource_type, [])
        if template.query.startswith(f"{template.resource_type}/"):
            prefetch[template.key] = found[0] if found else None
        else:
            prefetch[template.key] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in found],
            }
    draft = dict(record["MedicationRequest"][0], id="draft-1", status="draft")
    context: dict[str, Any] = {"userId": "Practitioner/dr", "patientId": "p1"}
    if service.hook == "encounter-start":
        context["encounterId"] = "e1"
    if service.hook in ("order-select", "order-sign"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
    if service.hook == "order-select":
        context["selections"] = ["MedicationRequest/draft-1"]
    return {
        "hook": service.hook,
        "hookInstance": "0e7e5d55-7f0c-4b3f-9d5a-2f5d6c3e0a11",
        "context": context,
        "prefetch": prefetch,
    }


def test_serving_calls_compiles_nothing_after_start_up(
    served: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = served.app.state.runtime  # type: ignore[attr-defined]
    compiler: FhirPathCompiler = runtime.engine.compiler
    assert compiler is runtime.knowledge.compiler
    before = compiler.compiled_count
    parses: list[str] = []
    original = fhirpath_module.parse_strict

    def counting(expression: str) -> dict[str, Any]:
        parses.append(expression)
        return original(expression)

    monkeypatch.setattr(fhirpath_module, "parse_strict", counting)
    for service_id in sorted(runtime.services):
        response = served.post(f"/cds-services/{service_id}", json=_hook_body(served, service_id))
        assert response.status_code == 200, response.text
    record = [r for resources in _record().values() for r in resources]
    data = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subject", "valueString": "Patient/p1"},
            {
                "name": "data",
                "resource": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": r} for r in record],
                },
            },
        ],
    }
    for plan in runtime.knowledge.of_type("PlanDefinition"):
        response = served.post(f"/fhir/PlanDefinition/{plan.id}/$apply", json=data)
        assert response.status_code == 200, response.text
    for activity in runtime.knowledge.of_type("ActivityDefinition"):
        response = served.get(f"/fhir/ActivityDefinition/{activity.id}/$apply?subject=p1")
        assert response.status_code == 200, response.text
    assert parses == [], parses
    assert compiler.compiled_count == before


def test_every_expression_of_the_knowledge_is_compiled_at_start_up(served: TestClient) -> None:
    from fhir_service.engine.fhirpath.expressions import iter_expressions

    runtime = served.app.state.runtime  # type: ignore[attr-defined]
    compiler: FhirPathCompiler = runtime.engine.compiler
    before = compiler.compiled_count
    for art in runtime.knowledge.artifacts:
        for _path, expr in iter_expressions(art.resource, art.resource_type):
            compiler.compile(expr["expression"])
    assert compiler.compiled_count == before
