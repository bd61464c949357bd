"""Boolean FHIRPath sub-expressions of a common shape evaluated in plain Python.

fhirpathpy walks the parsed tree for every item a ``where()`` tests; the criteria our
definitions use are mostly of a few shapes, e.g.
``code.coding.where(system = 'S' and (code = 'a' or code = 'b')).exists()``,
``status = 'final' or status = 'amended'`` or ``code.memberOf('url')``. At compile time,
``optimize`` replaces every maximal boolean sub-tree made only of

* ``P = 'literal'`` (``P`` a path of member names),
* ``B and B``, ``B or B``, ``(B)``,
* ``Q.exists()``, ``Q.empty()`` (``Q`` a path whose steps are member names or ``where(B)``),
* ``P.f('literal', ...)`` for the compiler's boolean functions (``memberOf``)

by a ``FastBoolean`` node whose evaluator runs a Python closure with fhirpathpy's semantics:
the same ``[True]``/``[False]``/``[]`` result, the same short-circuits as
``fhirpath_shortcut``, ``$this``/``$index`` set where fhirpathpy sets them. Paths are walked
over (JSON value, type path) pairs, the type path computed from the R4 model exactly as
fhirpathpy's ``member_invocation`` does (``_Model``), without building a ``ResourceNode`` per
value; every replaced node yields booleans, so no pair ever leaves the closures.

Whatever the closure cannot decide exactly makes it decline (``_Decline``) and the original
sub-tree is evaluated by fhirpathpy instead. It is not built (compile time) for capitalized
member names (type filters), quoted identifiers, ``$this``, other functions or non-string
literals; it declines at run time for a member that is a choice type at that type path
(``value[x]``: fhirpathpy finds ``valueQuantity``...), an item that is neither a JSON object
nor a plain primitive, a single compared value that is not a string or is typed ``Quantity``
(fhirpathpy's own comparison applies), and a float given to a function (fhirpathpy passes it as
a ``Decimal``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import fhirpathpy.engine as engine
from fhirpathpy.engine import util
from fhirpathpy.engine.evaluators import evaluators
from fhirpathpy.engine.invocations import logic
from fhirpathpy.engine.nodes import ResourceNode

Items = list[Any]
#: (ctx, focus as (value, type path) pairs) -> the path's values as pairs
Path = Callable[[Any, Items], Items]
#: (ctx, focus as pairs, the focus as fhirpathpy sees it) -> [True] / [False] / []
Boolean = Callable[[Any, Items, Items], list[Any]]

FAST_NODE = "FastBoolean"


class _Decline(Exception):
    """The fast path cannot give fhirpathpy's exact result here: evaluate the original."""


_PRIMITIVES = (str, bool, int, float, Decimal)
_QUANTITY = frozenset({"Quantity", "System.Quantity"})


class _Model:
    """The R4 model's typing of member steps, as fhirpathpy's ``member_invocation`` does it,
    memoised per (parent type path, key)."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        self.elsewhere: Mapping[str, str] = model.get("pathsDefinedElsewhere", {})
        self.choices: Mapping[str, Any] = model.get("choiceTypePaths", {})
        self.types: Mapping[str, str] = model.get("path2Type", {})
        self.steps: dict[tuple[str | None, str], str | None] = {}

    def child(self, path: str | None, key: str) -> str | None:
        """The type path of ``key`` under ``path``; None for a choice type (decline)."""
        found = self.steps.get((path, key), "")
        if found != "":
            return found
        child_path = f"{path}.{key}" if path else f"_.{key}"
        child_path = self.elsewhere.get(child_path, child_path)
        result: str | None
        if self.choices.get(child_path):
            result = None
        else:
            if key == "extension":
                child_path = "Extension"
            result = self.types.get(child_path, child_path)
        if len(self.steps) < 10_000:  # type paths come from the data (resourceType)
            self.steps[(path, key)] = result
        return result


def _focus(items: Items) -> Items:
    """fhirpathpy's items as (value, type path) pairs (``ResourceNode.create_node``)."""
    out: Items = []
    for item in items:
        if isinstance(item, ResourceNode):
            out.append((item.data, item.path))
        elif isinstance(item, Mapping) and "resourceType" in item:
            out.append((item, item["resourceType"]))
        else:
            out.append((item, None))
    return out


def _member(key: str, model: _Model) -> Callable[[Items], Items]:
    """Member access ``.key`` over (value, type path) pairs (fhirpathpy's
    ``member_invocation``)."""
    extension_key = "_" + key
    child = model.child

    def add(out: Items, value: Any, path: str) -> None:
        if isinstance(value, list):
            for x in value:
                if isinstance(x, Mapping) and "resourceType" in x:
                    out.append((x, x["resourceType"]))
                else:
                    out.append((x, path))
        elif isinstance(value, Mapping) and "resourceType" in value:
            out.append((value, value["resourceType"]))
        else:
            out.append((value, path))

    def step(items: Items) -> Items:
        out: Items = []
        for data, path in items:
            if isinstance(data, Mapping):
                child_path = child(path, key)
                if child_path is None:
                    raise _Decline  # a choice type: fhirpathpy resolves value[x]
                value = data.get(key)
                value_ = data.get(extension_key)
            elif isinstance(data, _PRIMITIVES) and key != "length":
                continue
            else:
                raise _Decline
            if value is not None and value != []:
                add(out, value, child_path)
            if value_ is not None and value_ != []:
                add(out, value_, child_path)
        return out

    return step


class _Compiler:
    def __init__(self, model: _Model, functions: frozenset[str]) -> None:
        self.model = model
        self.functions = functions

    # --- paths ---------------------------------------------------------------------------

    def _member_key(self, node: Mapping[str, Any]) -> str | None:
        """The key of a ``MemberInvocation`` we can follow, else None."""
        if node.get("type") != "MemberInvocation":
            return None
        children = node.get("children") or []
        if len(children) != 1 or children[0].get("type") != "Identifier":
            return None
        key = children[0].get("text")
        if not isinstance(key, str) or not key or not (key[0].isalpha() or key[0] == "_"):
            return None
        if key[0] == key[0].upper() or key == "length":
            return None
        if not all(c.isalnum() or c == "_" for c in key):
            return None
        return key

    def path(self, node: Mapping[str, Any]) -> tuple[Path, str | None] | None:
        """A path over the focus: (closure, its last member key or None after a where)."""
        kind = node.get("type")
        children = node.get("children") or []
        if kind == "TermExpression" and len(children) == 1:
            term = children[0]
            if term.get("type") != "InvocationTerm" or len(term.get("children") or []) != 1:
                return None
            key = self._member_key(term["children"][0])
            if key is None:
                return None
            step = _member(key, self.model)
            return (lambda _ctx, focus: step(focus)), key
        if kind != "InvocationExpression" or len(children) != 2:
            return None
        left = self.path(children[0])
        if left is None:
            return None
        left_fn = left[0]
        key = self._member_key(children[1])
        if key is not None:
            step = _member(key, self.model)
            return (lambda ctx, focus: step(left_fn(ctx, focus))), key
        call = self._call(children[1])
        if call is None or call[0] != "where" or len(call[1]) != 1:
            return None
        criteria = self.boolean(call[1][0])
        if criteria is None:
            return None

        def where(ctx: Any, focus: Items) -> Items:
            kept: Items = []
            for index, item in enumerate(left_fn(ctx, focus)):
                ctx["$index"] = index
                this = [ResourceNode(item[0], item[1])]
                ctx["$this"] = this
                found = criteria(ctx, [item], this)
                if len(found) > 0 and found[0]:
                    kept.append(item)
            return kept

        return where, None

    @staticmethod
    def _call(node: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
        """(name, parameter nodes) of a ``FunctionInvocation``."""
        if node.get("type") != "FunctionInvocation":
            return None
        children = node.get("children") or []
        if len(children) != 1 or children[0].get("type") != "Functn":
            return None
        parts = children[0].get("children") or []
        if not parts or parts[0].get("type") != "Identifier":
            return None
        name = parts[0].get("text")
        if not isinstance(name, str) or len(parts) > 2:
            return None
        params: list[Any] = []
        if len(parts) == 2:
            if parts[1].get("type") != "ParamList":
                return None
            params = list(parts[1].get("children") or [])
        return name, params

    @staticmethod
    def _string(node: Mapping[str, Any]) -> str | None:
        """The value of a string literal term (unescaped by fhirpathpy's own evaluator)."""
        if node.get("type") != "TermExpression" or len(node.get("children") or []) != 1:
            return None
        term = node["children"][0]
        if term.get("type") != "LiteralTerm" or len(term.get("children") or []) != 1:
            return None
        literal = term["children"][0]
        if literal.get("type") != "StringLiteral":
            return None
        value = evaluators["StringLiteral"]({}, [], literal)[0]
        return value if isinstance(value, str) else None

    # --- booleans ------------------------------------------------------------------------

    def boolean(self, node: Mapping[str, Any]) -> Boolean | None:
        kind = node.get("type")
        children = node.get("children") or []
        if kind in ("TermExpression", "ParenthesizedTerm") and len(children) == 1:
            inner = children[0]
            if kind == "TermExpression" and inner.get("type") != "ParenthesizedTerm":
                return None
            return self.boolean(inner)
        if kind in ("AndExpression", "OrExpression") and len(children) == 2:
            return self._logic(node)
        if kind == "EqualityExpression" and len(children) == 2:
            return self._equality(node)
        if kind == "InvocationExpression" and len(children) == 2:
            return self._function(node)
        return None

    def _logic(self, node: Mapping[str, Any]) -> Boolean | None:
        op = (node.get("terminalNodeText") or [None])[0]
        if op not in ("and", "or"):
            return None  # ``xor`` shares the OrExpression node
        left = self.boolean(node["children"][0])
        right = self.boolean(node["children"][1])
        if left is None or right is None:
            return None
        operator = logic.and_op if op == "and" else logic.or_op
        deciding = op == "or"  # and: false decides; or: true decides

        def combine(ctx: Any, focus: Items, this: Items) -> list[Any]:
            ctx["$this"] = this
            found = left(ctx, focus, this)
            first: Any = found[0] if found else []
            if not isinstance(first, bool | list):
                raise _Decline  # fhirpathpy raises for a non-boolean operand
            if first is deciding:
                return [deciding]
            ctx["$this"] = this
            found = right(ctx, focus, this)
            second: Any = found[0] if found else []
            if not isinstance(second, bool | list):
                raise _Decline
            return list(util.arraify(operator(ctx, first, second)))

        return combine

    def _equality(self, node: Mapping[str, Any]) -> Boolean | None:
        if (node.get("terminalNodeText") or [None])[0] != "=":
            return None
        path = self.path(node["children"][0])
        literal = self._string(node["children"][1])
        if path is None or literal is None:
            return None
        path_fn, key = path
        if key is None:
            return None

        def equal(ctx: Any, focus: Items, this: Items) -> list[Any]:
            ctx["$this"] = this
            values = path_fn(ctx, focus)
            ctx["$this"] = this
            if not values:
                return []
            if len(values) != 1:
                return [False]
            value, type_path = values[0]
            if not isinstance(value, str) or type_path in _QUANTITY:
                raise _Decline  # fhirpathpy's comparison of dates, numbers, Quantities
            return [value == literal]

        return equal

    def _function(self, node: Mapping[str, Any]) -> Boolean | None:
        call = self._call(node["children"][1])
        if call is None:
            return None
        name, params = call
        path = self.path(node["children"][0])
        if path is None:
            return None
        path_fn = path[0]
        if name in ("exists", "empty") and not params:
            is_empty = name == "empty"
            return lambda ctx, focus, _this: [(not path_fn(ctx, focus)) is is_empty]
        if name not in self.functions or not params:
            return None
        literals = [self._string(p) for p in params]
        if any(v is None for v in literals):
            return None

        def function(ctx: Any, focus: Items, _this: Items) -> list[Any]:
            values = [value for value, _ in path_fn(ctx, focus)]
            for value in values:
                if isinstance(value, float | ResourceNode):
                    raise _Decline
            if "$this" not in ctx:
                ctx["$this"] = ctx["dataRoot"]
            fn = ctx["userInvocationTable"][name]["fn"]
            return list(util.arraify(fn(ctx, values, *literals)))

        return function


def _evaluate(ctx: Any, parent_data: Any, node: Any) -> Any:
    if not isinstance(parent_data, list):
        return engine.do_eval(ctx, parent_data, node["original"])
    try:
        return node["fast"](ctx, _focus(parent_data), parent_data)
    except _Decline:
        return engine.do_eval(ctx, parent_data, node["original"])


def install() -> None:
    evaluators[FAST_NODE] = _evaluate


def optimize(
    ast: dict[str, Any], model: Mapping[str, Any], functions: frozenset[str]
) -> dict[str, Any]:
    """``ast`` with its fast-path sub-trees replaced (in place; returns ``ast``)."""
    typing = _MODELS.get(id(model))
    if typing is None:
        typing = _MODELS[id(model)] = _Model(model)
    compiler = _Compiler(typing, functions)
    _rewrite(ast, compiler)
    return ast


def _rewrite(node: dict[str, Any], compiler: _Compiler) -> None:
    children = node.get("children")
    if not isinstance(children, list):
        return
    for i, child in enumerate(children):
        if not isinstance(child, dict):
            continue
        fast = compiler.boolean(child) if _worth_it(child) else None
        if fast is not None:
            children[i] = {
                "type": FAST_NODE,
                "fast": fast,
                "original": child,
                "text": child.get("text"),
                "terminalNodeText": [],
            }
        else:
            _rewrite(child, compiler)


def _worth_it(node: Mapping[str, Any]) -> bool:
    return node.get("type") in (
        "AndExpression",
        "OrExpression",
        "EqualityExpression",
        "InvocationExpression",
        "TermExpression",
    )


_MODELS: dict[int, _Model] = {}
