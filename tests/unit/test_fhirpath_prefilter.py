"""Quick verdicts of ``where`` read from JSON (``engine/fhirpath/prefilter.py``).

Their values are checked against the closures and pristine fhirpathpy by
``tests/fhirpath/engine-where-prefilter.yaml`` (and the differential test); here: which items
they decide, which they leave to the closures, and that a decided item skips the closures.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_service.engine.fhirpath import R4_MODEL, EvaluationSession, FhirPathCompiler, prefilter
from fhir_service.engine.fhirpath import parse_strict as parse
from fhir_service.engine.fhirpath.closures import TypePaths

LOINC = "http://loinc.org"
CODING_TEST = "code.coding.where(system = 'http://loinc.org' and code = '2823-3').exists()"


def functions(member_of: Any) -> prefilter.Functions | None:
    if member_of is None:
        return None
    return prefilter.Functions(member_of, lambda _r: None, lambda *_a: [], {})


def quick(criteria: str, member_of: Any = None) -> prefilter.QuickFilter:
    types = TypePaths(R4_MODEL)
    node = parse(criteria)["children"][0]
    return prefilter.QuickFilter(
        node, prefilter.Types(types.child, types.typed), functions(member_of)
    )


def obs(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", **fields}


def potassium(**coding: Any) -> dict[str, Any]:
    return obs(code={"coding": [{"system": LOINC, "code": "2823-3", **coding}]})


@pytest.mark.parametrize(
    ("item", "verdict"),
    [
        (potassium(), True),
        (obs(code={"coding": [{"system": LOINC, "code": "6298-4"}]}), False),
        (obs(code={"coding": [{"code": "2823-3"}]}), False),  # no system: empty and true
        (obs(), False),
        (potassium(_system={"id": "x"}), None),  # a primitive extension adds an item
        (potassium(system=[LOINC]), True),  # a JSON array is a collection: one item here
        (potassium(system=[LOINC, LOINC]), None),
        (obs(code={"coding": [{"system": LOINC, "code": 2823.0}]}), None),  # a float
        (obs(code={"coding": [None]}), None),
        (potassium(resourceType="Coding"), None),  # typed by its resourceType
        ("not a resource", None),
    ],
)
def test_a_complete_criteria_decides_plain_items_only(item: Any, verdict: bool | None) -> None:
    assert quick(CODING_TEST)(item) is verdict


def test_leading_tests_only_drop_and_leave_the_rest_to_the_closures() -> None:
    partial = quick(f"{CODING_TEST} and clinicalDate().exists()")
    assert partial(obs(code={"coding": [{"system": LOINC, "code": "x"}]})) is False
    assert partial(potassium()) is None  # no compiler for the rest: the whole criteria
    rests: list[list[Any]] = []

    def compile_rest(conjuncts: list[Any]) -> str:
        rests.append(conjuncts)
        return "the rest"

    with_rest = prefilter.QuickFilter(
        parse(f"{CODING_TEST} and clinicalDate().exists()")["children"][0],
        prefilter.Types(TypePaths(R4_MODEL).child, TypePaths(R4_MODEL).typed),
        None,
        compile_rest,
    )
    assert with_rest(potassium()) == "the rest"
    assert with_rest(potassium()) == "the rest"  # compiled once
    assert len(rests) == 1 and len(rests[0]) == 1


def test_a_criteria_outside_the_subset_is_not_tried() -> None:
    assert not prefilter.worth_trying(parse("clinicalDate().exists()")["children"][0], None)
    assert not prefilter.worth_trying(parse("value.ofType(Quantity).exists()")["children"][0], None)
    assert prefilter.worth_trying(parse(CODING_TEST)["children"][0], None)


def test_choice_elements_are_left_to_the_closures() -> None:
    choice = quick("value.coding.where(code = 'x').exists()")
    assert choice(obs(valueCodeableConcept={"coding": [{"code": "x"}]})) is None


def test_membership_uses_the_terminology_of_one_concept() -> None:
    asked: list[tuple[Any, str]] = []

    def member_of(value: Any, url: str) -> bool:
        asked.append((value, url))
        return bool(value.get("text") == "yes")

    membership = quick("code.memberOf('http://example.org/vs')", member_of)
    assert membership(obs(code={"text": "yes"})) is True
    assert membership(obs(code={"text": "no"})) is False
    assert membership(obs()) is False  # empty: not kept
    assert membership(obs(code="45352006")) is None  # a code string: the closures decide
    assert asked == [
        ({"text": "yes"}, "http://example.org/vs"),
        ({"text": "no"}, "http://example.org/vs"),
    ]


def test_decided_items_skip_the_compiled_criteria(monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = FhirPathCompiler()
    expression = compiler.compile(f"%O.where({CODING_TEST}).id")
    seen: list[Any] = []
    original = prefilter.QuickFilter.__call__

    def spy(self: prefilter.QuickFilter, item: Any, ctx: Any = None) -> Any:
        verdict = original(self, item, ctx)
        seen.append(verdict)
        return verdict

    monkeypatch.setattr(prefilter.QuickFilter, "__call__", spy)
    items = [
        {**potassium(), "id": "a"},
        obs(id="b"),
        {**potassium(_code={"id": "x"}), "id": "c"},  # two items for code: not equal
        obs(id="last"),
    ]
    session = EvaluationSession(datetime(2026, 12, 1, tzinfo=UTC))
    assert expression.evaluate({}, {"O": items}, session) == ["a"]
    assert seen == [True, False, None]  # the last item always runs the closures
