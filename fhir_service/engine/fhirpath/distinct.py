"""FHIRPath ``distinct()`` and ``|`` (union) with fhirpathpy's values, keyed by orjson.

fhirpathpy's ``distinct_fn`` keeps one item per ``json.dumps(item, sort_keys=True)`` (the last
one seen, at the place of the first); a union of a patient's Observations serialises each of them
with the standard library's pure-Python encoder, a millisecond per call on a 100-resource chart.
Here the key of a JSON value (dict, list, text, number, Boolean, null) is
``orjson.dumps(value, option=OPT_SORT_KEYS)``: for values parsed from JSON both encodings are
canonical and injective (sorted keys, shortest round-trip floats, no NaN or infinity, which JSON
parsing refuses), so two items share a key exactly when fhirpathpy's keys are equal. Anything
else (a Decimal, a FHIRPath type, a value orjson refuses) takes fhirpathpy's own key. Why by
hand: fhirpathpy offers no way to choose its encoder, and its module globals are never
reassigned (``docs/fhirpath.md``); ``tests/fhirpath/test_differential.py`` compares the values.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from fhirpathpy.engine.invocations import existence
from fhirpathpy.engine.nodes import FP_Quantity, ResourceNode

_JSON = frozenset({dict, list, str, int, bool, type(None)})


def _key(value: Any) -> Any:
    if type(value) in _JSON:
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError: a Decimal inside, a huge integer...
            pass
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return str(value)


def unique(values: list[Any]) -> list[Any]:
    """fhirpathpy's ``util.uniq``: one value per key, the last seen, at the first's place."""
    kept: dict[Any, Any] = {}
    for value in values:
        kept[_key(value)] = value
    return list(kept.values())


def distinct_fn(ctx: Any, items: list[Any]) -> list[Any]:
    """``distinct()`` (fhirpathpy's ``existence.distinct_fn``)."""
    if all(isinstance(v, ResourceNode) for v in items):
        return [ResourceNode.create_node(item) for item in unique([v.data for v in items])]
    if all(isinstance(v, FP_Quantity) for v in items):
        return list(existence.distinct_fn(ctx, items))  # durations: fhirpathpy's unit rules
    return unique(items)


def union_op(ctx: Any, left: list[Any], right: list[Any]) -> list[Any]:
    """``left | right`` and ``union()`` (fhirpathpy's ``combining.union_op``)."""
    return distinct_fn(ctx, left + right)
