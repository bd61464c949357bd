"""Finding and naming the FHIRPath expressions inside knowledge artifacts.

An artifact's expressions live in ``Expression`` values (``language`` ``text/fhirpath``):
PlanDefinition conditions and dynamicValues, ``variable`` extensions (PlanDefinition, Library,
Questionnaire), SDC ``initialExpression`` and friends. They are found generically so that a new
kind of artifact needs no loader change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: ``Expression.language`` of FHIRPath (https://hl7.org/fhir/R4/valueset-expression-language.html).
FHIRPATH = "text/fhirpath"
VARIABLE_EXT = "http://hl7.org/fhir/StructureDefinition/variable"
DEFAULT_VALUE_EXT = "http://hl7.org/fhir/StructureDefinition/cqf-defaultValue"
#: Variables the engine binds in every rule evaluation (docs/authoring.md, "Expressions").
ENGINE_VARIABLES = frozenset({"patient", "now", "today", "draftOrders", "triggers"})


def iter_expressions(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(path, Expression)`` for every FHIRPath Expression under ``node``."""
    if isinstance(node, dict):
        if node.get("language") == FHIRPATH and isinstance(node.get("expression"), str):
            yield path, node
            return
        for key, value in node.items():
            yield from iter_expressions(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from iter_expressions(item, f"{path}[{index}]")


def variables_of(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The root ``variable`` extension Expressions of an artifact, in document order."""
    out: list[dict[str, Any]] = []
    for ext in resource.get("extension") or ():
        if ext.get("url") == VARIABLE_EXT and isinstance(ext.get("valueExpression"), dict):
            out.append(ext["valueExpression"])
    return out


def parameter_defaults(library: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """``Library.parameter`` defaults: name → (value[x] key, value), from ``cqf-defaultValue``."""
    out: dict[str, tuple[str, Any]] = {}
    for param in library.get("parameter") or ():
        name = param.get("name")
        for ext in param.get("extension") or ():
            if ext.get("url") != DEFAULT_VALUE_EXT:
                continue
            for key, value in ext.items():
                if key.startswith("value") and isinstance(name, str):
                    out[name] = (key, value)
    return out
