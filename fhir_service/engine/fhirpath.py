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
``duration(end, precision)``
    Whole calendar periods (``'years'``, ``'months'``, ``'weeks'``, ``'days'``) from the input
    date to ``end`` (FHIRPath 3.0 ``duration``).
``now()``, ``today()``
    From the injected clock, never the wall clock (``FHIR_SERVICE_NOW`` pins it).
``clinicalDate()``
    A resource's clinically relevant date (``CLINICAL_DATE_PATHS``: e.g. a Condition's
    ``onsetDateTime`` ?? ``onsetPeriod.start`` ?? ``recordedDate``; an Observation's
    ``effective[x]`` ?? ``issued``; a QuestionnaireResponse's ``authored``).
``latest()``
    The resource of the input with the latest ``clinicalDate()`` (Observations: ties broken by
    ``issued``); the service orders candidates itself, never relying on a server's ``_sort``.

Every expression is parsed once (``compile``) — parsing costs ~2–4 ms in fhirpathpy. The clock
and the call's data reach the functions through a ``ContextVar``, so compiled expressions are
shared safely between worker threads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from antlr4.tree.Tree import ParseTreeWalker  # type: ignore[import-untyped]
from fhirpathpy.engine import base_invocation_registry
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity
from fhirpathpy.engine.util import set_paths
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhir_service.engine import fhirpath_fast, fhirpath_fast_predicate, fhirpath_shortcut
from fhir_service.engine.terminology import Terminology

fhirpath_fast.install()
fhirpath_fast_predicate.install()
fhirpath_shortcut.install()

R4_MODEL: dict[str, Any] = models["r4"]
VARIABLE_RE = re.compile(r"%(?:`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*))")
BUILTIN_VARIABLES = frozenset({"context", "ucum", "resource", "rootResource", "sct", "loinc"})

#: Functions of the table below that ``fhirpath_fast_predicate`` may call directly (they take
#: string literals and answer a boolean).
FAST_PREDICATE_FUNCTIONS = frozenset({"memberOf"})
#: fhirpathpy functions the fast predicates reimplement (never overridden by the table below)
FAST_PATH_BUILTINS = frozenset({"where", "exists", "empty"})

Resolver = Callable[[str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class EvaluationSession:
    """What the extension functions see during one call: the clock and the data."""

    now: datetime
    resolver: Resolver | None = None
    #: Resolves a Reference object itself: ``#id`` looked up in the contained resources of the
    #: resource that holds that very Reference (identity), not of any resource of the call.
    scoped: Callable[[Mapping[str, Any]], dict[str, Any] | None] | None = None


_SESSION: ContextVar[EvaluationSession | None] = ContextVar("fhirpath_session", default=None)


@contextmanager
def session(
    now: datetime,
    resolver: Resolver | None = None,
    scoped: Callable[[Mapping[str, Any]], dict[str, Any] | None] | None = None,
) -> Iterator[EvaluationSession]:
    """Bind the clock and data for the evaluations run inside the ``with`` block."""
    current = EvaluationSession(now=now, resolver=resolver, scoped=scoped)
    token = _SESSION.set(current)
    try:
        yield current
    finally:
        _SESSION.reset(token)


def _session() -> EvaluationSession:
    current = _SESSION.get()
    if current is None:
        raise RuntimeError("FHIRPath evaluated outside an evaluation session")
    return current


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
    text = str(value) if value is not None else ""
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


def _sort_key(text: str | None) -> datetime:
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


class FhirPathCompiler:
    """Compiles expressions with the service's extension functions bound to a Terminology."""

    def __init__(
        self, terminology: Terminology | None = None, *, fast_predicates: bool = True
    ) -> None:
        self.terminology = terminology or Terminology()
        #: evaluate common boolean sub-expressions in Python (``fhirpath_fast_predicate``)
        self.fast_predicates = fast_predicates
        self._table = fhirpath_fast.InvocationTable(
            {
                "memberOf": {"fn": self._member_of, "arity": {1: ["String"]}},
                "ingredients": {"fn": self._ingredients, "arity": {1: ["String"]}},
                "resolve": {"fn": self._resolve, "arity": {0: []}},
                "duration": {"fn": self._duration, "arity": {2: ["Any", "String"]}},
                "now": {"fn": self._now, "arity": {0: []}},
                "today": {"fn": self._today, "arity": {0: []}},
                "clinicalDate": {"fn": self._clinical_date, "arity": {0: []}},
                "latest": {"fn": self._latest, "arity": {0: []}},
                "single": {"fn": self._single, "arity": {0: []}},
            }
        )
        self._functions: dict[str, Mapping[str, Any]] = {**base_invocation_registry, **self._table}
        self._cache: dict[str, CompiledExpression] = {}

    def compile(self, expression: str) -> CompiledExpression:
        """Parse ``expression`` once (cached); raises ``ValueError`` when it does not parse."""
        cached = self._cache.get(expression)
        if cached is not None:
            return cached
        try:
            ast = parse_strict(expression)
        except Exception as exc:  # ANTLR raises assorted exception types
            raise ValueError(f"FHIRPath does not parse: {exc}") from None
        for name, count in _function_calls(ast):
            known = self._functions.get(name)
            if known is None:
                raise ValueError(f"FHIRPath function {name}() is not supported")
            arity = known.get("arity")
            if isinstance(arity, Mapping) and count not in arity:
                allowed = " or ".join(str(n) for n in sorted(arity))
                raise ValueError(f"{name}() takes {allowed} argument(s), not {count}")
        if self.fast_predicates and not FAST_PATH_BUILTINS & self._table.keys():
            ast = fhirpath_fast_predicate.optimize(ast, R4_MODEL, FAST_PREDICATE_FUNCTIONS)
        options = {"userInvocationTable": self._table}
        fn = set_paths(
            fhirpathpy.apply_parsed_path, parsedPath=ast, model=R4_MODEL, options=options
        )
        typed_fn = set_paths(
            fhirpathpy.apply_parsed_path,
            parsedPath=ast,
            model=R4_MODEL,
            options={**options, "returnRawData": True},
        )
        names = frozenset(a or b for a, b in VARIABLE_RE.findall(expression)) - BUILTIN_VARIABLES
        compiled = CompiledExpression(expression, fn, names, typed_fn)
        self._cache[expression] = compiled
        return compiled

    @property
    def compiled_count(self) -> int:
        return len(self._cache)

    def _member_of(self, inputs: list[Any], url: str) -> list[bool]:
        if not inputs:
            return []
        return [any(self.terminology.member(value, url) for value in inputs)]

    def _ingredients(self, inputs: list[Any], url: str) -> list[str]:
        out: list[str] = []
        for value in inputs:
            out.extend(self.terminology.ingredients(value, url))
        return out

    @staticmethod
    def _resolve(inputs: list[Any]) -> list[dict[str, Any]]:
        current = _session()
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

    @staticmethod
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

    @staticmethod
    def _clinical_date(inputs: list[Any]) -> list[str]:
        out = []
        for resource in inputs:
            found = clinical_date(resource)
            if found:
                out.append(found)
        return out

    @staticmethod
    def _latest(inputs: list[Any]) -> list[Any]:
        candidates = [r for r in inputs if isinstance(r, Mapping)]
        if not candidates:
            return []
        best = max(
            candidates,
            key=lambda r: (_sort_key(clinical_date(r)), _sort_key(r.get("issued"))),
        )
        return [best]

    @staticmethod
    def _single(inputs: list[Any]) -> list[Any]:
        """FHIRPath ``single()``: an error for more than one item (fhirpathpy returns an
        ``{"$status": "error"}`` object instead, which ``exists()`` then counts as true)."""
        if len(inputs) > 1:
            raise ValueError(f"single(): expected at most one item, got {len(inputs)}")
        return list(inputs)

    @staticmethod
    def _now(_inputs: list[Any]) -> FP_DateTime:
        return fhir_datetime(_session().now)

    @staticmethod
    def _today(_inputs: list[Any]) -> FP_DateTime:
        return fhir_date(_session().now)


@dataclass(frozen=True)
class CompiledExpression:
    """A parsed FHIRPath expression and the ``%variables`` it reads."""

    expression: str
    fn: Callable[..., list[Any]]
    variables: frozenset[str]
    typed_fn: Callable[..., list[Any]] | None = None

    def evaluate(self, resource: Any, env: Mapping[str, Any]) -> list[Any]:
        """Evaluate on ``resource`` with ``env`` as ``%variables`` (inside a ``session``)."""
        return self.fn(resource if resource is not None else {}, dict(env))

    def evaluate_typed(self, resource: Any, env: Mapping[str, Any]) -> list[Any]:
        """Like ``evaluate`` but keeps fhirpathpy's typed nodes in the result.

        Used for variables: a variable holding FHIR elements (not resources), e.g. the items of
        a QuestionnaireResponse, keeps their types, so ``answer.value.ofType(Coding)`` works
        when another expression reads it. Convert with ``values.to_json`` before output.
        """
        fn = self.typed_fn or self.fn
        return fn(resource if resource is not None else {}, dict(env))


def as_boolean(result: list[Any]) -> bool | None:
    """FHIRPath singleton evaluation to Boolean: True/False, or None when empty/not boolean."""
    if len(result) != 1:
        return None
    value = getattr(result[0], "data", result[0])
    return value if isinstance(value, bool) else None
