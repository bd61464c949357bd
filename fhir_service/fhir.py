"""The single place that picks the FHIR release.

R4 (4.0.1) is what goes on the wire; the models come from ``fhir.resources.R4B``, whose elements
match R4 for every resource this service uses (https://hl7.org/fhir/R4/,
https://hl7.org/fhir/R4B/diff.html). The only R4B
additions, ``subjectCanonical`` on PlanDefinition/ActivityDefinition, are refused at load time so
that nothing R4 servers reject is ever emitted.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, cast

from fhir.resources.R4B import FHIRAbstractModel
from pydantic import ValidationError

FHIR_VERSION = "4.0.1"
FHIR_MEDIA_TYPE = "application/fhir+json"
R4B_ONLY_ELEMENTS = frozenset({"subjectCanonical"})

__all__ = [
    "FHIR_MEDIA_TYPE",
    "FHIR_VERSION",
    "FHIRAbstractModel",
    "ValidationError",
    "is_resource_type",
    "model_class",
    "validate_resource",
]


def model_class(resource_type: str) -> type[FHIRAbstractModel]:
    """Return the R4B model class for ``resource_type`` (KeyError when there is none)."""
    if not resource_type.isidentifier() or not resource_type[:1].isupper():
        raise KeyError(resource_type)
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    except ModuleNotFoundError as exc:
        raise KeyError(resource_type) from exc
    cls = getattr(module, resource_type, None)
    if cls is None:
        raise KeyError(resource_type)
    return cast(type[FHIRAbstractModel], cls)


@functools.cache
def is_resource_type(name: str) -> bool:
    """True when ``name`` is a resource type of the FHIR release this service speaks."""
    try:
        model_class(name)
    except KeyError:
        return False
    return True


def _find_r4b_only(data: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in R4B_ONLY_ELEMENTS:
                found.append(f"{path}.{key}")
            found.extend(_find_r4b_only(value, f"{path}.{key}"))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            found.extend(_find_r4b_only(item, f"{path}[{index}]"))
    return found


def validate_resource(data: dict[str, Any]) -> FHIRAbstractModel:
    """Validate ``data`` strictly as an R4 resource.

    Raises:
        ValueError: with a readable message when the resource is not valid R4.
    """
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str):
        raise ValueError("resourceType is missing or not a string")
    try:
        cls = model_class(resource_type)
    except KeyError:
        raise ValueError(f"unknown resourceType {resource_type!r}") from None
    extra = _find_r4b_only(data, resource_type)
    if extra:
        raise ValueError(f"elements not in FHIR R4: {', '.join(extra)}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise ValueError(problems) from None
    except (KeyError, TypeError) as exc:  # fhir.resources raises bare KeyError on odd entries
        raise ValueError(f"invalid structure: {exc}") from None
