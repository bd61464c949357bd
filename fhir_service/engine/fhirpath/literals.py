"""FHIRPath literal and identifier text, as fhirpathpy's evaluators read them.

Shared by the closure compiler (``closures.py``) and the quick verdicts of ``where``
(``prefilter.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Tree = Mapping[str, Any]


def _unicode(match: re.Match[str]) -> str:
    return chr(int(match.group(1)[1:], 16))


def string_literal(text: str) -> str:
    """A string literal's value (fhirpathpy's ``string_literal`` unescaping)."""
    value = re.sub(r"^['\"]|['\"]$", "", text)
    for escaped, plain in (
        ("\\'", "'"),
        ("\\`", "`"),
        ('\\"', '"'),
        ("\\r", "\r"),
        ("\\n", "\n"),
        ("\\t", "\t"),
        ("\\f", "\f"),
        ("\\\\", "\\"),
    ):
        value = value.replace(escaped, plain)
    return re.sub(r"\\(u\d{4})", _unicode, value)


def identifier(text: str) -> str:
    """An identifier's name (fhirpathpy's ``identifier``: outer double quotes removed)."""
    return re.sub(r"(^\"|\"$)", "", text)


def lone_term(node: Tree, kind: str) -> Tree | None:
    """The single child of a ``TermExpression`` whose single child is of ``kind`` (the node
    below it: a literal of a ``LiteralTerm``, an invocation of an ``InvocationTerm``)."""
    if node.get("type") != "TermExpression" or len(node.get("children") or []) != 1:
        return None
    term = node["children"][0]
    if term.get("type") != kind or len(term.get("children") or []) != 1:
        return None
    inner: Tree | None = term["children"][0]
    return inner or None


def string_literal_of(node: Tree) -> str | None:
    """The value of ``node`` when it is a string literal term."""
    literal = lone_term(node, "LiteralTerm")
    if literal is None or literal.get("type") != "StringLiteral":
        return None
    return string_literal(literal["text"])
