"""Quick verdicts for ``where(criteria)`` read straight from the JSON of each item.

Most ``where`` calls of a guideline scan a patient's resources for a few codes or statuses:
``%Observation.where(code.coding.where(system = 'http://loinc.org' and code = '2823-3').exists()
and clinicalDate()...)``. Through the compiled closures each item costs the typed nodes of every
member step and a closure call per operator (~20 µs for an Observation); nearly all items fail
the first test. This module compiles the part of a criteria it can decide from plain JSON into a
predicate over the item's dict, so an item whose answer is already known costs a few dictionary
reads. Why by hand: no FHIRPath library evaluates over plain JSON with fhirpathpy's typing rules,
and the verdicts must equal the compiled closures' (``tests/fhirpath/test_differential.py``
compares the whole evaluator with pristine fhirpathpy on every definition and scenario).

What it decides (FHIRPath N1 §5.2 ``where``, §6.5 Boolean logic, §6.1 equality):

- a criteria made only of the subset below: kept or dropped, the general closure never runs;
- a criteria ``c1 and c2 and ...`` whose leading conjuncts are in the subset: dropped when one of
  them is false (the compiled ``and`` would stop there, without evaluating the rest); when they
  all hold, only the rest runs through the closures (as ``true and (rest)``); when one of them
  is empty, the whole criteria does;
- anything else, or an item whose JSON leaves the subset at run time (a primitive extension
  ``_key``, a contained resource, a float, an unexpected array): the general closure decides.

The subset: member steps on non-choice elements (types from the R4 model, as the closures type
them), ``$this``, ``= 'text'``, ``!= 'text'``, ``= true``/``false``, ``and``, ``or``, ``not()``,
``exists()``, ``exists(criteria)``, ``empty()``, ``where(criteria)``, ``memberOf('url')`` and
``clinicalDate().duration(today()|now(), 'unit')`` compared with a ``%variable`` or a number.
Every construct of the subset evaluates without raising in the compiled closures, so a verdict
never hides an error those would have raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fhirpathpy.engine.nodes import ResourceNode

from fhir_service.engine.fhirpath.coercion import COMPARISONS, QUANTITY_TYPES, arraify, number
from fhir_service.engine.fhirpath.literals import lone_term, string_literal

Tree = Mapping[str, Any]
#: (one collection of plain JSON values, the evaluation context) -> another collection
Values = Callable[[list[Any], Any], list[Any]]
#: (one collection of plain JSON values, the evaluation context) -> True / False / None (empty)
Verdict = Callable[[list[Any], Any], "bool | None"]
#: (member step key) -> (child path, choice suffixes or None); typed path of a child path
ChildStep = Callable[[str | None, str], "tuple[str, tuple[str, ...] | None]"]

_SCALARS = (str, bool, int)


class Unsupported(Exception):
    """The expression leaves the subset (decided once, when a root type is first met)."""


class Undecided(Exception):
    """The item's JSON leaves the subset (decided per item): the general closure decides."""


class Types:
    """The R4 model's typing of member steps (``closures.TypePaths``)."""

    def __init__(self, child: ChildStep, typed: Callable[[str], str]) -> None:
        self.child = child
        self.typed = typed


@dataclass(frozen=True)
class Functions:
    """The service's own functions a quick verdict calls, exactly as the closures call them."""

    #: ``memberOf(url)`` of one Coding/CodeableConcept dict
    member_of: Callable[[Any, str], bool]
    #: ``clinicalDate()`` of one resource dict (a date string or None)
    clinical_date: Callable[[Any], str | None]
    #: ``duration(end, precision)`` of a list of inputs (``[n]`` or ``[]``)
    duration: Callable[[list[Any], list[Any], str], list[int]]
    #: ``now()``/``today()`` of the call's session, from the evaluation context
    clock: Mapping[str, Callable[[Any], Any]]


class QuickFilter:
    """One ``where`` criteria's quick verdict per item, specialised per root type on first use:
    True (kept), False (dropped), None (undecided: run the whole criteria), or, when the
    leading tests are all true and the rest is outside the subset, the compiled rest (run it
    instead of the whole criteria: ``true and (rest)``, the value the whole would give)."""

    def __init__(
        self,
        node: Tree,
        types: Types,
        functions: Functions | None,
        rest: Callable[[list[Tree]], Any] | None = None,
    ) -> None:
        self.node = node
        self.builder = _Builder(types, functions)
        self.conjuncts = _conjuncts(node)
        self._compile_rest = rest
        self._by_root: dict[str | None, tuple[Verdict, ...] | None] = {}
        self._rest: dict[int, Any] = {}

    def __call__(self, item: Any, ctx: Any = None) -> Any:
        if type(item) is dict:
            data = item
            root = item.get("resourceType") if "resourceType" in item else None
        elif isinstance(item, ResourceNode):
            data, root = item.data, item.path
            if type(data) is not dict:
                return None
        else:
            return None
        tests = self._by_root.get(root, _MISSING)
        if tests is _MISSING:
            tests = self._specialise(root)
        if tests is None:
            return None
        values = [data]
        undecided = False
        try:
            for test in tests:
                verdict = test(values, ctx)
                if verdict is False:
                    return False
                if verdict is None:
                    undecided = True
        except Undecided:
            return None
        count = len(tests)
        if count == len(self.conjuncts):
            return not undecided  # an empty criteria does not keep the item
        if undecided or self._compile_rest is None:
            return None  # the leading tests did not drop it: the whole criteria decides
        rest = self._rest.get(count)
        if rest is None:
            rest = self._rest[count] = self._compile_rest(self.conjuncts[count:])
        return rest

    def _specialise(self, root: str | None) -> tuple[Verdict, ...] | None:
        tests: list[Verdict] = []
        for conjunct in self.conjuncts:
            try:
                tests.append(self.builder.boolean(conjunct, root))
            except Unsupported:
                break
        found = tuple(tests) if tests else None
        if len(self._by_root) < 1_000:
            self._by_root[root] = found
        return found

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"QuickFilter({len(self.conjuncts)} conjuncts)"


_MISSING: Any = object()


class _Untyped:
    """Types for a first look: no element is a choice (a choice fails at specialisation)."""

    @staticmethod
    def child(path: str | None, key: str) -> tuple[str, tuple[str, ...] | None]:
        return f"{path}.{key}", None

    @staticmethod
    def typed(path: str) -> str:
        return path


def worth_trying(node: Tree, functions: Functions | None) -> bool:
    """Whether the first conjunct of ``node`` is in the subset at all (else no quick filter)."""
    builder = _Builder(Types(_Untyped.child, _Untyped.typed), functions)
    try:
        builder.boolean(_conjuncts(node)[0], None)
    except Unsupported:
        return False
    return True


def and_chain(conjuncts: list[Tree]) -> Tree:
    """The parse tree of ``true and (c1 and c2 and ...)``: what the criteria gives once its
    leading conjuncts are known true (each conjunct still checked as a Boolean)."""
    chain = conjuncts[0]
    for conjunct in conjuncts[1:]:
        chain = _and(chain, conjunct)
    true = {
        "type": "TermExpression",
        "children": [
            {"type": "LiteralTerm", "children": [{"type": "BooleanLiteral", "text": "true"}]}
        ],
    }
    return _and(true, chain)


def _and(left: Tree, right: Tree) -> Tree:
    return {"type": "AndExpression", "terminalNodeText": ["and"], "children": [left, right]}


def _conjuncts(node: Tree) -> list[Tree]:
    """``a and b and c`` (left-associative) as [a, b, c], in evaluation order."""
    if node.get("type") == "AndExpression" and node.get("terminalNodeText") == ["and"]:
        left, right = node["children"]
        return [*_conjuncts(left), right]
    return [node]


class _Builder:
    """Compiles a parse tree, for items of one static type path, to JSON functions."""

    def __init__(self, types: Types, functions: Functions | None) -> None:
        self.types = types
        self.functions = functions

    # --- Boolean expressions: True / False / None (empty) ----------------------------------

    def boolean(self, node: Tree, path: str | None) -> Verdict:
        kind = node.get("type")
        if kind in ("TermExpression", "ParenthesizedTerm") and len(node["children"]) == 1:
            child = node["children"][0]
            if child and child.get("type") in ("ParenthesizedTerm", "TermExpression"):
                return self.boolean(child, path)
            if kind == "ParenthesizedTerm":
                return self.boolean(child, path)
        if kind == "AndExpression" or kind == "OrExpression":
            return self._logic(node, path)
        if kind == "EqualityExpression":
            return self._equality(node, path)
        if kind == "InequalityExpression":
            return self._date_distance(node)
        if kind == "InvocationExpression" and len(node["children"]) == 2:
            return self._boolean_function(node, path)
        raise Unsupported(kind)

    def _logic(self, node: Tree, path: str | None) -> Verdict:
        op = node["terminalNodeText"][0]
        if op not in ("and", "or"):
            raise Unsupported(op)
        left = self.boolean(node["children"][0], path)
        right = self.boolean(node["children"][1], path)
        deciding = op == "or"  # false decides an ``and``, true an ``or`` (FHIRPath §6.5)

        def junction(values: list[Any], ctx: Any) -> bool | None:
            a = left(values, ctx)
            if a is deciding:
                return deciding
            b = right(values, ctx)
            if b is deciding:
                return deciding
            return None if a is None or b is None else not deciding

        return junction

    def _equality(self, node: Tree, path: str | None) -> Verdict:
        op = node["terminalNodeText"][0]
        if op not in ("=", "!="):
            raise Unsupported(op)
        left_node, right_node = node["children"]
        literal = _literal(right_node)
        if literal is _MISSING:
            raise Unsupported("equality with a non-literal")
        left, left_path = self.values(left_node, path)
        if left_path in QUANTITY_TYPES:
            raise Unsupported("Quantity equality")
        negate = op == "!="
        kind = type(literal)
        invocation = lone_term(left_node, "InvocationTerm")
        key = ""
        if invocation is not None and invocation.get("type") == "MemberInvocation":
            key = _identifier(invocation["children"][0]["text"])
        extension_key = "_" + key

        def equality(values: list[Any], ctx: Any) -> bool | None:
            if key and len(values) == 1 and type(values[0]) is dict:
                # ``key = 'text'`` on one object: its member read in place
                value = values[0]
                one = value.get(key)
                if one is None and extension_key not in value:
                    return None
                if type(one) is kind and extension_key not in value:
                    return (one == literal) is not negate
            found = left(values, ctx)
            if not found:
                return None
            if len(found) != 1 or type(found[0]) is not kind:
                raise Undecided
            return (found[0] == literal) is not negate

        return equality

    def _date_distance(self, node: Tree) -> Verdict:
        """``clinicalDate().duration(today(), 'days') <= %limit`` (or ``now()``, another
        precision, another comparison, a number): how old a resource is, against a limit."""
        functions = self.functions
        op = node["terminalNodeText"][0]
        compare = COMPARISONS.get(op)
        if functions is None or compare is None:
            raise Unsupported(op)
        left_node, right_node = node["children"]
        clock, precision = _duration_of_clinical_date(left_node, functions)
        limit = _limit(right_node)
        clinical_date, duration = functions.clinical_date, functions.duration

        def distance(values: list[Any], ctx: Any) -> bool | None:
            if len(values) != 1 or ctx is None:
                raise Undecided
            found = clinical_date(values[0])
            periods = duration([found], [clock(ctx)], precision) if found else []
            bound = limit(ctx)  # read even when the left is empty, as the closures do
            if not periods or not bound:
                return None
            x, y = number(periods[0]), number(bound[0])
            if len(bound) != 1 or x is None or y is None:
                raise Undecided
            return bool(compare(x, y))

        return distance

    def _boolean_function(self, node: Tree, path: str | None) -> Verdict:
        focus_node, invocation = node["children"]
        name, params = _function(invocation)
        if name == "not" and not params:
            operand = self.boolean(focus_node, path)

            def negation(values: list[Any], ctx: Any) -> bool | None:
                found = operand(values, ctx)
                return None if found is None else not found

            return negation
        focus, focus_path = self.values(focus_node, path)
        if name == "exists" and not params:
            return lambda values, ctx: bool(focus(values, ctx))
        if name == "empty" and not params:
            return lambda values, ctx: not focus(values, ctx)
        if name == "exists" and len(params) == 1:
            kept = self._where(params[0], focus_path)
            return lambda values, ctx: bool(kept(focus(values, ctx), ctx))
        if name == "memberOf" and len(params) == 1:
            url = _literal(params[0])
            member_of = self.functions.member_of if self.functions else None
            if type(url) is not str or member_of is None:
                raise Unsupported("memberOf without a literal url or a terminology")

            def membership(values: list[Any], ctx: Any) -> bool | None:
                found = focus(values, ctx)
                if not found:
                    return None
                for value in found:
                    if type(value) is not dict:
                        raise Undecided
                    if member_of(value, url):
                        return True
                return False

            return membership
        raise Unsupported(name)

    # --- collections of plain JSON values ----------------------------------------------------

    def values(self, node: Tree, path: str | None) -> tuple[Values, str | None]:
        """(function, the static type path of its values)."""
        kind = node.get("type")
        children = node.get("children") or []
        if kind in ("TermExpression", "InvocationTerm") and len(children) == 1:
            return self.values(children[0], path)
        if kind == "ThisInvocation":
            return (lambda values, _ctx: values), path
        if kind == "MemberInvocation":
            return self._member(node, path)
        if kind == "InvocationExpression" and len(children) == 2:
            focus_node, invocation = children
            focus, focus_path = self.values(focus_node, path)
            if invocation.get("type") == "MemberInvocation":
                step, step_path = self._member(invocation, focus_path)
                return (lambda values, ctx: step(focus(values, ctx), ctx)), step_path
            name, params = _function(invocation)
            if name == "where" and len(params) == 1:
                kept = self._where(params[0], focus_path)
                return (lambda values, ctx: kept(focus(values, ctx), ctx)), focus_path
        raise Unsupported(kind)

    def _where(self, criteria_node: Tree, path: str | None) -> Values:
        criteria = self.boolean(criteria_node, path)

        def where(values: list[Any], ctx: Any) -> list[Any]:
            return [v for v in values if criteria([v], ctx) is True]

        return where

    def _member(self, node: Tree, path: str | None) -> tuple[Values, str | None]:
        key = _identifier(node["children"][0]["text"])
        if not key or not key[0].islower() or key in ("extension", "length"):
            raise Unsupported(key)
        child_path, choices = self.types.child(path, key)
        if choices:
            raise Unsupported(f"choice element {key}")
        typed = self.types.typed(child_path)
        extension_key = "_" + key

        def step(values: list[Any], _ctx: Any) -> list[Any]:
            out: list[Any] = []
            for value in values:
                if type(value) is not dict:
                    if isinstance(value, _SCALARS):
                        continue  # a primitive has no members
                    raise Undecided
                if extension_key in value:
                    raise Undecided
                found = value.get(key)
                if found is None:
                    continue
                if type(found) is list:
                    for item in found:
                        _check(item)
                    out.extend(found)
                else:
                    _check(found)
                    out.append(found)
            return out

        return step, typed


def _check(value: Any) -> None:
    """A value the member step may hand on as plain JSON (else the general closure decides)."""
    kind = type(value)
    if kind is dict:
        if "resourceType" in value:
            raise Undecided  # a contained resource is typed by its resourceType
    elif kind is not str and kind is not bool and kind is not int:
        raise Undecided


def _duration_of_clinical_date(
    node: Tree, functions: Functions
) -> tuple[Callable[[Any], Any], str]:
    """(the clock function, the precision) of ``clinicalDate().duration(<clock>(), 'p')``."""
    if node.get("type") != "InvocationExpression" or len(node.get("children") or []) != 2:
        raise Unsupported("not a duration")
    focus, invocation = node["children"]
    name, params = _function(invocation)
    if name != "duration" or len(params) != 2:
        raise Unsupported(name)
    start = lone_term(focus, "InvocationTerm")
    if start is None or _function(start) != ("clinicalDate", []):
        raise Unsupported("duration of something else than clinicalDate()")
    end = lone_term(params[0], "InvocationTerm")
    if end is None:
        raise Unsupported("duration to something else than now() or today()")
    end_name, end_params = _function(end)
    clock = functions.clock.get(end_name)
    precision = _literal(params[1])
    if clock is None or end_params or type(precision) is not str:
        raise Unsupported("duration to something else than now() or today()")
    return clock, precision


def _limit(node: Tree) -> Callable[[Any], list[Any]]:
    """A ``%variable`` or a number literal, as the compiled closures read it."""
    literal = lone_term(node, "LiteralTerm")
    if literal is not None and literal.get("type") == "NumberLiteral":
        text = literal["text"]
        if not text.isdigit():
            raise Unsupported("a decimal limit")
        value = int(text)
        return lambda _ctx: [value]
    if node.get("type") != "TermExpression" or len(node.get("children") or []) != 1:
        raise Unsupported("limit")
    term = node["children"][0]
    if term.get("type") != "ExternalConstantTerm":
        raise Unsupported("limit")
    raw = term["children"][0]["children"][0]["text"]
    if not raw or not (raw[0].isalpha() or raw[0] == "_"):
        raise Unsupported("a delimited variable name")
    name = raw

    def variable(ctx: Any) -> list[Any]:
        variables = ctx["vars"]
        if name not in variables:
            raise Undecided  # the closures raise for an undefined variable
        return arraify(variables[name])

    return variable


def _function(invocation: Tree) -> tuple[str, list[Tree]]:
    if invocation.get("type") != "FunctionInvocation":
        raise Unsupported(invocation.get("type"))
    functn = invocation["children"][0]
    parts = functn["children"]
    name = _identifier(parts[0]["text"])
    params: list[Tree] = []
    if len(parts) > 1 and "children" in parts[1]:
        params = list(parts[1]["children"])
    return name, params


def _literal(node: Tree) -> Any:
    """The value of a string or Boolean literal term, else ``_MISSING``."""
    literal = lone_term(node, "LiteralTerm")
    if literal is None:
        return _MISSING
    if literal.get("type") == "StringLiteral":
        return string_literal(literal["text"])
    if literal.get("type") == "BooleanLiteral":
        return literal["text"] == "true"
    return _MISSING


def _identifier(text: str) -> str:
    if text.startswith("`") or text.startswith('"'):
        return ""  # delimited identifiers stay with the general closures
    return text
