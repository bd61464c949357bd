"""Strict R4 validation of a ValueSet whose stored expansion lists thousands of codes.

An ICD-10-CM family expands to thousands of ``expansion.contains`` entries (the injuries of
the head, neck and back alone to over 5,000). Building one pydantic model per entry would
make start-up several times slower, so the entries are validated differently, and still
completely:

* the ValueSet without its ``expansion.contains`` goes through the R4B model as any artifact;
* each entry's primitive elements are checked against the regular expressions FHIR R4 gives
  for their datatypes (``uri``, ``code``, ``string``; https://hl7.org/fhir/R4/datatypes.html)
  and the JSON types the model requires;
* everything else an entry holds (its set of elements, its ``extension``s, ``inactive``…) is
  validated by the R4B model once per distinct *shape*: the entry with its ``code`` and
  ``display`` replaced by placeholders that pass the same regular expressions. Validation of
  the model is a pure function of the value, so an entry whose shape has been validated and
  whose primitives pass the datatype rules is exactly an entry the model accepts.

Identical ``system`` strings and ``extension`` values are then shared between entries
(the knowledge is immutable after start-up), which keeps resident memory small.

Spec: https://hl7.org/fhir/R4/valueset-definitions.html#ValueSet.expansion.contains.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import orjson

from fhir_service import fhir

#: The FHIR R4 datatype patterns (datatypes.html) as the R4B models apply them (a search, so
#: the ``string`` pattern only asks for one character and ``code`` carries its own anchors).
CODE_RE = re.compile(r"^[^\s]+(\s[^\s]+)*$")
STRING_RE = re.compile("[ \r\n\t\\S]+")
#: The primitives replaced by a placeholder in an entry's shape, with the pattern they obey.
PRIMITIVES: dict[str, re.Pattern[str]] = {
    "code": CODE_RE,
    "display": STRING_RE,
    "version": STRING_RE,
}
PLACEHOLDER = "x"


def _probe(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's shape: its primitives replaced by a placeholder of the same datatype."""
    return {k: PLACEHOLDER if k in PRIMITIVES else v for k, v in entry.items()}


def _entry_problem(index: int, entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"expansion.contains.{index}: must be an object"
    for key, pattern in PRIMITIVES.items():
        if key in entry:
            value = entry[key]
            if not isinstance(value, str) or not pattern.search(value):
                return f"expansion.contains.{index}.{key}: {value!r} is not a valid FHIR {key}"
    return None


def validate_value_set(data: dict[str, Any]) -> None:
    """Validate ``data`` (a ValueSet) exactly as ``fhir.validate_resource`` does, faster.

    Raises:
        ValueError: with a readable message when the ValueSet is not valid R4.
    """
    expansion = data.get("expansion")
    contains = expansion.get("contains") if isinstance(expansion, dict) else None
    if not isinstance(expansion, dict) or not isinstance(contains, list):
        fhir.validate_resource(data)
        return
    shapes: dict[bytes, dict[str, Any]] = {}
    for index, entry in enumerate(contains):
        problem = _entry_problem(index, entry)
        if problem:
            raise ValueError(problem)
        probe = _probe(entry)
        shapes.setdefault(orjson.dumps(probe, option=orjson.OPT_SORT_KEYS), probe)
    try:
        fhir.validate_resource(
            {**data, "expansion": {**expansion, "contains": list(shapes.values())}}
        )
    except ValueError:
        fhir.validate_resource(data)  # the slow path names the offending entry
        raise


def share_repeated_values(data: dict[str, Any]) -> None:
    """Let expansion entries share equal ``system`` strings and ``extension`` values."""
    expansion = data.get("expansion")
    contains = expansion.get("contains") if isinstance(expansion, dict) else None
    if not isinstance(contains, list):
        return
    extensions: dict[bytes, Any] = {}
    for entry in contains:
        if isinstance(entry.get("system"), str):
            entry["system"] = sys.intern(entry["system"])
        if "extension" in entry:
            entry["extension"] = extensions.setdefault(
                orjson.dumps(entry["extension"]), entry["extension"]
            )
