"""FHIRPath (``text/fhirpath``) compiled once, evaluated many times, over plain JSON dicts.

Wraps fhirpathpy 2.2.4 with the R4 model (needed for choice types such as ``value[x]``; see
https://hl7.org/fhirpath/N1/) and adds the functions our knowledge artifacts use:

``memberOf(url)``
    Coding/CodeableConcept membership in a ValueSet of ``definitions/`` (``terminology.py``).
``ingredients(url)``
    The ingredient names by which a medication concept belongs to a ValueSet (distinct drugs).
``resolve()``
    A Reference to the resource it names in the call's data (``Type/id``, or ``#id`` for a
    contained resource).
``medicationCode()``
    The concept of a medication resource: its ``medicationCodeableConcept``, else the ``code``
    of the Medication its ``medicationReference`` names (contained or resolved).
``duration(end, precision)``
    Whole calendar periods (``'years'``, ``'months'``, ``'weeks'``, ``'days'``) from the input
    date to ``end`` (FHIRPath 3.0 ``duration``).
``now()``, ``today()``, ``timeOfDay()``
    From the call's clock (``EvaluationSession.now``, the same instant ``%now`` reads), never
    the wall clock (``FHIR_SERVICE_NOW`` pins it).
``clinicalDate()``
    A resource's clinically relevant date (``CLINICAL_DATE_PATHS``: e.g. a Condition's
    ``onsetDateTime`` ?? ``onsetPeriod.start`` ?? ``recordedDate``; an Observation's
    ``effective[x]`` ?? ``issued``; a QuestionnaireResponse's ``authored``).
``latest()``
    The resource of the input with the latest ``clinicalDate()`` (Observations: ties broken by
    ``issued``); the service orders candidates itself, never relying on a server's ``_sort``.
``trace(name[, projection])``
    The input, unchanged (FHIRPath N1 §5.9; logged at DEBUG with its size only, never its
    content).

Every expression is parsed once (``compile``; parsing costs ~2–4 ms in fhirpathpy) and compiled
into Python closures by ``closures.ClosureCompiler``, our own evaluator: fhirpathpy's module
globals are never reassigned (docs/fhirpath.md). One way in: ``CompiledExpression.evaluate``
takes the call's ``EvaluationSession`` (clock, data resolver), which travels in the evaluation
context, so compiled expressions are shared safely between worker threads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property, lru_cache
from typing import Any, cast

from antlr4 import CommonTokenStream, InputStream, Token  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from antlr4.tree.Tree import ParseTreeWalker  # type: ignore[import-untyped]
from fhirpathpy.engine import base_invocation_registry
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time, FP_Type, ResourceNode
from fhirpathpy.engine.util import get_data
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhir_service.engine.fhirpath import distinct, prefilter
from fhir_service.engine.fhirpath.closures import (
    ClosureCompiler,
    Fn,
    Navigation,
    set_base_entries,
)
from fhir_service.engine.terminology.membership import Terminology

log = logging.getLogger(__name__)
set_base_entries(base_invocation_registry)

R4_MODEL: dict[str, Any] = models["r4"]
VARIABLE_RE = re.compile(r"%(?:`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*))")
BUILTIN_VARIABLES = frozenset({"context", "ucum", "resource", "rootResource", "sct", "loinc"})

Resolver = Callable[[str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class EvaluationSession:
    """What the extension functions see during one call: the clock and the data.

    One per call (``evaluation.CallInput.session``): ``now()``/``today()`` and the engine's
    ``%now``/``%today`` all read ``now``.
    """

    now: datetime
    resolver: Resolver | None = None
    #: Resolves a Reference object itself: ``#id`` looked up in the contained resources of the
    #: resource that holds that very Reference (identity), not of any resource of the call.
    scoped: Callable[[Mapping[str, Any]], dict[str, Any] | None] | None = None
    #: what one call computes once and reads many times (``descendants()`` of a resource)
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def now_value(self) -> FP_DateTime:
        """``now()`` and ``%now`` (FHIRPath values are immutable once built)."""
        return fhir_datetime(self.now)

    @cached_property
    def today_value(self) -> FP_DateTime:
        """``today()`` and ``%today``."""
        return fhir_date(self.now)


def _session(ctx: Mapping[str, Any]) -> EvaluationSession:
    current = ctx.get("session")
    if current is None:
        raise RuntimeError("FHIRPath evaluated without an evaluation session (the call's clock)")
    return cast(EvaluationSession, current)


def fhir_datetime(value: datetime) -> FP_DateTime:
    """A FHIRPath DateTime for ``value`` (millisecond precision, with offset)."""
    return FP_DateTime(value.isoformat(timespec="milliseconds"))


def fhir_date(value: datetime | date) -> FP_DateTime:
    """A FHIRPath Date (day precision) for ``value``."""
    day = value.date() if isinstance(value, datetime) else value
    return FP_DateTime(day.isoformat())


def quantity(value: float | int, unit: str) -> FP_Quantity:
    """A FHIRPath Quantity, e.g. ``quantity(30, 'days')`` for a duration parameter."""
    return FP_Quantity(value, unit)


def _parse_date(value: Any) -> date | None:
    return _parse_date_text(str(value) if value is not None else "")


@lru_cache(maxsize=8192)
def _parse_date_text(text: str) -> date | None:
    if not text:
        return None
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7:
            return date(int(text[:4]), int(text[5:7]), 1)
        if "T" in text:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


#: Where each resource type keeps its clinically relevant date, in order of preference.
CLINICAL_DATE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Condition": (("onsetDateTime",), ("onsetPeriod", "start"), ("recordedDate",)),
    "Observation": (
        ("effectiveDateTime",),
        ("effectiveInstant",),
        ("effectivePeriod", "start"),
        ("issued",),
    ),
    "QuestionnaireResponse": (("authored",),),
    "MedicationRequest": (("authoredOn",),),
    "MedicationStatement": (
        ("effectiveDateTime",),
        ("effectivePeriod", "start"),
        ("dateAsserted",),
    ),
    "MedicationDispense": (("whenHandedOver",), ("whenPrepared",)),
    "ServiceRequest": (("occurrenceDateTime",), ("occurrencePeriod", "start"), ("authoredOn",)),
    "Procedure": (("performedDateTime",), ("performedPeriod", "start")),
    "Encounter": (("period", "start"),),
    "DiagnosticReport": (("effectiveDateTime",), ("effectivePeriod", "start"), ("issued",)),
}


def clinical_date(resource: Any) -> str | None:
    """The clinically relevant date string of a resource (``CLINICAL_DATE_PATHS``)."""
    if not isinstance(resource, Mapping):
        return None
    for path in CLINICAL_DATE_PATHS.get(str(resource.get("resourceType")), ()):
        node: Any = resource
        for step in path:
            node = node.get(step) if isinstance(node, Mapping) else None
        if isinstance(node, str) and node:
            return node
    return None


def _sort_key(text: Any) -> datetime:
    if isinstance(text, str):
        return _sort_key_text(text)
    return _sort_key_text(None) if not text else _sort_key_uncached(text)


@lru_cache(maxsize=8192)
def _sort_key_text(text: str | None) -> datetime:
    return _sort_key_uncached(text)


def _sort_key_uncached(text: Any) -> datetime:
    if not text:
        return datetime.min.replace(tzinfo=UTC)
    parsed = _parse_instant(text)
    return parsed if parsed is not None else datetime.min.replace(tzinfo=UTC)


def _parse_instant(value: Any) -> datetime | None:
    """A date or dateTime string as an aware datetime (dates at 00:00 UTC)."""
    text = str(getattr(value, "data", value)) if value is not None else ""
    if "T" not in text:
        day = _parse_date(text)
        return datetime(day.year, day.month, day.day, tzinfo=UTC) if day else None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _whole_periods(start: date, end: date, precision: str) -> int:
    if precision in ("days", "day"):
        return (end - start).days
    if precision in ("weeks", "week"):
        return (end - start).days // 7
    months = (end.year - start.year) * 12 + (end.month - start.month)
    if end.day < start.day:
        months -= 1 if months > 0 else 0
    if precision in ("months", "month"):
        return months
    if precision in ("years", "year"):
        years = end.year - start.year
        if (end.month, end.day) < (start.month, start.day):
            years -= 1
        return years
    raise ValueError(f"duration(): unsupported precision {precision!r}")


class _RaisingErrorListener(ErrorListener):  # type: ignore[misc]
    """fhirpathpy's parser recovers from syntax errors silently; we refuse them."""

    def __init__(self, expression: str) -> None:
        super().__init__()
        self.expression = expression

    def syntaxError(  # noqa: N802 - ANTLR's name
        self,
        _recognizer: Any,
        _symbol: Any,
        line: int,
        column: int,
        msg: str,
        _exc: Any,
    ) -> None:
        near = _near(self.expression, column) if line == 1 else ""
        raise ValueError(
            f"syntax error at {line}:{column}: {msg}" + (f", near {near!r}" if near else "")
        )


def _near(expression: str, column: int) -> str:
    return expression[max(0, column - 20) : column + 20]


def parse_strict(expression: str) -> dict[str, Any]:
    """Parse ``expression`` into fhirpathpy's AST, refusing any syntax error or trailing text.

    ``fhirpathpy.compile`` lets ANTLR recover from errors: ``where(code = ).exists(`` compiles
    and quietly evaluates to ``false``. This parse is the same grammar, with errors raised.
    """
    listener = _RaisingErrorListener(expression)
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.buildParseTrees = True
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.expression()
    if parser.getCurrentToken().type != Token.EOF:
        token = parser.getCurrentToken()
        raise ValueError(
            f"unexpected {token.text!r} at column {token.column}, near "
            f"{_near(expression, token.column)!r} (a quote inside a string is written \\')"
        )
    ast_listener = ASTPathListener()
    ParseTreeWalker().walk(ast_listener, tree)
    return cast(dict[str, Any], ast_listener.parentStack[0])


def _function_calls(node: Any) -> Iterator[tuple[str, int]]:
    """(name, number of arguments) of every function invocation in a parsed expression."""
    if not isinstance(node, dict):
        return
    if node.get("type") == "Functn":
        children = node.get("children") or []
        name = children[0].get("text") if children else None
        params = children[1].get("children") or [] if len(children) > 1 else []
        if isinstance(name, str):
            yield name, len(params)
    for child in node.get("children") or ():
        yield from _function_calls(child)


def _plain_inputs(fn: Callable[..., Any], *, with_ctx: bool = False) -> Callable[..., Any]:
    """A service function called as fhirpathpy calls a user table's: the input items as plain
    data (``get_data``); ``with_ctx`` also hands it the evaluation context (the session)."""
    if with_ctx:
        return lambda ctx, inputs, *args: fn(ctx, [get_data(i) for i in inputs], *args)
    return lambda _ctx, inputs, *args: fn([get_data(i) for i in inputs], *args)


class FhirPathCompiler:
    """Compiles expressions with the service's extension functions bound to a Terminology."""

    def __init__(self, terminology: Terminology | None = None) -> None:
        self.terminology = terminology or Terminology()
        navigation = Navigation(R4_MODEL)
        own: dict[str, dict[str, Any]] = {
            "memberOf": {"fn": self._member_of, "arity": {1: ["String"]}},
            "ingredients": {"fn": _plain_inputs(self._ingredients), "arity": {1: ["String"]}},
            "resolve": {"fn": _plain_inputs(_resolve, with_ctx=True), "arity": {0: []}},
            "medicationCode": {
                "fn": _plain_inputs(_medication_code, with_ctx=True),
                "arity": {0: []},
            },
            "duration": {"fn": _plain_inputs(_duration), "arity": {2: ["Any", "String"]}},
            "now": {"fn": _now, "arity": {0: []}},
            "today": {"fn": _today, "arity": {0: []}},
            "timeOfDay": {"fn": _time_of_day, "arity": {0: []}},
            "clinicalDate": {"fn": _plain_inputs(_clinical_date), "arity": {0: []}},
            "latest": {"fn": _plain_inputs(_latest), "arity": {0: []}},
            "single": {"fn": _plain_inputs(_single), "arity": {0: []}},
            "trace": {"fn": _trace, "arity": {0: [], 1: ["String"], 2: ["String", "Expr"]}},
            "children": {"fn": navigation.children_fn},
            "descendants": {"fn": navigation.descendants_fn},
            "distinct": {**base_invocation_registry["distinct"], "fn": distinct.distinct_fn},
            "|": {**base_invocation_registry["|"], "fn": distinct.union_op},
            "union": {**base_invocation_registry["union"], "fn": distinct.union_op},
        }
        #: the service's functions, as fhirpathpy's registry entries (``fn(ctx, inputs, ...)``)
        self.extensions: Mapping[str, Mapping[str, Any]] = own
        #: fhirpathpy's functions and operators, with the service's own in front
        self.functions: dict[str, Mapping[str, Any]] = {**base_invocation_registry, **own}
        self._closures = ClosureCompiler(
            self.functions,
            R4_MODEL,
            prefilter.Functions(
                member_of=self._is_member,
                clinical_date=clinical_date,
                duration=_duration,
                clock={
                    "now": lambda ctx: _session(ctx).now_value,
                    "today": lambda ctx: _session(ctx).today_value,
                },
            ),
        )
        self._cache: dict[str, CompiledExpression] = {}
        self._membership: dict[tuple[str, Any], tuple[str, ...]] = {}

    def compile(self, expression: str) -> CompiledExpression:
        """Parse and compile ``expression`` once (cached); raises ``ValueError`` when it does not
        parse or names an unknown function or a wrong number of arguments."""
        cached = self._cache.get(expression)
        if cached is not None:
            return cached
        try:
            ast = parse_strict(expression)
        except Exception as exc:  # ANTLR raises assorted exception types
            raise ValueError(f"FHIRPath does not parse: {exc}") from None
        for name, count in _function_calls(ast):
            known = self.functions.get(name)
            if known is None:
                raise ValueError(f"FHIRPath function {name}() is not supported")
            arity = known.get("arity")
            if isinstance(arity, Mapping) and count not in arity:
                allowed = " or ".join(str(n) for n in sorted(arity))
                raise ValueError(f"{name}() takes {allowed} argument(s), not {count}")
        fn = self._closures.compile(ast["children"][0])
        names = frozenset(a or b for a, b in VARIABLE_RE.findall(expression)) - BUILTIN_VARIABLES
        compiled = CompiledExpression(expression, fn, names)
        self._cache[expression] = compiled
        return compiled

    @property
    def compiled_count(self) -> int:
        return len(self._cache)

    def _member_of(self, _ctx: Any, inputs: list[Any], url: str) -> list[bool]:
        if not inputs:
            return []
        for item in inputs:
            if self._is_member(get_data(item), url):
                return [True]
        return [False]

    def _is_member(self, value: Any, url: str) -> bool:
        """``memberOf(url)`` of one plain JSON Coding/CodeableConcept."""
        return bool(self._ingredients_of(value, url))

    def _ingredients(self, inputs: list[Any], url: str) -> list[str]:
        out: list[str] = []
        for value in inputs:
            out.extend(self._ingredients_of(value, url))
        return out

    def _ingredients_of(self, value: Any, url: str) -> tuple[str, ...]:
        """``Terminology.ingredients``, memoised by what it reads of ``value`` (its codings'
        system, code and display, its text): each distinct concept of the data is looked up
        once per ValueSet for the life of the process, so a code filter repeated by many
        rules and calls costs a dictionary lookup."""
        key = _concept_key(value)
        if key is None:
            return tuple(self.terminology.ingredients(value, url))
        memo_key = (url, key)
        found = self._membership.get(memo_key)
        if found is None:
            found = tuple(self.terminology.ingredients(value, url))
            if len(self._membership) >= MEMBERSHIP_MEMO_SIZE:
                self._membership.clear()
            self._membership[memo_key] = found
        return found


#: fhirpathpy functions the service implements again for speed, with the same results (the
#: differential test compares them with fhirpathpy's own)
REIMPLEMENTED = frozenset({"children", "descendants", "distinct", "|", "union"})
#: distinct (ValueSet, concept) answers kept by ``FhirPathCompiler._ingredients_of``
MEMBERSHIP_MEMO_SIZE = 100_000


def _concept_key(value: Any) -> tuple[Any, ...] | None:
    """What ``Terminology.ingredients`` reads of a Coding/CodeableConcept, as a hashable key
    (None when the value is not a plain JSON concept)."""
    if type(value) is not dict:
        return None
    key: tuple[Any, ...]
    if "coding" in value or "text" in value:
        codings = value.get("coding") or ()
        if type(codings) is not list:
            return None
        key = (
            value.get("text"),
            *[
                (c.get("system"), c.get("code"), c.get("display")) if type(c) is dict else None
                for c in codings
            ],
        )
    else:
        key = ("", value.get("system"), value.get("code"), value.get("display"))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _resolve(ctx: Mapping[str, Any], inputs: list[Any]) -> list[dict[str, Any]]:
    current = _session(ctx)
    out: list[dict[str, Any]] = []
    for value in inputs:
        ref = value.get("reference") if isinstance(value, Mapping) else value
        if not isinstance(ref, str):
            continue
        found = None
        if ref.startswith("#") and isinstance(value, Mapping) and current.scoped is not None:
            found = current.scoped(value)
        elif current.resolver is not None:
            found = current.resolver(ref)
        if found is not None:
            out.append(found)
    return out


def _medication_code(ctx: Mapping[str, Any], inputs: list[Any]) -> list[Any]:
    """``medicationCode()``: the concept of each medication resource (MedicationRequest,
    MedicationStatement, MedicationDispense...): its ``medicationCodeableConcept``, and the
    ``code`` of the Medication its ``medicationReference`` names (``#id``: the first contained
    Medication with that id; otherwise resolved in the call's data). ``medication[x]`` is a
    choice: as in fhirpathpy, a ``medicationCodeableConcept`` hides the reference."""
    current = _session(ctx)
    out: list[Any] = []
    for resource in inputs:
        if not isinstance(resource, Mapping):
            continue
        if "medicationCodeableConcept" in resource or "_medicationCodeableConcept" in resource:
            concept = resource.get("medicationCodeableConcept")
            out.extend([concept] if isinstance(concept, Mapping) else [])
            continue
        reference = resource.get("medicationReference")
        ref = reference.get("reference") if isinstance(reference, Mapping) else None
        medication: Any = None
        if isinstance(ref, str) and ref.startswith("#"):
            medication = next(
                (
                    item
                    for item in resource.get("contained") or ()
                    if isinstance(item, Mapping)
                    and item.get("resourceType") == "Medication"
                    and isinstance(item.get("id"), str)
                    and "#" + item["id"] == ref
                ),
                None,
            )
        elif isinstance(ref, str) and current.resolver is not None:
            medication = current.resolver(ref)
        code = medication.get("code") if isinstance(medication, Mapping) else None
        if isinstance(code, Mapping):
            out.append(code)
    return out


def _duration(inputs: list[Any], end: list[Any], precision: str) -> list[int]:
    if len(inputs) != 1 or not end:
        return []
    if precision in ("hours", "hour", "minutes", "minute"):
        start_at, end_at = _parse_instant(inputs[0]), _parse_instant(end[0])
        if start_at is None or end_at is None:
            return []
        seconds = (end_at - start_at).total_seconds()
        return [int(seconds // (3600 if precision.startswith("hour") else 60))]
    start_day = _parse_date(getattr(inputs[0], "data", inputs[0]))
    end_value = end[0]
    end_day = _parse_date(getattr(end_value, "data", end_value))
    if start_day is None or end_day is None:
        return []
    return [_whole_periods(start_day, end_day, precision)]


def _clinical_date(inputs: list[Any]) -> list[str]:
    out = []
    for resource in inputs:
        found = clinical_date(resource)
        if found:
            out.append(found)
    return out


def _latest(inputs: list[Any]) -> list[Any]:
    candidates = [r for r in inputs if isinstance(r, Mapping)]
    if not candidates:
        return []
    best = max(
        candidates,
        key=lambda r: (_sort_key(clinical_date(r)), _sort_key(r.get("issued"))),
    )
    return [best]


def _single(inputs: list[Any]) -> list[Any]:
    """FHIRPath ``single()``: an error for more than one item (fhirpathpy returns an
    ``{"$status": "error"}`` object instead, which ``exists()`` then counts as true)."""
    if len(inputs) > 1:
        raise ValueError(f"single(): expected at most one item, got {len(inputs)}")
    return list(inputs)


def _trace(_ctx: Any, inputs: list[Any], name: Any = "", projection: Any = None) -> list[Any]:
    """FHIRPath ``trace(name [, projection])``: the input unchanged. Only the label and the
    number of items are logged (the items may be patient data)."""
    shown = projection(inputs) if callable(projection) else inputs
    log.debug("FHIRPath trace %s: %d item(s)", name, len(shown))
    return inputs


def _now(ctx: Mapping[str, Any], _inputs: list[Any]) -> FP_DateTime:
    return _session(ctx).now_value


def _today(ctx: Mapping[str, Any], _inputs: list[Any]) -> FP_DateTime:
    return _session(ctx).today_value


def _time_of_day(ctx: Mapping[str, Any], _inputs: list[Any]) -> FP_Time:
    return FP_Time(_session(ctx).now.time().isoformat(timespec="milliseconds"))


def _visit(node: Any) -> Any:
    """fhirpathpy's conversion of a result to plain data (``apply_parsed_path``)."""
    data = get_data(node)
    if isinstance(node, list):
        out = []
        for item in data:
            value = _visit(item)
            if isinstance(value, dict) and list(value.keys()) == ["extension"]:
                continue
            out.append(value)
        return out
    if isinstance(data, dict) and not isinstance(data, FP_Type):
        return {key: _visit(value) for key, value in data.items()}
    return data


class _Variables(dict[str, Any]):
    """``ctx["vars"]``: ``%context``, ``%ucum`` and ``env``, an entry of ``env`` read from it
    only when the expression first reads that variable (``env`` may compute it then, as
    ``evaluation.LazyEnvironment`` does). ``env`` wins over the two built-ins, as in
    fhirpathpy's ``vars.update(context)``."""

    __slots__ = ("env",)

    def __init__(self, resource: Any, env: Mapping[str, Any]) -> None:
        super().__init__()
        if "context" not in env:
            self["context"] = resource
        if "ucum" not in env:
            self["ucum"] = "http://unitsofmeasure.org"
        self.env = env

    def __missing__(self, name: str) -> Any:
        value = self.env[name]
        self[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self.env


@dataclass(frozen=True)
class CompiledExpression:
    """A compiled FHIRPath expression and the ``%variables`` it reads."""

    expression: str
    fn: Fn
    variables: frozenset[str]

    def _run(
        self, resource: Any, env: Mapping[str, Any], session: EvaluationSession | None
    ) -> list[Any]:
        resource = resource if resource is not None else {}
        data_root = resource if isinstance(resource, list) else [resource]
        variables = _Variables(resource, env)
        ctx: dict[str, Any] = {
            "dataRoot": data_root,
            "vars": variables,
            "model": R4_MODEL,
            "session": session,
        }
        return self.fn(ctx, data_root)

    def evaluate(
        self, resource: Any, env: Mapping[str, Any], session: EvaluationSession | None = None
    ) -> list[Any]:
        """Evaluate on ``resource`` with ``env`` as ``%variables``; ``session`` is the call's
        clock and data (``now()``, ``resolve()`` need it). The result is plain JSON."""
        return cast(list[Any], _visit(self._run(resource, env, session)))

    def evaluate_typed(
        self, resource: Any, env: Mapping[str, Any], session: EvaluationSession | None = None
    ) -> list[Any]:
        """Like ``evaluate`` but keeps fhirpathpy's typed nodes in the result.

        Used for variables: a variable holding FHIR elements (not resources), e.g. the items of
        a QuestionnaireResponse, keeps their types, so ``answer.value.ofType(Coding)`` works
        when another expression reads it. Convert with ``values.to_json`` before output.
        """
        out = []
        for item in self._run(resource, env, session):
            if isinstance(item, ResourceNode) and isinstance(item.data, dict):
                if list(item.data.keys()) == ["extension"]:
                    continue
            out.append(item)
        return out


def as_boolean(result: list[Any]) -> bool | None:
    """FHIRPath singleton evaluation to Boolean: True/False, or None when empty/not boolean."""
    if len(result) != 1:
        return None
    value = getattr(result[0], "data", result[0])
    return value if isinstance(value, bool) else None
