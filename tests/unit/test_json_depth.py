"""``api.body.json_depth`` and ``body_depth`` (the same, from the bytes): the nesting depth the
body limit (``FHIR_SERVICE_MAX_JSON_DEPTH``) compares, the same for every JSON shape, and bounded
once the limit is passed."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_service.api.body import body_depth, json_depth

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


# -- body_depth: the same verdict from the bytes ------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what orjson reads


def documents(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | INT64 | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=30,
    )


#: text full of what the byte scan must not mistake for structure
TRICKY_JSON = documents(st.text(alphabet='ab"\\[]{}:,\n\u00e9', max_size=6))
ANY_TEXT_JSON = documents(st.text(max_size=3))


def encodings(value: Any) -> list[bytes]:
    """The same document as clients send it: compact, indented, with non-ASCII escaped."""
    return [
        orjson.dumps(value),
        json.dumps(value, indent=2).encode(),
        json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode(),
    ]


@given(TRICKY_JSON)
def test_body_depth_matches_the_definition(value: Any) -> None:
    for raw in encodings(value):
        assert body_depth(raw, orjson.loads(raw), 64) == reference_depth(value)


@given(ANY_TEXT_JSON)
def test_body_depth_matches_the_definition_for_any_text(value: Any) -> None:
    for raw in encodings(value):
        assert body_depth(raw, orjson.loads(raw), 64) == reference_depth(value)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "[[[["}',  # brackets inside a string: the tree is walked
        b'{"a": "\\\\", "b": [[]]}',  # an escaped backslash before a closing quote
        b'{"a": "\\"[", "b": ["\\\\\\"{"]}',  # escaped quotes beside brackets
        b'["\\"[\\""]',  # a bracket between escaped quotes
        b'["\\"[]\\""]',  # a pair of brackets between escaped quotes
        b'"[[]]"',
        b"[[], {}, [{}]]",
        b' { "k" : [ 1 , [ 2 ] ] } ',
    ],
)
def test_body_depth_of_known_bodies(raw: bytes) -> None:
    value = orjson.loads(raw)
    assert body_depth(raw, value, 64) == reference_depth(value)


def test_body_depth_stops_past_the_limit() -> None:
    raw = b"[" * 500 + b"]" * 500
    assert body_depth(raw, orjson.loads(raw), 64) == 65
    at_limit = b'{"a":' * 64 + b"1" + b"}" * 64
    assert body_depth(at_limit, orjson.loads(at_limit), 64) == 64
