"""``ActivityDefinition/$apply`` (R4): build the request resource an ActivityDefinition describes.

Spec: https://hl7.org/fhir/R4/activitydefinition-operation-apply.html and CPG "Activity flow"
(https://hl7.org/fhir/uv/cpg/activityflow.html). Every created request is ``status: draft`` and
``intent: proposal``; the ActivityDefinition's dynamicValues are applied in document order, then
the caller's.
Only elements the request type has in R4 are written (``elements_of``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache
from typing import Any

from fhir_service import fhir
from fhir_service.engine.apply.evaluation import Scope
from fhir_service.engine.apply.values import result_value, set_path
from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.engine.fhirpath.expressions import FHIRPATH

#: Where each request kind names its subject, in order of preference.
SUBJECT_ELEMENTS = ("subject", "for", "patient")


@cache
def elements_of(kind: str) -> dict[str, str]:
    """The R4 elements of a resource type (JSON name → annotation text), from its R4B model.

    Request kinds differ: R4 ``CommunicationRequest`` has no ``intent`` and no
    ``instantiatesCanonical``, ``Task`` names its subject ``for``, ``NutritionOrder``
    ``patient``; only elements the type has are written.
    """
    try:
        cls = fhir.model_class(kind)
    except KeyError:
        return {}
    return {(info.alias or name): str(info.annotation) for name, info in cls.model_fields.items()}


def has_element(kind: str, element: str) -> bool:
    return element in elements_of(kind)


def _common(kind: str, ad: dict[str, Any], subject: str, new_id: str) -> dict[str, Any]:
    elements = elements_of(kind)
    resource: dict[str, Any] = {"resourceType": kind, "id": new_id}
    if "status" in elements:
        resource["status"] = "draft"
    if "intent" in elements:
        resource["intent"] = "proposal"
    element = next((e for e in SUBJECT_ELEMENTS if e in elements), None)
    if element is not None:
        reference = {"reference": subject}
        resource[element] = [reference] if "List" in elements[element] else reference
    annotation = elements.get("instantiatesCanonical", "")
    if ad.get("url") and "Canonical" in annotation:
        canonical = ad["url"] + (f"|{ad['version']}" if ad.get("version") else "")
        resource["instantiatesCanonical"] = [canonical] if "List" in annotation else canonical
    return resource


def _kind_elements(kind: str, ad: dict[str, Any], resource: dict[str, Any]) -> None:
    code = ad.get("code")
    if kind == "MedicationRequest":
        if "productCodeableConcept" in ad:
            resource["medicationCodeableConcept"] = ad["productCodeableConcept"]
        elif "productReference" in ad:
            resource["medicationReference"] = ad["productReference"]
        if ad.get("dosage"):
            resource["dosageInstruction"] = ad["dosage"]
    elif kind in ("ServiceRequest", "Task", "DeviceRequest") and code:
        resource["codeCodeableConcept" if kind == "DeviceRequest" else "code"] = code
    elif kind == "CommunicationRequest":
        if code:
            resource["category"] = [code]
        if ad.get("description"):
            resource["payload"] = [{"contentString": ad["description"]}]
    if kind == "ServiceRequest" and ad.get("bodySite"):
        resource["bodySite"] = ad["bodySite"]
    if kind == "Task" and ad.get("description"):
        resource["description"] = ad["description"]
    if ad.get("doNotPerform") and kind in ("ServiceRequest", "MedicationRequest"):
        resource["doNotPerform"] = True


def apply_activity(
    ad: dict[str, Any],
    subject: str,
    scope: Scope,
    compiler: FhirPathCompiler,
    new_id: Callable[[], str],
    source: str,
) -> dict[str, Any]:
    """Build the request of ``ad`` for ``subject`` and apply the AD's dynamicValues."""
    kind = str(ad.get("kind") or "Task")
    resource = _common(kind, ad, subject, new_id())
    _kind_elements(kind, copy.deepcopy(ad), resource)
    apply_dynamic_values(resource, ad.get("dynamicValue") or [], scope, compiler, source)
    return resource


def apply_dynamic_values(
    target: dict[str, Any],
    dynamic_values: list[dict[str, Any]],
    scope: Scope,
    compiler: FhirPathCompiler,
    source: str,
) -> None:
    """Apply ``dynamicValue`` (path, expression) pairs onto ``target`` in order.

    An empty result is a no-op; a failing expression or path is recorded as an issue.
    """
    for index, dv in enumerate(dynamic_values):
        path = str(dv.get("path", "")).lstrip("%")
        expr = dv.get("expression") or {}
        where = f"{source}.dynamicValue[{index}]"
        if expr.get("language") != FHIRPATH or not isinstance(expr.get("expression"), str):
            scope.issues.warning("dynamicValue language not supported (text/fhirpath only)", where)
            continue
        try:
            compiled = compiler.compile(expr["expression"])
        except ValueError as exc:
            scope.issues.error(str(exc), where)
            continue
        value = result_value(scope.evaluate(compiled, where))
        if value is None:
            continue
        try:
            set_path(target, path, value)
        except ValueError as exc:
            scope.issues.error(str(exc), where)
