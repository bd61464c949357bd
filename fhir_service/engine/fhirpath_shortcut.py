"""Short-circuit ``and``/``or``/``implies`` in fhirpathpy (a performance work-around).

fhirpathpy 2.2.4 evaluates both operands of every boolean operator before combining them, so
``%spasmEvidence and %injuryEvidence`` computes the injury evidence even for a patient with no
spasm at all. FHIRPath's three-valued logic makes the right operand irrelevant when the left is
``false`` for ``and``, ``true`` for ``or`` and ``false`` for ``implies``
(https://hl7.org/fhirpath/N1/#boolean-logic): the result is then fixed whatever the right side
is, empty included. This module replaces fhirpathpy's evaluators for those three expression
kinds with ones that skip the right operand in exactly those cases and otherwise combine both
operands with fhirpathpy's own operator functions, so results are unchanged
(tests/fhirpath/6-operations.yaml pins them).

Installed once, at import of ``fhir_service.engine.fhirpath``; fhirpathpy keeps its evaluators
in a module-level table, so this is process-wide and idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fhirpathpy.engine as engine
from fhirpathpy.engine import util
from fhirpathpy.engine.evaluators import evaluators
from fhirpathpy.engine.invocations import logic

Operator = Callable[[Any, Any, Any], Any]
#: operator → (its fhirpathpy function, the left value that decides the result, that result)
_DECIDED: dict[str, tuple[Operator, bool, bool]] = {
    "and": (logic.and_op, False, False),
    "or": (logic.or_op, True, True),
    "implies": (logic.implies_op, False, True),
}
_BOOLEAN = ["Boolean"]


def _short_circuit(ctx: Any, parent_data: Any, node: Any) -> list[Any]:
    op = node["terminalNodeText"][0]
    if op not in _DECIDED:  # ``xor`` shares the OrExpression node and needs both sides
        return list(engine.infix_invoke(ctx, op, parent_data, node["children"]))
    operator, deciding, result = _DECIDED[op]
    left_node, right_node = node["children"]
    left = engine.make_param(ctx, parent_data, _BOOLEAN, left_node)
    if left is deciding:
        return [result]
    right = engine.make_param(ctx, parent_data, _BOOLEAN, right_node)
    return list(util.arraify(operator(ctx, left, right)))


def install() -> None:
    for kind in ("AndExpression", "OrExpression", "ImpliesExpression"):
        evaluators[kind] = _short_circuit
