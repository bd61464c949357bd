"""The patient's data as every operation reads it: whose it is, what a reference names, and how a
FHIRPath result becomes FHIR JSON.

One module for CDS Hooks calls, ``$apply``, SDC ``$populate`` and ``$extract`` alike, so that they
can never disagree (docs/authoring.md, "Patient data"):

* :func:`about_other_patient`: a resource about a Patient other than the call's never feeds a
  rule, a prefill or an extraction. A client's server or prefetch may return other patients'
  data (a search that ignores ``patient=``); the elements that name the patient are those of
  FHIR R4's Patient compartment that hold a single Reference (``subject``, ``patient``, ``for``,
  ``beneficiary``; https://hl7.org/fhir/R4/compartmentdefinition-patient.html), and a Patient
  resource is about itself.
* :func:`reference_key` and :func:`resolve_reference`: a literal reference (``Type/id``, an
  absolute URL ending so, with or without ``_history/<v>``, or ``#id`` for a contained resource)
  to the resource it names (https://hl7.org/fhir/R4/references.html#literal).
* :func:`to_json`: a FHIRPath result item as FHIR JSON (https://hl7.org/fhirpath/N1/#types):
  Quantity → a UCUM Quantity, Date/DateTime/Time → their string, Decimal → a JSON number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from fhirpathpy.engine.nodes import FP_Quantity, FP_TimeBase, ResourceNode

from fhir_service.errors import PayloadTooLarge

#: Elements that name the patient a resource is about (R4), in order of preference.
PATIENT_ELEMENTS = ("subject", "patient", "for", "beneficiary")

UCUM = "http://unitsofmeasure.org"
#: FHIRPath calendar duration words → UCUM codes (https://hl7.org/fhirpath/N1/#time-valued-quantities).
CALENDAR_UCUM = {
    "year": "a",
    "years": "a",
    "month": "mo",
    "months": "mo",
    "week": "wk",
    "weeks": "wk",
    "day": "d",
    "days": "d",
    "hour": "h",
    "hours": "h",
    "minute": "min",
    "minutes": "min",
    "second": "s",
    "seconds": "s",
}


def reference_key(reference: Any) -> str | None:
    """``Type/id`` of a literal reference (absolute URLs and ``_history`` stripped).

    None for a contained (``#id``) or ``urn:`` reference, or anything that is not ``…/Type/id``.
    """
    if not isinstance(reference, str) or reference.startswith(("#", "urn:")):
        return None
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 and all(parts[-2:]) else None


def patient_id_of(reference: Any) -> str | None:
    """The Patient id a reference names (``Patient/p1``, ``https://…/Patient/p1``), else None."""
    key = reference_key(reference)
    if key is None:
        return None
    rtype, _, rid = key.partition("/")
    return rid if rtype == "Patient" else None


def about_other_patient(resource: Mapping[str, Any], patient_id: str | None) -> bool:
    """True when ``resource`` is about a Patient other than ``patient_id``.

    A resource naming no Patient (or a Group, a Device...) is kept; the first of
    :data:`PATIENT_ELEMENTS` holding a literal reference decides. Without a ``patient_id``
    nothing is left out.
    """
    if not patient_id:
        return False
    if resource.get("resourceType") == "Patient":
        return resource.get("id") not in (None, patient_id)
    for element in PATIENT_ELEMENTS:
        ref = resource.get(element)
        if not isinstance(ref, Mapping):
            continue
        key = reference_key(ref.get("reference"))
        if key is None:
            continue
        rtype, _, rid = key.partition("/")
        return rtype == "Patient" and rid != patient_id
    return False


def patients_own(
    resources: Iterable[Mapping[str, Any]], patient_id: str | None
) -> tuple[list[Mapping[str, Any]], int]:
    """The resources not about another patient, and how many were left out."""
    kept: list[Mapping[str, Any]] = []
    foreign = 0
    for resource in resources:
        if about_other_patient(resource, patient_id):
            foreign += 1
        else:
            kept.append(resource)
    return kept, foreign


def resolve_reference(
    reference: str,
    by_key: Mapping[str, dict[str, Any]],
    contained: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The resource ``reference`` names among ``by_key`` (``Type/id`` → resource) or, for
    ``#id``, among ``contained``."""
    if reference.startswith("#"):
        return (contained or {}).get(reference)
    found = by_key.get(reference)
    if found is None:
        key = reference_key(reference)
        found = by_key.get(key) if key else None
    return found


def to_json(value: Any) -> Any:
    """One FHIRPath result item as plain JSON (Quantity → FHIR Quantity, dates → strings)."""
    if isinstance(value, ResourceNode):
        return to_json(value.data)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, FP_Quantity):
        unit = str(value.unit).strip("'")
        return {
            "value": to_json(Decimal(str(value.value))),
            "unit": unit,
            "system": UCUM,
            "code": CALENDAR_UCUM.get(unit, unit),
        }
    if isinstance(value, FP_TimeBase):
        return str(value)
    if isinstance(value, Decimal):
        number = float(value)
        return int(number) if number.is_integer() else number
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def check_resource_count(count: int, limit: int, where: str) -> None:
    """413 when a call brings more than ``limit`` resources (``FHIR_SERVICE_MAX_RESOURCES``)."""
    if count > limit:
        raise PayloadTooLarge(f"more than {limit} resources in {where}")
