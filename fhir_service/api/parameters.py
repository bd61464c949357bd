"""Reading FHIR ``Parameters`` (operation inputs) and query parameters, with 400s that say why.

Spec: https://hl7.org/fhir/R4/parameters.html, https://hl7.org/fhir/R4/operations.html.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_service.errors import InvalidRequest


def require_parameters(body: Any) -> list[dict[str, Any]]:
    """The ``parameter`` list of a Parameters resource (400 when the body is not one)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequest(
            "the body must be a FHIR Parameters resource", expression=["Parameters"]
        )
    params = body.get("parameter", [])
    if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
        raise InvalidRequest("Parameters.parameter must be an array of objects")
    for index, param in enumerate(params):
        if not isinstance(param.get("name"), str):
            raise InvalidRequest(
                "every parameter needs a name", expression=[f"Parameters.parameter[{index}].name"]
            )
    return params


def value_of(param: Mapping[str, Any]) -> Any:
    """The ``value[x]`` of a parameter (None when it has none)."""
    for key, value in param.items():
        if key.startswith("value"):
            return value
    return None


def named(params: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [p for p in params if p.get("name") == name]


def one(params: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    found = named(params, name)
    if len(found) > 1:
        raise InvalidRequest(f"parameter {name!r} may appear only once", expression=[name])
    return found[0] if found else None


def string_value(param: Mapping[str, Any] | None, name: str) -> str | None:
    """A string-ish value: valueString/Uri/Canonical/Id/Code, or valueReference.reference."""
    if param is None:
        return None
    value = value_of(param)
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return str(value["reference"])
    if isinstance(value, str) and value:
        return value
    raise InvalidRequest(f"parameter {name!r} must carry a string value", expression=[name])


def resource_value(param: Mapping[str, Any] | None, name: str, resource_type: str) -> Any:
    if param is None:
        return None
    resource = param.get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        raise InvalidRequest(f"parameter {name!r} must carry a {resource_type}", expression=[name])
    return resource


def subject_reference(value: str | None) -> str:
    """``Patient/<id>`` from a subject parameter (a bare id is taken as a Patient id)."""
    if not value:
        raise InvalidRequest("parameter 'subject' is required", expression=["subject"])
    if "/" not in value:
        return f"Patient/{value}"
    parts = value.rstrip("/").split("/")
    if len(parts) < 2 or not parts[-1] or not parts[-2][:1].isupper():
        raise InvalidRequest(
            "subject must be a reference such as Patient/123", expression=["subject"]
        )
    return f"{parts[-2]}/{parts[-1]}"
