"""Values as the compiled closures (``closures.py``) and the quick verdicts of ``where``
(``prefilter.py``) both read them: a value as a collection, a number for the comparison
operators, and the type paths whose equality is a Quantity's (fhirpathpy 2.2.4 semantics)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fhirpathpy.engine.nodes import ResourceNode

#: ``<``, ``>``, ``<=``, ``>=`` on two numbers (what fhirpathpy's typecheck leaves)
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}
#: type paths whose ``=`` compares Quantities, never plain text
QUANTITY_TYPES = frozenset({"Quantity", "System.Quantity"})


def arraify(x: Any) -> list[Any]:
    """fhirpathpy's ``util.arraify`` (also how a ``%variable`` becomes a collection)."""
    if type(x) is list or isinstance(x, list):
        return x
    if x is not None:
        return [x]
    return []


def number(value: Any) -> int | Decimal | None:
    """A plain integer or decimal (as fhirpathpy's ``get_data`` gives it), else None."""
    if isinstance(value, ResourceNode):
        value = value.data
        if type(value) is float:
            return Decimal(str(value))
    kind = type(value)
    return value if kind is int or kind is Decimal else None
