"""Converting FHIRPath results to JSON and writing them at a dynamicValue ``path``."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from fhirpathpy.engine.nodes import FP_Quantity, FP_TimeBase, ResourceNode

UCUM = "http://unitsofmeasure.org"
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
_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def to_json(value: Any) -> Any:
    """One FHIRPath result item as plain JSON (Quantity → FHIR Quantity, dates → strings)."""
    if isinstance(value, ResourceNode):
        return to_json(value.data)
    if isinstance(value, FP_Quantity):
        unit = str(value.unit).strip("'")
        number = float(value.value) if isinstance(value.value, Decimal) else value.value
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        out: dict[str, Any] = {"value": number, "unit": unit, "system": UCUM}
        out["code"] = CALENDAR_UCUM.get(unit, unit)
        return out
    if isinstance(value, FP_TimeBase):
        return str(value)
    if isinstance(value, Decimal):
        number = float(value)
        return int(number) if number.is_integer() else number
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def result_value(result: list[Any]) -> Any:
    """A dynamicValue result: nothing (None), one value, or a list of values."""
    items = [to_json(v) for v in result]
    if not items:
        return None
    return items[0] if len(items) == 1 else items


def is_simple_path(path: str) -> bool:
    """Whether ``path`` has the form ``set_path`` writes (``a.b[0].c``)."""
    return bool(path) and all(_SEGMENT.match(segment) for segment in path.split("."))


def set_path(target: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at a simple FHIR path (``a.b[0].c``) inside ``target``, creating parents.

    Raises:
        ValueError: when the path is not of that simple form.
    """
    segments = path.split(".")
    node: Any = target
    for position, segment in enumerate(segments):
        match = _SEGMENT.match(segment)
        if match is None:
            raise ValueError(f"unsupported dynamicValue path {path!r}")
        name, index = match.group(1), match.group(2)
        last = position == len(segments) - 1
        if index is None:
            if last:
                node[name] = value
                return
            node = node.setdefault(name, {})
            continue
        items = node.setdefault(name, [])
        pos = int(index)
        while len(items) <= pos:
            items.append({})
        if last:
            items[pos] = value
            return
        node = items[pos]
