"""``api.body.json_depth``: the nesting depth the body limit (``FHIR_SERVICE_MAX_JSON_DEPTH``)
compares, the same for every JSON shape, and bounded once the limit is passed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_service.api.body import json_depth

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=30,
)


def reference_depth(value: Any) -> int:
    """The definition: 0 for a scalar, 1 + the deepest child for an object or array."""
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize(
    ("value", "depth"),
    [(1, 0), ("x", 0), (None, 0), ({}, 1), ([], 1), ({"a": [1, {"b": []}]}, 4), ([[[[]]]], 4)],
)
def test_depth_of_known_shapes(value: Any, depth: int) -> None:
    assert json_depth(value, 64) == depth


@given(JSON)
def test_depth_matches_the_definition(value: Any) -> None:
    assert json_depth(value, 64) == reference_depth(value)


def test_stops_past_the_limit() -> None:
    deep: Any = []
    for _ in range(500):
        deep = [deep]
    assert json_depth(deep, 64) == 65
