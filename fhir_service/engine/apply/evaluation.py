"""The variables of one evaluation: engine variables, data collections, Library parameters and
variables, PlanDefinition variables — each computed at most once per call, and only if read.

Variable order of precedence (README "Writing rules"):

* engine: ``%patient``, ``%now``, ``%today``, ``%draftOrders``, ``%triggers``;
* one collection per resource type in the record, e.g. ``%Condition`` (empty when absent);
* Library ``parameter`` defaults (``cqf-defaultValue``), overridable per ``$apply`` call;
* Library ``variable`` extensions, then PlanDefinition ``variable`` extensions.

A variable that fails to evaluate is recorded as an issue and reads as empty; it never fails
the call (FHIR Clinical Reasoning https://hl7.org/fhir/R4/clinicalreasoning-module.html;
docs/authoring.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from fhir_service.engine.data.dataset import DataSet
from fhir_service.engine.fhirpath import (
    CompiledExpression,
    EvaluationSession,
    quantity,
)
from fhir_service.errors import IssueLog

UNIT_WORDS = {"a": "years", "mo": "months", "wk": "weeks", "d": "days", "h": "hours"}


def parameter_value(key: str, value: Any) -> Any:
    """A ``value[x]`` default as a FHIRPath value (Quantity/Duration/Age → FHIRPath Quantity)."""
    if key in ("valueQuantity", "valueDuration", "valueAge") and isinstance(value, dict):
        unit = value.get("unit") or UNIT_WORDS.get(str(value.get("code")), value.get("code"))
        return quantity(value["value"], str(unit))
    return value


_INTEGER_KINDS = frozenset({"Integer", "PositiveInt", "UnsignedInt"})
_STRING_KINDS = frozenset(
    {"String", "Code", "Uri", "Url", "Canonical", "Id", "Markdown", "Oid", "Uuid"}
    | {"Date", "DateTime", "Instant", "Time"}
)
_QUANTITY_KINDS = frozenset({"Quantity", "Duration", "Age", "Distance", "Count"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_parameter_value(declared: str | None, key: str, value: Any) -> str | None:
    """Why ``key``/``value`` (a ``value[x]``) cannot bind a parameter of type ``declared``.

    ``declared`` is ``Library.parameter.type`` (a FHIR type code such as ``integer``); an
    integer may bind a decimal. Returns None when the value fits, else the reason.
    """
    kind = key[len("value") :]
    if declared:
        allowed = {declared[:1].upper() + declared[1:]}
        if declared == "decimal":
            allowed.add("Integer")
        if kind not in allowed:
            names = " or ".join(sorted(f"value{a}" for a in allowed))
            return f"must be given as {names} (the parameter is a {declared})"
    if kind in _INTEGER_KINDS:
        ok = _is_number(value) and isinstance(value, int)
    elif kind == "Decimal":
        ok = _is_number(value)
    elif kind == "Boolean":
        ok = isinstance(value, bool)
    elif kind in _STRING_KINDS:
        ok = isinstance(value, str) and bool(value)
    elif kind in _QUANTITY_KINDS:
        ok = isinstance(value, dict) and _is_number(value.get("value"))
    else:
        ok = value is not None
    return None if ok else f"{key} does not hold a valid {kind or 'value'}"


@dataclass(frozen=True)
class VariableDef:
    name: str
    expression: CompiledExpression
    source: str


@dataclass
class CallInput:
    """What a call evaluates over: its data and its one clock.

    ``session`` is the only way the call's expressions are evaluated (``Scope.evaluate``):
    ``now()``/``today()`` inside FHIRPath and the engine's ``%now``/``%today`` read the same
    instant, and ``resolve()`` reads this call's data.
    """

    data: DataSet
    now: datetime
    patient_id: str | None = None
    triggers: list[dict[str, Any]] | None = None  # None: every draft triggers
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def session(self) -> EvaluationSession:
        return EvaluationSession(self.now, self.data.resolve, self.data.resolve_scoped)


class LazyEnvironment(Mapping[str, Any]):
    """The ``%variables`` one expression reads, each computed by its scope when first read.

    A variable that the expression never reaches (the other branch of ``iif()``, the right of
    a false ``and``) is not evaluated for it; one that is read is evaluated once per scope and
    memoised, so values are those of evaluating them all up front.
    """

    __slots__ = ("_names", "_scope")

    def __init__(self, scope: Scope, names: frozenset[str]) -> None:
        self._scope = scope
        self._names = names

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        return self._scope.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Scope:
    """Lazily computed, memoised variables of one call (or of one PlanDefinition in a call)."""

    def __init__(
        self,
        call: CallInput,
        variables: Mapping[str, VariableDef],
        defaults: Mapping[str, Any],
        issues: IssueLog,
        parent: Scope | None = None,
    ) -> None:
        self.call = call
        self.variables = variables
        self.defaults = defaults
        self.issues = issues
        self.parent = parent
        self._memo: dict[str, Any] = {}
        self._active: set[str] = set()
        self.patient: dict[str, Any] | None = (
            call.data.patient(call.patient_id) if parent is None else parent.patient
        )

    def child(self, variables: Mapping[str, VariableDef]) -> Scope:
        return Scope(self.call, variables, {}, self.issues, parent=self)

    def get(self, name: str) -> Any:
        if name in self._memo:
            return self._memo[name]
        if name in self.variables:
            value = self._evaluate_variable(self.variables[name])
        elif self.parent is not None:
            return self.parent.get(name)
        else:
            value = self._base(name)
        self._memo[name] = value
        return value

    def _base(self, name: str) -> Any:
        call = self.call
        if name in call.parameters:
            return call.parameters[name]
        if name in self.defaults:
            return self.defaults[name]
        if name == "patient":
            return self.patient if self.patient is not None else []
        if name == "now":
            return call.session.now_value
        if name == "today":
            return call.session.today_value
        if name == "draftOrders":
            return call.data.drafts
        if name == "triggers":
            return call.data.drafts if call.triggers is None else call.triggers
        return call.data.by_type.get(name, [])

    def _evaluate_variable(self, var: VariableDef) -> Any:
        if var.name in self._active:
            self.issues.error(f"variable %{var.name} refers to itself", var.source)
            return []
        self._active.add(var.name)
        try:
            return self.evaluate(var.expression, var.source, typed=True)
        finally:
            self._active.discard(var.name)

    def env(self, expression: CompiledExpression) -> Mapping[str, Any]:
        return LazyEnvironment(self, expression.variables)

    def evaluate(
        self, expression: CompiledExpression, source: str, *, typed: bool = False
    ) -> list[Any]:
        """Evaluate on the patient; on failure record an issue and return empty.

        ``typed`` keeps fhirpathpy's typed nodes (variables: see
        ``CompiledExpression.evaluate_typed``); otherwise the result is plain JSON.
        """
        try:
            run = expression.evaluate_typed if typed else expression.evaluate
            return run(self.patient or {}, self.env(expression), self.call.session)
        except Exception as exc:  # fhirpathpy raises assorted types; never fail the call
            self.issues.error(
                f"expression failed: {type(exc).__name__}", source, details=str(exc)[:500]
            )
            return []
