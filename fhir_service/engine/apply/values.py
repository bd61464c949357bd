"""Writing FHIRPath results at a dynamicValue ``path`` (to JSON: ``patient_data.to_json``)."""

from __future__ import annotations

import re
from typing import Any

from fhir_service.engine.data.patient_data import to_json as to_json  # re-exported

_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


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
