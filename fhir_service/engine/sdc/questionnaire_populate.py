"""SDC ``$populate``: expression-based population of a QuestionnaireResponse.

Implements the expression-based mechanism of SDC "Populating a Questionnaire"
(https://hl7.org/fhir/uv/sdc/populate.html#exp-pop). The
Questionnaire says everything; this module knows no linkId, code or look-back window:

* ``sdc-questionnaire-launchContext`` names the launch resources. ``patient`` is bound to the
  Patient the ``subject`` reference names when the data holds it (an empty collection otherwise);
  every other launch context is an empty collection.
* ``variable`` extensions (http://hl7.org/fhir/StructureDefinition/variable) at the root are
  evaluated in document order, then, walking the items, those of each item (visible to the item
  and its descendants).
* ``sdc-questionnaire-initialExpression`` on a question gives its answers; a static
  ``initial[x]`` is used when there is no expression.

Environment of every expression (``text/fhirpath`` only): the launch contexts, the variables in
scope, ``%resource`` (the response being built), ``%questionnaire``, ``%qitem`` (the current
item), and one collection per resource type the expression names — ``%Observation`` holds the
call's Observations, an empty collection when there are none. Compilation
(``compile_questionnaire``) refuses any other undefined ``%name``, so evaluation never meets one.

Values are converted to the item's answer type as SDC allows (integral decimal or Quantity →
integer, Coding/CodeableConcept/code → the matching ``answerOption`` Coding, Resource →
Reference). Data problems never raise: a failing expression, a value of the wrong type, a value
outside ``answerOption``/``minValue``/``maxValue`` or several values for a non-repeating item
become issues and leave the item unanswered. Answers to items disabled by ``enableWhen`` are
dropped. The response is ``in-progress``, points to ``url|version``, and nests answered items as
the Questionnaire groups them (unanswered items and empty groups are left out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from fhir_service import fhir
from fhir_service.engine.data.patient_data import (
    patient_id_of,
    patients_own,
    reference_key,
    resolve_reference,
    to_json,
)
from fhir_service.engine.fhirpath import (
    CompiledExpression,
    EvaluationSession,
    FhirPathCompiler,
)
from fhir_service.engine.fhirpath.expressions import FHIRPATH
from fhir_service.engine.sdc.questionnaire_response import (
    Enablement,
    answer_problems,
    answer_value,
    canonical_of,
    date_like,
    index_questionnaire,
    values_equal,
)
from fhir_service.errors import Issue

log = logging.getLogger(__name__)

SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition"
LAUNCH_CONTEXT_URL = f"{SDC}/sdc-questionnaire-launchContext"
INITIAL_EXPRESSION_URL = f"{SDC}/sdc-questionnaire-initialExpression"
VARIABLE_URL = "http://hl7.org/fhir/StructureDefinition/variable"
#: Variables the engine binds itself (besides launch contexts, variables and data types).
ENGINE_VARIABLES = frozenset({"resource", "questionnaire", "qitem"})


# --------------------------------------------------------------------------------------------
# Compilation (once per Questionnaire)


@dataclass(frozen=True)
class Variable:
    """A named expression (``variable`` extension)."""

    name: str
    expression: CompiledExpression
    location: str


@dataclass(frozen=True)
class CompiledItem:
    """The population expressions of one item."""

    link_id: str
    location: str
    variables: tuple[Variable, ...] = ()
    initial: CompiledExpression | None = None


@dataclass(frozen=True)
class LaunchContext:
    """One ``launchContext``: its name (the ``%variable``) and the resource types it may hold."""

    name: str
    types: tuple[str, ...]


@dataclass(frozen=True)
class CompiledQuestionnaire:
    """A Questionnaire's population expressions, parsed and checked once."""

    canonical: str
    launch_contexts: tuple[LaunchContext, ...]
    variables: tuple[Variable, ...]
    items: Mapping[str, CompiledItem]
    data_types: frozenset[str]


def _expression(ext: Mapping[str, Any], location: str) -> Mapping[str, Any]:
    expr = ext.get("valueExpression")
    if not isinstance(expr, Mapping) or not isinstance(expr.get("expression"), str):
        raise ValueError(f"{location}: extension {ext.get('url')} has no valueExpression")
    if expr.get("language") != FHIRPATH:
        raise ValueError(f"{location}: unsupported expression language {expr.get('language')!r}")
    return expr


def _launch_contexts(questionnaire: Mapping[str, Any]) -> tuple[LaunchContext, ...]:
    out = []
    for ext in questionnaire.get("extension") or ():
        if ext.get("url") != LAUNCH_CONTEXT_URL:
            continue
        name, types = None, []
        for part in ext.get("extension") or ():
            if part.get("url") == "name":
                coding = part.get("valueCoding") or {}
                name = coding.get("code") if isinstance(coding, Mapping) else None
                name = name or part.get("valueId")
            elif part.get("url") == "type" and isinstance(part.get("valueCode"), str):
                types.append(part["valueCode"])
        if not isinstance(name, str):
            raise ValueError("Questionnaire.extension: launchContext without a name")
        out.append(LaunchContext(name, tuple(types)))
    return tuple(out)


@dataclass
class _Compiler:
    compiler: FhirPathCompiler
    data_types: set[str] = field(default_factory=set)

    def compile(
        self, expr: Mapping[str, Any], location: str, scope: set[str]
    ) -> CompiledExpression:
        try:
            compiled = self.compiler.compile(str(expr["expression"]))
        except ValueError as exc:
            raise ValueError(f"{location}: {exc}") from None
        for name in compiled.variables - scope - ENGINE_VARIABLES:
            if not fhir.is_resource_type(name):
                raise ValueError(f"{location}: undefined variable %{name}")
            self.data_types.add(name)
        return compiled

    def variables(self, node: Mapping[str, Any], location: str, scope: set[str]) -> list[Variable]:
        out: list[Variable] = []
        seen: set[str] = set()
        for index, ext in enumerate(node.get("extension") or ()):
            if ext.get("url") != VARIABLE_URL:
                continue
            where = f"{location}.extension[{index}]"
            expr = _expression(ext, where)
            name = expr.get("name")
            if not isinstance(name, str) or name in seen:
                raise ValueError(f"{where}: variable without a name, or a duplicate name")
            out.append(Variable(name, self.compile(expr, where, scope), where))
            seen.add(name)
            scope.add(name)
        return out

    def items(
        self, items: Any, location: str, scope: set[str], into: dict[str, CompiledItem]
    ) -> None:
        for index, item in enumerate(items or ()):
            here = f"{location}.item[{index}]"
            inner = set(scope)
            variables = self.variables(item, here, inner)
            initial = None
            for e_index, ext in enumerate(item.get("extension") or ()):
                if ext.get("url") == INITIAL_EXPRESSION_URL:
                    where = f"{here}.extension[{e_index}]"
                    initial = self.compile(_expression(ext, where), where, inner)
            if variables or initial is not None:
                into[item["linkId"]] = CompiledItem(item["linkId"], here, tuple(variables), initial)
            self.items(item.get("item"), here, inner, into)


def compile_questionnaire(
    questionnaire: Mapping[str, Any], compiler: FhirPathCompiler
) -> CompiledQuestionnaire:
    """Parse every population expression of ``questionnaire`` and check its variables.

    Raises:
        ValueError: naming the location, for an expression that does not parse, a language
            other than ``text/fhirpath``, or a ``%variable`` that is neither a launch context,
            a variable in scope, an engine variable nor a FHIR resource type.
    """
    launch = _launch_contexts(questionnaire)
    work = _Compiler(compiler)
    scope = {c.name for c in launch}
    root_vars = work.variables(questionnaire, "Questionnaire", scope)
    items: dict[str, CompiledItem] = {}
    work.items(questionnaire.get("item"), "Questionnaire", scope, items)
    return CompiledQuestionnaire(
        canonical=canonical_of(questionnaire),
        launch_contexts=launch,
        variables=tuple(root_vars),
        items=items,
        data_types=frozenset(work.data_types),
    )


# --------------------------------------------------------------------------------------------
# Value conversion


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal) and value == int(value):
        return int(value)
    if isinstance(value, Mapping) and "value" in value:
        return _whole(value["value"])
    return None


def _option_coding(item: Mapping[str, Any], value: Any) -> dict[str, Any] | None:
    options = [o["valueCoding"] for o in item.get("answerOption") or () if "valueCoding" in o]
    if isinstance(value, Mapping) and "coding" in value:
        for coding in value.get("coding") or ():
            found = _option_coding(item, coding)
            if found is not None:
                return found
        return None
    if isinstance(value, str):
        matches = [o for o in options if o.get("code") == value]
        return dict(matches[0]) if len(matches) == 1 else None
    if isinstance(value, Mapping) and "code" in value:
        if not options:
            return {k: v for k, v in value.items() if k in ("system", "version", "code", "display")}
        for option in options:
            if values_equal(value, option):
                return dict(option)
    return None


def _reference(value: Any) -> dict[str, Any] | None:
    if isinstance(value, Mapping) and "reference" in value:
        return dict(value)
    if isinstance(value, Mapping) and "resourceType" in value and "id" in value:
        return {"reference": f"{value['resourceType']}/{value['id']}"}
    return None


_SIMPLE: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "boolean": ("valueBoolean", lambda v: v if isinstance(v, bool) else None),
    "integer": ("valueInteger", _whole),
    "decimal": (
        "valueDecimal",
        lambda v: v if isinstance(v, int | float) and not isinstance(v, bool) else None,
    ),
    "string": ("valueString", lambda v: v if isinstance(v, str) else None),
    "text": ("valueString", lambda v: v if isinstance(v, str) else None),
    "url": ("valueUri", lambda v: v if isinstance(v, str) else None),
    "date": ("valueDate", lambda v: v[:10] if isinstance(v, str) and date_like(v[:10]) else None),
    "dateTime": ("valueDateTime", lambda v: v if isinstance(v, str) else None),
    "time": ("valueTime", lambda v: v if isinstance(v, str) else None),
    "quantity": ("valueQuantity", lambda v: dict(v) if isinstance(v, Mapping) else None),
    "reference": ("valueReference", _reference),
    "attachment": ("valueAttachment", lambda v: dict(v) if isinstance(v, Mapping) else None),
}


def to_answer(item: Mapping[str, Any], raw: Any) -> tuple[str, Any] | None:
    """Convert one expression result to an answer ``(value[x] key, value)`` for ``item``."""
    value = to_json(raw)
    item_type = str(item.get("type"))
    if item_type in ("choice", "open-choice"):
        coding = _option_coding(item, value)
        if coding is not None:
            return "valueCoding", coding
        for option in item.get("answerOption") or ():
            found = answer_value(option)
            if found and found[0] != "valueCoding" and values_equal(value, found[1]):
                return found
        if isinstance(value, str) and item_type == "open-choice":
            return "valueString", value
        return None
    if item_type == "decimal" and isinstance(value, Mapping):
        value = value.get("value")
    simple = _SIMPLE.get(item_type)
    if simple is None:
        return None
    converted = simple[1](value)
    return (simple[0], converted) if converted is not None else None


# --------------------------------------------------------------------------------------------
# Population


def fhir_instant(moment: datetime) -> str:
    """``moment`` as a FHIR instant (seconds, ``Z`` for UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


@dataclass
class _Population:
    questionnaire: Mapping[str, Any]
    compiled: CompiledQuestionnaire
    issues: list[Issue]
    session: EvaluationSession
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def evaluate(
        self, expr: CompiledExpression, env: dict[str, Any], location: str, what: str
    ) -> list[Any] | None:
        try:
            return expr.evaluate(env["resource"], env, self.session)
        except Exception as exc:  # a data problem becomes an issue, never an error
            self.issues.append(Issue("error", "processing", f"{what} failed: {exc}", (location,)))
            log.info("population expression failed", extra={"location": location})
            return None

    def bind(self, variables: Sequence[Variable], env: dict[str, Any]) -> None:
        for variable in variables:
            result = self.evaluate(
                variable.expression, env, variable.location, f"variable %{variable.name}"
            )
            env[variable.name] = result if result is not None else []

    def walk(self, items: Any, env: dict[str, Any]) -> None:
        for item in items or ():
            compiled = self.compiled.items.get(item.get("linkId"))
            inner = dict(env, qitem=item)
            if compiled is not None:
                self.bind(compiled.variables, inner)
            if item.get("type") not in ("group", "display"):
                self.populate_item(item, compiled, inner)
            self.walk(item.get("item"), inner)

    def populate_item(
        self, item: Mapping[str, Any], compiled: CompiledItem | None, env: dict[str, Any]
    ) -> None:
        link_id = str(item.get("linkId"))
        if compiled is not None and compiled.initial is not None:
            where = f"{compiled.location} (initialExpression)"
            values = self.evaluate(compiled.initial, env, where, f"initialExpression of {link_id}")
            if values is None:
                return
        else:
            where = f"linkId {link_id} (initial)"
            values = [v for i in item.get("initial") or () if (v := answer_value(i)) is not None]
            values = [v[1] for v in values]
        if not values:
            return
        if len(values) > 1 and not item.get("repeats"):
            self.problem(link_id, where, f"{len(values)} values for a non-repeating item")
            return
        answers = []
        for raw in values:
            converted = to_answer(item, raw)
            if converted is None:
                self.problem(link_id, where, f"value {to_json(raw)!r} does not fit the item")
                return
            problems = answer_problems(item, *converted)
            if problems:
                self.problem(link_id, where, "; ".join(problems))
                return
            answers.append({converted[0]: converted[1]})
        self.answers[link_id] = answers

    def problem(self, link_id: str, where: str, text: str) -> None:
        self.issues.append(
            Issue("warning", "processing", f"{link_id} not populated: {text}", (where,))
        )


def _nest(items: Any, answers: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items or ():
        link_id = item.get("linkId")
        node: dict[str, Any] = {"linkId": link_id}
        if "text" in item:
            node["text"] = item["text"]
        children = _nest(item.get("item"), answers)
        if item.get("type") == "group":
            if children:
                out.append({**node, "item": children})
        elif link_id in answers:
            given = [dict(a) for a in answers[link_id]]
            if children:
                given[0]["item"] = children
            out.append({**node, "answer": given})
    return out


def populate(
    questionnaire: Mapping[str, Any],
    compiled: CompiledQuestionnaire,
    subject: Mapping[str, Any],
    resources: Sequence[Mapping[str, Any]],
    now: datetime,
) -> tuple[dict[str, Any], list[Issue]]:
    """Build an ``in-progress`` QuestionnaireResponse prefilled from ``resources``.

    Steps:
        1. keep the resources about ``subject`` (or about no one in particular);
        2. bind launch contexts, data collections and root variables;
        3. walk the items: item variables, then initialExpression (or ``initial``);
        4. drop answers of items ``enableWhen`` disables;
        5. nest the answered items as the Questionnaire groups them.

    Args:
        questionnaire: the Questionnaire (FHIR JSON).
        compiled: its ``compile_questionnaire`` result.
        subject: the Reference the response is about (``$populate`` ``subject``).
        resources: the patient data supplied with the call.
        now: the evaluation instant (``today()``/``now()``, ``authored``).

    Returns:
        The QuestionnaireResponse and the issues met (never raises for data problems).
    """
    issues: list[Issue] = []
    subject_key = reference_key(subject.get("reference"))
    data, foreign = patients_own(resources, patient_id_of(subject.get("reference")))
    if foreign:
        issues.append(
            Issue(
                "information",
                "informational",
                f"{foreign} resource(s) about another subject were ignored",
            )
        )
    by_key = {f"{r.get('resourceType')}/{r.get('id')}": dict(r) for r in data if r.get("id")}
    qr: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": compiled.canonical,
        "status": "in-progress",
        "subject": dict(subject),
        "authored": fhir_instant(now),
    }
    env: dict[str, Any] = {"resource": qr, "questionnaire": questionnaire}
    for context in compiled.launch_contexts:
        env[context.name] = [
            r
            for r in data
            if r.get("resourceType") in context.types
            and f"{r.get('resourceType')}/{r.get('id')}" == subject_key
        ]
    for type_name in compiled.data_types:
        env[type_name] = [r for r in data if r.get("resourceType") == type_name]
    session = EvaluationSession(now, partial(resolve_reference, by_key=by_key))
    work = _Population(questionnaire, compiled, issues, session)
    work.bind(compiled.variables, env)
    work.walk(questionnaire.get("item"), env)
    enablement = Enablement(index_questionnaire(questionnaire), work.answers)
    answers = {k: v for k, v in work.answers.items() if enablement.enabled(k)}
    for link_id in sorted(set(work.answers) - set(answers)):
        issues.append(
            Issue("information", "informational", f"{link_id} not populated: item disabled")
        )
    items = _nest(questionnaire.get("item"), answers)
    if items:
        qr["item"] = items
    return qr, issues
