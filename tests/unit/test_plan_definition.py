"""The PlanDefinition engine on the tiny ``tests/fixtures/definitions-mini`` knowledge base,
and the data set it evaluates over.

Engine behaviour under test (docs/authoring.md, https://hl7.org/fhir/R4/plandefinition.html):
library variables are computed at most once per call and only when read; a condition that errors or
is not a boolean skips its action with an issue; dynamicValues template ``action.*``;
definitionCanonical builds requests and nested RequestGroups; update/remove name a draft order via
the ``action-target`` extension. Nothing in the engine knows a rule.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.apply.evaluation import CallInput, Scope, VariableDef
from fhir_service.engine.apply.plan_definition import ApplyResult, PlanEngine, action_type, hooks_of
from fhir_service.engine.data.dataset import build_data_set, flatten
from fhir_service.errors import IssueLog
from fhir_service.knowledge.loader import load_definitions
from fhir_service.knowledge.repository import KnowledgeBase
from tests.conftest import DEFAULT_NOW

MINI = Path(__file__).resolve().parent.parent / "fixtures" / "definitions-mini"
ENGINE = Path(__file__).resolve().parent.parent.parent / "fhir_service" / "engine"
NOW = DEFAULT_NOW
SCT = "http://snomed.info/sct"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


@pytest.fixture(scope="module")
def knowledge() -> KnowledgeBase:
    artifacts, terminology, compiler = load_definitions(MINI)
    return KnowledgeBase(artifacts, terminology, compiler)


@pytest.fixture
def engine(knowledge: KnowledgeBase) -> PlanEngine:
    return PlanEngine(knowledge)


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"id-{next(counter)}"


def spasm(cid: str = "c-spasm", days_ago: int = 3) -> dict[str, Any]:
    from datetime import timedelta

    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "code": {"coding": [{"system": SCT, "code": "45352006"}]},
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": (NOW - timedelta(days=days_ago)).date().isoformat(),
    }


def order(mid: str, status: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "21949"}]
        },
        "subject": {"reference": "Patient/p1"},
        "dispenseRequest": {"expectedSupplyDuration": {"value": 30, "unit": "days"}},
    }


class Applied:
    """Apply plans of the mini knowledge base within one call (one shared scope)."""

    def __init__(self, engine: PlanEngine, *record: dict[str, Any], **call: Any) -> None:
        self.engine = engine
        self.data = build_data_set(list(record), drafts_from_status=True)
        self.issues = IssueLog()
        self.call = CallInput(self.data, NOW, "p1", call.get("triggers"), call.get("params", {}))
        self.scope = engine.new_scope(self.call, self.issues)
        self.new_id = ids()

    def apply(self, plan_id: str, hook: str | None = None) -> ApplyResult:
        plan = self.engine.knowledge.read("PlanDefinition", plan_id)
        assert plan is not None
        return self.engine.apply(plan.resource, self.scope, "Patient/p1", self.new_id, hook)


def top_ids(result: ApplyResult) -> list[str]:
    return [a.get("id", "") for a in result.request_group.get("action", [])]


def diagnostics(issues: IssueLog) -> str:
    return "\n".join(
        f"{i.severity} {i.diagnostics} @ {','.join(i.expression)}" for i in issues.issues
    )


# --- library variables: at most once per call, only when read ------------------------------


class Counting:
    """A CompiledExpression stand-in that counts its evaluations (whichever entry point the
    engine uses: ``evaluate`` or ``evaluate_typed``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.expression = inner.expression
        self.variables = inner.variables
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not name.startswith("evaluate") or not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return target(*args, **kwargs)

        return counted

    def evaluate(self, resource: Any, env: Any, session: Any = None) -> list[Any]:
        self.calls += 1
        result: list[Any] = self.inner.evaluate(resource, env, session)
        return result


def count_library_variables(engine: PlanEngine) -> dict[str, Counting]:
    counters = {name: Counting(var.expression) for name, var in engine.library_variables.items()}
    engine.library_variables = {
        name: VariableDef(var.name, counters[name], var.source)  # type: ignore[arg-type]
        for name, var in engine.library_variables.items()
    }
    return counters


def test_library_variables_are_evaluated_at_most_once_per_call(engine: PlanEngine) -> None:
    counters = count_library_variables(engine)
    call = Applied(engine, spasm(), order("mr-d", "draft"))
    for plan_id in ("mini-rule", "mini-nested", "mini-orders", "mini-rule"):
        call.apply(plan_id)
    # recentSpasm is read by mini-rule (twice), mini-nested, mini-referral; spasmConditions
    # by recentSpasm and two dynamicValues; each was computed once
    assert counters["recentSpasm"].calls == 1
    assert counters["spasmConditions"].calls == 1
    assert counters["validConditions"].calls == 1
    assert all(c.calls <= 1 for c in counters.values()), {n: c.calls for n, c in counters.items()}


def test_variables_are_evaluated_only_when_read(engine: PlanEngine) -> None:
    counters = count_library_variables(engine)
    Applied(engine, spasm()).apply("mini-nested")
    assert counters["recentSpasm"].calls == 1
    assert counters["brokenValue"].calls == 0
    assert counters["drugNames"].calls == 0


def test_each_call_evaluates_afresh(engine: PlanEngine) -> None:
    counters = count_library_variables(engine)
    first = Applied(engine, spasm()).apply("mini-nested")
    second = Applied(engine).apply("mini-nested")
    assert top_ids(first) == ["n-educate"]
    assert top_ids(second) == []
    assert counters["recentSpasm"].calls == 2


def test_a_failing_variable_is_reported_once_and_reads_as_empty(engine: PlanEngine) -> None:
    call = Applied(engine, spasm())
    call.apply("mini-rule")
    call.apply("mini-rule")
    failures = [i for i in call.issues.issues if "variable[brokenValue]" in ",".join(i.expression)]
    assert len(failures) == 1
    assert failures[0].severity == "error"


def test_a_variable_that_refers_to_itself_is_an_issue_not_a_crash(engine: PlanEngine) -> None:
    compiler = engine.compiler
    looping = {
        "loop": VariableDef("loop", compiler.compile("%loop.exists()"), "test.variable[loop]")
    }
    issues = IssueLog()
    scope = Scope(CallInput(build_data_set([]), NOW), looping, {}, issues)
    assert scope.get("loop") == [False]
    assert "refers to itself" in diagnostics(issues)


def test_parameters_override_defaults(engine: PlanEngine) -> None:
    old = spasm(days_ago=20)
    assert "a-fires" in top_ids(Applied(engine, old).apply("mini-rule"))
    quiet = Applied(engine, old, params={"P_DAYS": 10}).apply("mini-rule")
    assert "a-fires" not in top_ids(quiet)
    assert engine.parameter_types == {"P_DAYS": "integer", "P_LIMIT": "decimal"}


# --- conditions ---------------------------------------------------------------------------


def test_failing_and_non_boolean_conditions_skip_only_their_action(engine: PlanEngine) -> None:
    call = Applied(engine, spasm())
    result = call.apply("mini-rule")
    assert top_ids(result) == ["a-fires", "a-always", "a-nested"]
    text = diagnostics(call.issues)
    assert "PlanDefinition/mini-rule.PlanDefinition.action[1].condition[0]" in text
    assert "expression failed" in text
    assert "did not return a boolean @ PlanDefinition/mini-rule.PlanDefinition.action[2]" in text
    # the plan's own issues are on its result too
    assert result.issues.issues


def test_an_empty_condition_result_is_not_applicable_and_not_an_issue(engine: PlanEngine) -> None:
    call = Applied(engine)  # no spasm: %spasmConditions.code is empty
    result = call.apply("mini-rule")
    assert "a-nonbool" not in top_ids(result)
    assert "a-nonbool" not in diagnostics(call.issues)
    assert "action[2]" not in diagnostics(call.issues)


def test_hook_limits_top_level_actions_to_its_trigger(engine: PlanEngine) -> None:
    call = Applied(engine, spasm())
    assert top_ids(call.apply("mini-rule", hook="patient-view")) == ["a-fires"]
    assert top_ids(call.apply("mini-rule", hook="order-sign")) == []
    assert top_ids(call.apply("mini-rule", hook="encounter-start")) == []


def test_unsupported_language_and_unparsable_expressions_are_issues(engine: PlanEngine) -> None:
    plan = {
        "resourceType": "PlanDefinition",
        "id": "adhoc",
        "url": "http://example.org/fhir/muscle-spasm/PlanDefinition/adhoc",
        "action": [
            {
                "id": "cql",
                "condition": [
                    {
                        "kind": "applicability",
                        "expression": {"language": "text/cql", "expression": "Foo"},
                    }
                ],
            },
            {
                "id": "bad-title",
                "dynamicValue": [
                    {
                        "path": "action.title",
                        "expression": {"language": "text/fhirpath", "expression": "1 +"},
                    },
                    {
                        "path": "action.description",
                        "expression": {"language": "text/cql", "expression": "X"},
                    },
                ],
            },
            {"id": "start-condition", "condition": [{"kind": "start"}]},
        ],
    }
    call = Applied(engine)
    result = engine.apply(plan, call.scope, "Patient/p1", ids())
    assert top_ids(result) == ["bad-title", "start-condition"]
    assert "title" not in result.request_group["action"][0]
    text = diagnostics(call.issues)
    assert "language not supported" in text
    assert "does not parse" in text


# --- dynamicValue, definitionCanonical ------------------------------------------------------


def test_dynamic_values_template_the_action(engine: PlanEngine) -> None:
    result = Applied(engine, spasm(), spasm("c-2", 5)).apply("mini-rule")
    fires = result.request_group["action"][0]
    assert fires["title"] == "Spasm within 30 days"
    assert fires["description"] == "Conditions: 2"
    assert fires["priority"] == "urgent"  # copied from the PlanDefinition action


def test_definition_canonical_to_an_activity_definition(engine: PlanEngine) -> None:
    result = Applied(engine, spasm()).apply("mini-rule")
    create = result.request_group["action"][0]["action"][0]
    assert action_type(create) == "create"
    reference = create["resource"]["reference"]
    by_id = {f"#{r['id']}": r for r in result.resources}
    referral = by_id[reference]
    assert referral["resourceType"] == "ServiceRequest"
    assert referral["status"] == "draft" and referral["intent"] == "proposal"
    assert referral["reasonReference"] == [{"reference": "Condition/c-spasm"}]
    assert referral["priority"] == "urgent"


def test_definition_canonical_to_a_nested_plan(engine: PlanEngine) -> None:
    result = Applied(engine, spasm()).apply("mini-rule")
    nested_action = result.request_group["action"][2]
    by_id = {f"#{r['id']}": r for r in result.resources}
    nested = by_id[nested_action["resource"]["reference"]]
    assert nested["resourceType"] == "RequestGroup"
    assert nested["instantiatesCanonical"] == [
        "http://example.org/fhir/muscle-spasm/PlanDefinition/mini-nested|0.1.0"
    ]
    education = by_id[nested["action"][0]["resource"]["reference"]]
    assert education["resourceType"] == "CommunicationRequest"
    # every #reference of the result resolves among its resources
    for resource in [result.request_group, *result.resources]:
        for ref in re.findall(r"'reference': '(#[^']+)'", str(resource)):
            assert ref in by_id
    # ids are unique across the walk
    assert len(by_id) == len(result.resources)


def test_a_dangling_definition_is_an_issue(engine: PlanEngine) -> None:
    plan = {
        "resourceType": "PlanDefinition",
        "id": "adhoc",
        "action": [{"id": "x", "definitionCanonical": "http://example.org/nowhere"}],
    }
    call = Applied(engine)
    result = engine.apply(plan, call.scope, "Patient/p1", ids())
    assert top_ids(result) == ["x"]
    assert "resource" not in result.request_group["action"][0]
    assert "not found" in diagnostics(call.issues)


# --- update/remove of draft orders ----------------------------------------------------------


def test_update_and_remove_target_the_triggering_draft(engine: PlanEngine) -> None:
    draft = order("mr-draft", "draft")
    result = Applied(engine, draft, order("mr-active", "active")).apply("mini-orders")
    assert top_ids(result) == ["o-drafts", "o-record"]
    decided = result.request_group["action"][0]
    assert decided["title"] == "Deciding 1 draft(s); record has 1 order(s)"
    update, remove = decided["action"]
    assert update["resource"] == {"reference": "#mr-draft"}
    assert remove["resource"] == {"reference": "MedicationRequest/mr-draft"}
    changed = next(r for r in result.resources if r["id"] == "mr-draft")
    assert changed["dispenseRequest"]["expectedSupplyDuration"]["value"] == 7
    assert changed["note"] == [{"text": "names: 1"}]
    assert draft["dispenseRequest"]["expectedSupplyDuration"]["value"] == 30
    assert len(result.resources) == 1  # remove adds nothing


def test_triggers_restrict_the_drafts(engine: PlanEngine) -> None:
    drafts = [order("d1", "draft"), order("d2", "draft")]
    call = Applied(engine, *drafts, triggers=[drafts[1]])
    result = call.apply("mini-orders")
    decided = result.request_group["action"][0]
    assert decided["title"] == "Deciding 2 draft(s); record has 0 order(s)"
    assert decided["action"][1]["resource"] == {"reference": "MedicationRequest/d2"}
    nothing = Applied(engine, *drafts, triggers=[]).apply("mini-orders")
    assert top_ids(nothing) == []


def test_draft_without_id(engine: PlanEngine) -> None:
    draft = order("x", "draft")
    del draft["id"]
    call = Applied(engine, draft)
    result = call.apply("mini-orders")
    update, remove = result.request_group["action"][0]["action"]
    assert update["resource"]["reference"].startswith("#id-")
    assert "resource" not in remove
    assert "no id" in diagnostics(call.issues)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ({"type": {"coding": [{"code": "remove"}]}}, "remove"),
        ({"type": {"coding": []}}, None),
        ({"type": {"text": "x"}}, None),
        ({"type": "create"}, None),
        ({}, None),
    ],
)
def test_action_type_is_read_safely(action: dict[str, Any], expected: str | None) -> None:
    assert action_type(action) == expected


def test_hooks_of() -> None:
    action = {
        "trigger": [
            {"type": "named-event", "name": "patient-view"},
            {"type": "periodic", "name": "nightly"},
            {"type": "named-event"},
        ]
    }
    assert hooks_of(action) == {"patient-view"}


# --- the data set ---------------------------------------------------------------------------


def test_bundles_are_flattened() -> None:
    inner = {"resourceType": "Bundle", "entry": [{"resource": spasm("c2")}]}
    outer = {
        "resourceType": "Bundle",
        "entry": [{"resource": spasm("c1")}, {"resource": inner}, {"fullUrl": "x"}, "junk"],
    }
    found = list(flatten([outer, None, 3, {"no": "type"}, [spasm("c3")]]))
    assert [r["id"] for r in found] == ["c1", "c2", "c3"]


def test_resources_are_deduplicated_by_reference() -> None:
    first = spasm("c1")
    second = dict(spasm("c1"), onsetDateTime="2000-01-01")
    anonymous = {"resourceType": "Condition"}
    data = build_data_set([first, second, anonymous, dict(anonymous)])
    assert data.by_type["Condition"][0] is first
    assert len(data.by_type["Condition"]) == 3
    assert data.size == 3


def test_resolve_relative_absolute_and_contained() -> None:
    medication = {"resourceType": "Medication", "id": "m1"}
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "contained": [{"resourceType": "Medication", "id": "inner"}, {"resourceType": "X"}],
    }
    data = build_data_set([medication, request])
    assert data.resolve("Medication/m1") is medication
    assert data.resolve("https://ehr.example/fhir/Medication/m1") is medication
    assert data.resolve("https://ehr.example/fhir/Medication/m1/") is medication
    assert data.resolve("#inner") == {"resourceType": "Medication", "id": "inner"}
    assert data.resolve("#missing") is None
    assert data.resolve("Medication/none") is None
    assert data.resolve("m1") is None


def test_non_r4_types_are_ignored() -> None:
    dstu2 = {"resourceType": "MedicationOrder", "id": "mo1", "status": "draft"}
    data = build_data_set([dstu2, spasm()], [dict(dstu2, id="mo2")], drafts_from_status=True)
    assert "MedicationOrder" not in data.by_type
    assert data.drafts == []
    assert data.ignored == ["MedicationOrder", "MedicationOrder"]
    assert data.resolve("MedicationOrder/mo1") is None


def test_drafts_are_kept_apart_from_the_record() -> None:
    draft, active = order("d1", "draft"), order("a1", "active")
    hook = build_data_set([active], [draft])
    assert hook.by_type["MedicationRequest"] == [active]
    assert hook.drafts == [draft]
    assert hook.is_draft(draft) and not hook.is_draft(active)
    assert hook.resolve("MedicationRequest/d1") is draft
    # on the hook path a record resource with status draft stays in the record
    lenient = build_data_set([draft])
    assert lenient.by_type["MedicationRequest"] == [draft] and lenient.drafts == []
    # $apply: status draft makes it an order being decided
    applied = build_data_set([draft, active], drafts_from_status=True)
    assert applied.drafts == [draft]
    assert applied.by_type["MedicationRequest"] == [active]


def test_patient_of_the_call() -> None:
    p1 = {"resourceType": "Patient", "id": "p1"}
    p2 = {"resourceType": "Patient", "id": "p2"}
    assert build_data_set([p1, p2]).patient("p2") is p2
    assert build_data_set([p1, p2]).patient("p3") is None
    assert build_data_set([p1]).patient("p3") is p1
    assert build_data_set([p1]).patient(None) is p1
    assert build_data_set([]).patient("p1") is None


# --- rule-agnostic --------------------------------------------------------------------------


def engine_sources() -> Iterator[tuple[str, str]]:
    for path in sorted(ENGINE.glob("*.py")):
        if not path.name.startswith("questionnaire_"):
            yield path.name, path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [n for n, _ in engine_sources()])
def test_the_engine_names_no_rule(name: str) -> None:
    text = dict(engine_sources())[name]
    assert not re.search(r"\b(RF|MS|TY|LAB|AS)-\d", text, re.IGNORECASE)
    assert not re.search(r"\bP_[A-Z_]+\b", text)
    assert not re.search(r"\b(45352006|90460009|828348|72514-3)\b", text)


# --- override reasons: one guideline CodeSystem, named by the action ------------------------


def test_override_reasons_extension_becomes_one_coding_per_concept(engine: PlanEngine) -> None:
    result = Applied(engine, spasm()).apply("mini-rule")
    action = result.request_group["action"][0]
    assert action["id"] == "a-fires"
    system = "http://example.org/fhir/muscle-spasm/CodeSystem/mini-override"
    reasons = [
        e["valueCoding"]
        for e in action["extension"]
        if e["url"].endswith("/StructureDefinition/override-reason")
    ]
    assert reasons == [
        {
            "system": system,
            "code": "patient-aware",
            "display": "Patient aware; benefit outweighs risk",
        },
        {"system": system, "code": "record-incorrect", "display": "Data in the record is wrong"},
    ]
    assert not any(e["url"].endswith("/override-reasons") for e in action["extension"])


def test_a_variable_in_a_branch_not_taken_is_not_evaluated(engine: PlanEngine) -> None:
    compiler = engine.compiler

    def var(name: str, text: str) -> VariableDef:
        return VariableDef(name, compiler.compile(text), f"test.variable[{name}]")

    variables = {
        v.name: v
        for v in (
            var("broken", "(1 | 2).single()"),
            var("two", "2"),
            var("skipped", "iif(true, %two, %broken)"),
            var("taken", "iif(false, %two, %broken)"),
            var("short", "false and %broken = 1"),
        )
    }
    issues = IssueLog()
    scope = Scope(CallInput(build_data_set([]), NOW), variables, {}, issues)
    assert scope.get("skipped") == [2]
    assert scope.get("short") == [False]
    assert not issues.issues  # %broken was never read
    assert scope.get("taken") == []
    assert len(issues.issues) == 1 and "variable[broken]" in ",".join(issues.issues[0].expression)
    assert scope.get("taken") == [] and len(issues.issues) == 1  # memoised, reported once
