"""A compiler from fhirpathpy's parse tree to Python closures (our own FHIRPath evaluator).

Why a compiler rather than fhirpathpy's interpreter: fhirpathpy 2.2.4 walks its parse tree on
every evaluation, dispatching each node through a module-level table, re-merging its function
registry on every call and operator and unescaping every literal again; the only way to make that
faster in place was to reassign fhirpathpy's module globals (which changed every user of
fhirpathpy in the process). Here the tree is walked **once**, at load, into nested closures: node
kinds, function entries, parameter kinds, literal values and member names are all resolved at
compile time, and nothing of fhirpathpy is reassigned (``tests/unit/test_fhirpath_pristine.py``).

What is reused from fhirpathpy, through its API: the grammar and parse tree
(``parse_strict``), the value types (``ResourceNode``, ``FP_DateTime``, ``FP_Quantity``...),
and the function and operator implementations of ``base_invocation_registry``, called with a
context dict of the shape fhirpathpy's own functions read (``$this``, ``$index``, ``$total``,
``vars``, ``model``, ``dataRoot``). Each node closure reproduces the matching fhirpathpy
evaluator (``fhirpathpy/engine/evaluators``, ``doInvoke``, ``infix_invoke``, ``make_param``),
including where it leaves ``$this`` in the context, so values are fhirpathpy's.

Deliberate differences (``docs/fhirpath.md``, "Differences from plain fhirpathpy", one table):
``and``/``or``/``implies`` do not evaluate the right operand when the left decides the result;
``where``/``exists(criteria)`` evaluate their criteria once per item (fhirpathpy twice for a
kept item; same value); ``single()``, ``trace()`` and the service's functions come from the
compiler's table (``FhirPathCompiler``); member nodes carry no ``propName``/``index`` (fhirpathpy
never reads them for a value).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from fhirpathpy.engine import param_check_table
from fhirpathpy.engine.invocations import existence, filtering, logic
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time, ResourceNode, TypeInfo
from fhirpathpy.engine.util import get_data

from fhir_service.engine.fhirpath import prefilter
from fhir_service.engine.fhirpath.coercion import COMPARISONS, QUANTITY_TYPES, arraify, number
from fhir_service.engine.fhirpath.literals import (
    identifier,
    lone_term,
    string_literal,
    string_literal_of,
)

Ctx = dict[str, Any]
Tree = Mapping[str, Any]
#: (context, focus collection) -> result collection
Fn = Callable[[Ctx, Any], list[Any]]
#: (context, the caller's focus) -> the value handed to a function (fhirpathpy's make_param)
Param = Callable[[Ctx, Any], Any]

_MAPPING = Mapping


def _is_nullable(x: Any) -> bool:
    return x is None or (isinstance(x, list) and not x)


def _flatten(items: list[Any]) -> list[Any]:
    if not any(isinstance(x, list) for x in items):
        return items
    out: list[Any] = []
    for x in items:
        if isinstance(x, list):
            out.extend(x)
        else:
            out.append(x)
    return out


class CompileError(ValueError):
    """The parse tree holds a node this compiler does not know (never for valid FHIRPath)."""


class TypePaths:
    """The R4 model's typing of member steps, exactly as fhirpathpy's ``member_invocation``
    computes it, memoised per (parent type path, key)."""

    def __init__(self, model: Mapping[str, Any] | None) -> None:
        self.model = model if isinstance(model, dict) else None
        self._memo: dict[tuple[str | None, str], tuple[str, tuple[str, ...] | None]] = {}

    def child(self, path: str | None, key: str) -> tuple[str, tuple[str, ...] | None]:
        """(child path before typing, choice suffixes or None)."""
        memo_key = (path, key)
        found = self._memo.get(memo_key)
        if found is not None:
            return found
        child_path = f"{path}.{key}" if path else f"_.{key}"
        choices: tuple[str, ...] | None = None
        if self.model is not None:
            child_path = self.model["pathsDefinedElsewhere"].get(child_path, child_path)
            actual = self.model["choiceTypePaths"].get(child_path)
            choices = tuple(actual) if actual else None
        result = (child_path, choices)
        if len(self._memo) < 20_000:  # type paths come from the data (resourceType)
            self._memo[memo_key] = result
        return result

    def typed(self, child_path: str) -> str:
        if self.model is not None and "path2Type" in self.model:
            return str(self.model["path2Type"].get(child_path, child_path))
        return child_path


class ClosureCompiler:
    """Compiles parse trees against one function table (fhirpathpy's plus the service's)."""

    def __init__(
        self,
        registry: Mapping[str, Mapping[str, Any]],
        model: Any,
        functions: prefilter.Functions | None = None,
    ) -> None:
        self.registry = registry
        self.types = TypePaths(model)
        #: the registry's own memberOf(), clinicalDate(), duration(), now(), today() for the
        #: quick verdicts of ``where`` (``prefilter.py``); None: they leave those alone
        self.functions = functions
        self._prefilter_types = prefilter.Types(self.types.child, self.types.typed)

    def compile(self, node: Tree) -> Fn:
        kind = node.get("type")
        method = getattr(self, f"_n_{kind}", None)
        if method is None:
            raise CompileError(f"No {kind} evaluator")
        fn: Fn = method(node)
        return fn

    def _child(self, node: Tree, index: int = 0) -> Fn:
        return self.compile(node["children"][index])

    # --- pass-through nodes ----------------------------------------------------------------

    def _n_TermExpression(self, node: Tree) -> Fn:  # noqa: N802 - fhirpathpy's node names
        return self._child(node)

    _n_ParenthesizedTerm = _n_TermExpression
    _n_InvocationTerm = _n_TermExpression

    def _n_LiteralTerm(self, node: Tree) -> Fn:  # noqa: N802
        term = node["children"][0]
        if term:
            return self.compile(term)
        text = node["text"]
        return lambda _ctx, _data: [text]

    # --- literals --------------------------------------------------------------------------

    def _n_NullLiteral(self, _node: Tree) -> Fn:  # noqa: N802
        return lambda _ctx, _data: []

    def _n_BooleanLiteral(self, node: Tree) -> Fn:  # noqa: N802
        value = node["text"] == "true"
        return lambda _ctx, _data: [value]

    def _n_NumberLiteral(self, node: Tree) -> Fn:  # noqa: N802
        decimal_number = Decimal(node["text"])
        int_number = int(decimal_number)
        value: Any = int_number if decimal_number == int_number else decimal_number
        return lambda _ctx, _data: [value]  # a fresh list: the unary minus writes into it

    def _n_StringLiteral(self, node: Tree) -> Fn:  # noqa: N802
        value = string_literal(node["text"])
        return lambda _ctx, _data: [value]

    def _n_QuantityLiteral(self, node: Tree) -> Fn:  # noqa: N802
        value_node = node["children"][0]
        number = Decimal(value_node["terminalNodeText"][0])
        unit_node = value_node["children"][0]
        unit = None
        if len(unit_node["terminalNodeText"]) > 0:
            unit = unit_node["terminalNodeText"][0]
        elif "children" in unit_node and len(unit_node["children"]) > 0:
            unit = unit_node["children"][0]["terminalNodeText"][0]
        return lambda _ctx, _data: [FP_Quantity(number, unit)]

    def _n_DateTimeLiteral(self, node: Tree) -> Fn:  # noqa: N802
        value = FP_DateTime(node["text"][1:])  # immutable once built
        return lambda _ctx, _data: [value]

    def _n_TimeLiteral(self, node: Tree) -> Fn:  # noqa: N802
        value = FP_Time(node["text"][2:])
        return lambda _ctx, _data: [value]

    def _n_ExternalConstantTerm(self, node: Tree) -> Fn:  # noqa: N802
        ext_identifier = node["children"][0]["children"][0]
        name = identifier(ext_identifier["text"]).replace("`", "")

        def variable(ctx: Ctx, _data: Any) -> list[Any]:
            variables = ctx["vars"]
            if name not in variables:
                raise ValueError(f"Attempting to access an undefined environment variable: {name}")
            value = variables[name]
            if value is None:
                return []
            if not isinstance(value, list):
                return [value]
            return value

        return variable

    # --- invocations -----------------------------------------------------------------------

    def _n_ThisInvocation(self, _node: Tree) -> Fn:  # noqa: N802
        return lambda ctx, _data: arraify(ctx["$this"])

    def _n_IndexInvocation(self, _node: Tree) -> Fn:  # noqa: N802
        return lambda ctx, _data: arraify(ctx["$index"])

    def _n_TotalInvocation(self, _node: Tree) -> Fn:  # noqa: N802
        return lambda ctx, _data: arraify(ctx["$total"])

    def _n_MemberInvocation(self, node: Tree) -> Fn:  # noqa: N802
        key = identifier(node["children"][0]["text"]).replace("`", "")
        return member(key, self.types)

    def _n_FunctionInvocation(self, node: Tree) -> Fn:  # noqa: N802
        functn = node["children"][0]
        parts = functn["children"]
        name = identifier(parts[0]["text"])
        raw_params = None
        if len(parts) > 1 and "children" in parts[1]:
            raw_params = parts[1]["children"]
        return self.invoke(name, raw_params)

    def _n_InvocationExpression(self, node: Tree) -> Fn:  # noqa: N802
        steps = [self.compile(child) for child in node["children"]]
        if len(steps) == 2:
            first, second = steps

            def chain2(ctx: Ctx, data: Any) -> list[Any]:
                return list(second(ctx, first(ctx, data)))

            return chain2

        def chain(ctx: Ctx, data: Any) -> list[Any]:
            for step in steps:
                data = step(ctx, data)
            return list(data)

        return chain

    def _n_IndexerExpression(self, node: Tree) -> Fn:  # noqa: N802
        coll_fn, idx_fn = self._child(node, 0), self._child(node, 1)

        def indexer(ctx: Ctx, data: Any) -> list[Any]:
            coll = coll_fn(ctx, data)
            idx = idx_fn(ctx, data)
            if isinstance(idx, list) and not idx:
                return []
            number = int(idx[0])
            if coll is not None and len(coll) > number >= 0:
                return [coll[number]]
            return []

        return indexer

    def _n_PolarityExpression(self, node: Tree) -> Fn:  # noqa: N802
        sign = node["terminalNodeText"][0]
        operand = self._child(node)

        def polarity(ctx: Ctx, data: Any) -> list[Any]:
            result = operand(ctx, data)
            if len(result) != 1:
                raise ValueError(f"Unary {sign} can only be applied to an individual number.")
            if not (isinstance(result[0], int | Decimal) and not isinstance(result[0], bool)):
                raise ValueError(f"Unary {sign} can only be applied to a number.")
            if sign == "-":
                result[0] = -result[0]
            return result

        return polarity

    # --- operators -------------------------------------------------------------------------

    def _n_UnionExpression(self, node: Tree) -> Fn:  # noqa: N802
        return self.infix("|", node["children"])

    def _operator(self, node: Tree) -> Fn:
        return self.infix(node["terminalNodeText"][0], node["children"])

    _n_InequalityExpression = _operator
    _n_AdditiveExpression = _operator
    _n_MultiplicativeExpression = _operator
    _n_EqualityExpression = _operator
    _n_XorExpression = _operator

    def _n_MembershipExpression(self, node: Tree) -> Fn:  # noqa: N802
        op = node["terminalNodeText"][0]
        return self.infix({"contains": "containsOp", "in": "inOp"}[op], node["children"])

    def _n_TypeExpression(self, node: Tree) -> Fn:  # noqa: N802
        op = node["terminalNodeText"][0]
        return self.infix({"is": "isOp", "as": "asOp"}[op], node["children"])

    def _n_AndExpression(self, node: Tree) -> Fn:  # noqa: N802
        return self.logic(node)

    _n_OrExpression = _n_AndExpression
    _n_ImpliesExpression = _n_AndExpression

    def logic(self, node: Tree) -> Fn:
        """``and``/``or``/``implies`` with the right operand skipped when the left decides
        (FHIRPath three-valued logic; a deliberate difference: an error in a skipped right
        operand is not raised). ``xor`` shares the OrExpression node and needs both sides."""
        op = node["terminalNodeText"][0]
        if op not in _DECIDED:
            return self.infix(op, node["children"])
        operator, deciding, decided = _DECIDED[op]
        left = self.param(["Boolean"], node["children"][0])
        right = self.param(["Boolean"], node["children"][1])

        def boolean(ctx: Ctx, data: Any) -> list[Any]:
            a = left(ctx, data)
            if a is deciding:
                ctx["$this"] = data  # as the right operand's evaluation would have set it
                return [decided]
            b = right(ctx, data)
            return arraify(operator(ctx, a, b))

        return boolean

    def infix(self, name: str, raw_params: list[Tree]) -> Fn:
        """fhirpathpy's ``infix_invoke``."""
        entry = self.registry.get(name)
        if entry is None or "fn" not in entry:
            raise CompileError(f"Not implemented {name}")
        if len(raw_params) != 2:
            raise CompileError("Infix invoke should have arity 2")
        arg_types = entry["arity"][2]
        fast = self._string_equality(name, entry, raw_params)
        if fast is not None:
            return fast
        left = self.param(arg_types[0], raw_params[0])
        right = self.param(arg_types[1], raw_params[1])
        fn = entry["fn"]
        nullable = "nullable" in entry
        compare = COMPARISONS.get(name) if entry is _BASE_ENTRIES.get(name) else None
        if compare is not None:

            def comparison(ctx: Ctx, data: Any) -> list[Any]:
                a = left(ctx, data)
                b = right(ctx, data)
                if not a or not b:
                    return []
                if len(a) == 1 and len(b) == 1:
                    x, y = number(a[0]), number(b[0])
                    if x is not None and y is not None:
                        return [compare(x, y)]  # what fhirpathpy's typecheck leaves
                return arraify(fn(ctx, a, b))

            return comparison

        def operator(ctx: Ctx, data: Any) -> list[Any]:
            a = left(ctx, data)
            b = right(ctx, data)
            if nullable and (_is_nullable(a) or _is_nullable(b)):
                return []
            return arraify(fn(ctx, a, b))

        return operator

    def _string_equality(
        self, name: str, entry: Mapping[str, Any], raw_params: list[Tree]
    ) -> Fn | None:
        """``path = 'text'``: fhirpathpy's result computed directly when the left value is one
        plain string (not a Quantity), else fhirpathpy's ``=``."""
        if name not in ("=", "!=") or entry is not _BASE_ENTRIES.get(name):
            return None
        literal = string_literal_of(raw_params[1])
        if literal is None:
            return None
        left = self.compile(raw_params[0])
        fn = entry["fn"]
        negate = name == "!="
        key = _member_key_of(raw_params[0])
        step = _Member(key, self.types) if key is not None else None

        def equality(ctx: Ctx, data: Any) -> list[Any]:
            ctx["$this"] = data
            if step is not None and len(data) == 1:
                # ``key = 'text'`` on one JSON object: its member read in place, no nodes
                found = step.plain_string(data[0])
                if found is not None:
                    return [(found == literal) is not negate] if found else []
            a = left(ctx, data)
            ctx["$this"] = data
            if not a:
                return []
            item = a[0]
            if isinstance(item, ResourceNode):
                value = item.data
                if type(value) is str and item.path not in QUANTITY_TYPES and len(a) == 1:
                    return [(value == literal) is not negate]
            elif type(item) is str and len(a) == 1:
                return [(item == literal) is not negate]
            return arraify(fn(ctx, a, [literal]))

        return equality

    # --- functions -------------------------------------------------------------------------

    def invoke(self, name: str, raw_params: list[Tree] | None) -> Fn:
        """fhirpathpy's ``doInvoke`` for one call site."""
        entry = self.registry.get(name)
        if entry is None:
            raise CompileError(f"Not implemented: {name}")
        fn = entry["fn"]
        nullable_input = "nullable_input" in entry
        params_list = raw_params if isinstance(raw_params, list) else []

        if "variadic" in entry:
            return self._variadic(entry, params_list)
        if "arity" not in entry:
            if params_list:
                return _refuse(f"{name} expects no params", nullable_input)
            return _no_params(fn, nullable_input)
        if getattr(fn, "__name__", "") == "trace_fn":
            params_list = params_list[:1]  # fhirpathpy's trace drops a projection argument
        count = len(params_list)
        if count not in entry["arity"]:
            return _refuse(f"{name} wrong arity: got {count}", nullable_input)

        arg_types = entry["arity"][count]
        if fn is filtering.where_macro and count == 1:
            return self._where(params_list[0])
        if fn is existence.exists_macro and count == 1:
            where = self._where(params_list[0])
            return lambda ctx, data: [bool(where(ctx, data))]
        if fn is filtering.select_macro and count == 1:
            return self._select(self.compile(params_list[0]))
        nullable = "nullable" in entry
        if count == 0:
            return _no_arguments(fn, nullable_input or nullable)
        makers = [self.param(arg_types[i], params_list[i]) for i in range(count)]

        def function(ctx: Ctx, data: Any) -> list[Any]:
            if nullable_input and _is_nullable(data):
                return []
            this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
            params = [make(ctx, this) for make in makers]
            if nullable and (_is_nullable(data) or any(_is_nullable(p) for p in params)):
                return []
            return arraify(fn(ctx, data, *params))

        return function

    def _variadic(self, entry: Mapping[str, Any], params_list: list[Tree]) -> Fn:
        fn = entry["fn"]
        nullable_input = "nullable_input" in entry
        makers = [self.param(entry["variadic"], p) for p in params_list]

        def variadic(ctx: Ctx, data: Any) -> list[Any]:
            if nullable_input and _is_nullable(data):
                return []
            this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
            params = [make(ctx, this) for make in makers]
            return arraify(fn(ctx, arraify(data), *params))

        return variadic

    def _where(self, criteria_node: Tree) -> Fn:
        """``where(criteria)``: each item kept when the criteria's first value is truthy
        (fhirpathpy's ``where_macro``, the criteria evaluated once per item).

        An item whose verdict ``prefilter.QuickFilter`` reads from its JSON skips the
        criteria; the last item always runs it, so the context (``$this``, ``$index``) is
        left exactly as the criteria leaves it."""
        criteria = self.compile(criteria_node)
        quick = (
            prefilter.QuickFilter(
                criteria_node,
                self._prefilter_types,
                self.functions,
                lambda rest: self.compile(prefilter.and_chain(rest)),
            )
            if prefilter.worth_trying(criteria_node, self.functions)
            else None
        )

        def where(ctx: Ctx, data: Any) -> list[Any]:
            if not isinstance(data, list):
                return []
            kept: list[Any] = []
            last = len(data) - 1
            for index, item in enumerate(data):
                run = criteria
                if quick is not None and index != last:
                    verdict = quick(item, ctx)
                    if verdict is True:
                        kept.append(item)
                        continue
                    if verdict is False:
                        continue
                    if verdict is not None:
                        run = verdict  # the leading tests hold: the rest of the criteria
                ctx["$index"] = index
                this = [item] if type(item) is Node else arraify(item)
                ctx["$this"] = this
                found = run(ctx, this)
                if len(found) > 0 and found[0]:
                    kept.append(item)
            return _flatten(kept)

        return where

    @staticmethod
    def _select(projection: Fn) -> Fn:
        def select(ctx: Ctx, data: Any) -> list[Any]:
            if not isinstance(data, list):
                return []
            out: list[Any] = []
            for index, item in enumerate(data):
                ctx["$index"] = index
                this = arraify(item)
                ctx["$this"] = this
                out.append(projection(ctx, this))
            return _flatten(out)

        return select

    def param(self, kind: Any, node: Tree) -> Param:
        """fhirpathpy's ``make_param`` for one parameter of a call site."""
        if kind == "Expr":
            body = self.compile(node)

            def expression(ctx: Ctx, _parent: Any) -> Callable[[Any], list[Any]]:
                def run(data: Any) -> list[Any]:
                    this = arraify(data)
                    ctx["$this"] = this
                    return body(ctx, this)

                return run

            return expression
        if kind == "AnyAtRoot":
            body = self.compile(node)

            def at_root(ctx: Ctx, _parent: Any) -> list[Any]:
                this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
                ctx["$this"] = this
                return body(ctx, this)

            return at_root
        if kind == "Identifier":
            if node.get("type") == "TermExpression":
                text = node["text"]
                return lambda _ctx, _parent: text
            message = "Expected identifier node, got " + json.dumps(node, default=str)

            def not_identifier(_ctx: Ctx, _parent: Any) -> Any:
                raise ValueError(message)

            return not_identifier
        if kind == "TypeSpecifier":
            type_info = type_specifier(node["text"])
            return lambda _ctx, _parent: TypeInfo(type_info.name, type_info.namespace)
        body = self.compile(node)
        if kind == "Any":

            def any_value(ctx: Ctx, parent: Any) -> list[Any]:
                ctx["$this"] = parent
                return body(ctx, parent)

            return any_value
        literal = string_literal_of(node)
        if literal is not None and kind in ("String", ["String"]):

            def string_param(ctx: Ctx, parent: Any) -> Any:
                ctx["$this"] = parent
                return literal  # check_string_param's answer for a string literal

            return string_param
        return _typed_param(kind, body)


class Node(ResourceNode):  # type: ignore[misc]
    """fhirpathpy's ``ResourceNode`` with a light constructor: ``_data``, ``propName`` and
    ``index`` are class defaults (fhirpathpy reads ``propName`` only to build more of them for
    ``children()``, never for a value), so a member step sets two attributes per item."""

    _data = None
    propName = None  # noqa: N815 - fhirpathpy's attribute name
    index = None

    def __init__(self, data: Any, path: str | None) -> None:  # noqa: D107
        self.data = data
        self.path = path


_PLAIN = frozenset({str, int, bool, float})


def _node(value: Any, path: str | None) -> Any:
    """``ResourceNode.create_node(value, path)`` (a resource takes its type as path)."""
    if type(value) in _PLAIN:
        return Node(value, path)
    if type(value) is dict:
        kind = value.get("resourceType")
        return Node(value, kind if "resourceType" in value else path)
    if isinstance(value, ResourceNode):
        return value
    if isinstance(value, _MAPPING) and "resourceType" in value:
        return Node(value, value["resourceType"])
    return Node(value, path)


def _no_params(fn: Callable[..., Any], nullable_input: bool) -> Fn:
    """A function of fhirpathpy's table declared without parameters (``empty()``, ``first()``...):
    called on the input as a collection."""
    if fn is existence.empty_fn:
        return lambda _ctx, data: [not arraify(data)]

    def plain(ctx: Ctx, data: Any) -> list[Any]:
        if nullable_input and _is_nullable(data):
            return []
        return arraify(fn(ctx, arraify(data)))

    return plain


def _no_arguments(fn: Callable[..., Any], nullable: bool) -> Fn:
    """A call with no arguments of a function that takes some (``exists()``, ``today()``...)."""
    if fn is existence.exists_macro:
        return lambda _ctx, data: [not (isinstance(data, list) and not data)]

    def function0(ctx: Ctx, data: Any) -> list[Any]:
        if nullable and _is_nullable(data):
            return []
        return arraify(fn(ctx, data))

    return function0


def _refuse(message: str, nullable_input: bool) -> Fn:
    """A call fhirpathpy refuses when evaluated (an empty input of a null-tolerant function
    answers empty first)."""

    def refuse(_ctx: Ctx, data: Any) -> list[Any]:
        if nullable_input and _is_nullable(data):
            return []
        raise ValueError(message)

    return refuse


def _typed_param(kind: Any, body: Fn) -> Param:
    """A singleton parameter checked by fhirpathpy's ``param_check_table``."""
    optional = isinstance(kind, list)
    name = kind[0] if optional else kind
    check = param_check_table.get(name)
    boolean = name == "Boolean"

    def typed(ctx: Ctx, parent: Any) -> Any:
        ctx["$this"] = parent
        result = body(ctx, parent)
        if not result:
            return []
        if boolean and len(result) == 1 and (result[0] is True or result[0] is False):
            return result[0]  # what check_boolean_param returns
        if len(result) > 1:
            raise ValueError(
                f"Unexpected collection{json.dumps(result, default=str)}; "
                f"expected singleton of type {name}"
            )
        if check is None:
            raise ValueError(f"Implement me for {name}")
        return check(result[0])

    return typed


def _add_nodes(out: list[Any], found: Any, path: str) -> None:
    """``found`` (a JSON value or array) as nodes typed ``path`` (fhirpathpy's ``create_node``)."""
    if type(found) is list:
        for x in found:
            kind = type(x)
            if kind is dict:
                out.append(Node(x, x["resourceType"] if "resourceType" in x else path))
            elif kind in _PLAIN:
                out.append(Node(x, path))
            else:
                out.append(_node(x, path))
    elif isinstance(found, list):
        out.extend(_node(x, path) for x in found)
    else:
        out.append(_node(found, path))


class _Member:
    """``.key`` over a collection (fhirpathpy's ``member_invocation``)."""

    def __init__(self, key: str, types: TypePaths) -> None:
        self.key = key
        self.types = types
        self.capitalized = bool(key) and key[0] == key[0].upper()
        self.extension_key = "_" + key
        #: parent type path -> (child path before typing, choice suffixes or None)
        self.steps: dict[str | None, tuple[str, tuple[str, ...] | None]] = {}
        self.typed_paths: dict[str, str] = {}

    def __call__(self, _ctx: Ctx, data: Any) -> list[Any]:
        if not isinstance(data, list):
            return []
        if self.capitalized:
            key = self.key
            try:
                filtered = [x for x in data if x["resourceType"] == key]
                return [x if isinstance(x, ResourceNode) else Node(x, key) for x in filtered]
            except TypeError:
                pass
        out: list[Any] = []
        for res in data:
            if type(res) is not Node and not isinstance(res, ResourceNode):
                res = _node(res, None)
            self._values(res, out)
        return out

    def plain_string(self, item: Any) -> str | None:
        """The member of ``item`` when fhirpathpy would give exactly one plain string node
        of a non-Quantity type for it (``""`` when it would give nothing), else None."""
        if isinstance(item, ResourceNode):
            value, parent = item.data, item.path
        elif type(item) is dict:
            value, parent = item, item.get("resourceType")
        else:
            return None
        if type(value) is not dict or ("_" + self.key) in value or self.key == "extension":
            return None
        child_path, choices = self._step(parent)
        if choices:
            return None
        found = value.get(self.key)
        if found is None or found == []:
            return ""
        if type(found) is not str or found == "":
            return None
        path = self.typed_paths.get(child_path)
        if path is None:
            path = self.typed_paths[child_path] = self.types.typed(child_path)
        return None if path in QUANTITY_TYPES else found

    def _step(self, parent: str | None) -> tuple[str, tuple[str, ...] | None]:
        found = self.steps.get(parent)
        if found is None:
            found = self.types.child(parent, self.key)
            if len(self.steps) < 1_000:
                self.steps[parent] = found
        return found

    def _values(self, res: Any, out: list[Any]) -> None:
        key = self.key
        parent = res.path
        step = self.steps.get(parent)
        if step is None:
            step = self._step(parent)
        child_path, choices = step
        value = res.data
        to_add: Any = None
        to_add_: Any = None
        if type(value) is dict or isinstance(value, _MAPPING):
            if choices:
                for actual in choices:
                    field = key + actual
                    to_add = value.get(field)
                    to_add_ = value.get("_" + field)
                    if to_add is not None or to_add_ is not None:
                        child_path += actual
                        break
            else:
                to_add = value.get(key)
                to_add_ = value.get(self.extension_key)
                if key == "extension":
                    child_path = "Extension"
        else:
            if isinstance(value, FP_Quantity):
                to_add = value.value
            if key == "length":
                to_add = len(value)
        if to_add is None and to_add_ is None:
            return
        path = self.typed_paths.get(child_path)
        if path is None:
            path = self.typed_paths[child_path] = self.types.typed(child_path)
        if to_add is not None:
            _add_nodes(out, to_add, path)
        if to_add_ is not None:
            _add_nodes(out, to_add_, path)


class Navigation:
    """FHIRPath ``children()`` and ``descendants()`` (fhirpathpy's ``navigation`` module, with the
    type path of each child memoised and no ``propName`` bookkeeping)."""

    def __init__(self, model: Mapping[str, Any] | None) -> None:
        self.model = model if isinstance(model, dict) else None
        self._paths: dict[tuple[str | None, str], str] = {}

    def _child_path(self, parent: str | None, prop: str) -> str:
        found = self._paths.get((parent, prop))
        if found is not None:
            return found
        child_path = "" if parent is None else parent + "." + prop
        if prop == "extension":
            child_path = "Extension"
        model = self.model
        if model is not None:
            elsewhere = model.get("pathsDefinedElsewhere")
            if elsewhere is not None and child_path in elsewhere:
                child_path = elsewhere[child_path]
            if "path2Type" in model:
                child_path = model["path2Type"].get(child_path, child_path)
        if prop.lower().endswith(child_path.lower()) and len(prop) > len(child_path):
            # fhirpathpy looks the choice up here (for a path name only); it fails the same
            # way on a node without a type path or without a model
            alternative = parent + "." + prop[: -len(child_path)]  # type: ignore[operator]
            self.model["choiceTypePaths"].get(alternative, [])  # type: ignore[index]
        if len(self._paths) < 20_000:
            self._paths[(parent, prop)] = child_path
        return child_path

    def children(self, coll: list[Any], exclude_primitive_extensions: bool) -> list[Any]:
        out: list[Any] = []
        for res in coll:
            data = get_data(res)
            node = res if isinstance(res, ResourceNode) else ResourceNode(res, None)
            if isinstance(data, list):
                data = dict(enumerate(data))
            if not isinstance(data, _MAPPING):
                continue
            for prop, value in data.items():
                if exclude_primitive_extensions and prop.startswith("_"):
                    continue
                path = self._child_path(node.path, prop)
                if isinstance(value, list):
                    out.extend(_node(x, path) for x in value)
                else:
                    out.append(_node(value, path))
        return out

    def children_fn(self, _ctx: Ctx, coll: list[Any]) -> list[Any]:
        return self.children(coll, True)

    def descendants_fn(self, ctx: Ctx, coll: list[Any]) -> list[Any]:
        """``descendants()``, computed once per call for the same input items (the items of a
        QuestionnaireResponse are read by many variables): the nodes depend only on the input
        items, which the memo holds alive so that their identity stays theirs."""
        memo = getattr(ctx.get("session"), "memo", None)
        if memo is None or not coll:
            return self.descendants(coll)
        key = ("descendants", *(id(x) for x in coll))
        found = memo.get(key)
        if found is None:
            found = memo[key] = (list(coll), self.descendants(coll))
        return list(found[1])

    def descendants(self, coll: list[Any]) -> list[Any]:
        out: list[Any] = []
        found = self.children(coll, False)
        while found:
            out.extend(found)
            found = self.children(found, False)
        return out


def member(key: str, types: TypePaths) -> Fn:
    """``.key`` over a collection (fhirpathpy's ``member_invocation``)."""
    return _Member(key, types)


_DECIDED: dict[str, tuple[Callable[[Any, Any, Any], Any], bool, bool]] = {
    # operator: (fhirpathpy's function, the left value that decides, the decided result)
    "and": (logic.and_op, False, False),
    "or": (logic.or_op, True, True),
    "implies": (logic.implies_op, False, True),
}
_BASE_ENTRIES: dict[str, Any] = {}


def set_base_entries(entries: Mapping[str, Any]) -> None:
    """The operator entries the shortcuts recognise (fhirpathpy's own)."""
    _BASE_ENTRIES.update({k: entries[k] for k in ("=", "!=", *COMPARISONS)})


def type_specifier(text: str) -> TypeInfo:
    """fhirpathpy's ``type_specifier``."""
    parts = text.replace("`", "").split(".")
    if len(parts) == 2:
        return TypeInfo(name=parts[1], namespace=parts[0])
    if len(parts) == 1:
        return TypeInfo(name=parts[0], namespace=None)
    raise CompileError(f"Expected TypeSpecifier node, got {text}")


def _member_key_of(node: Tree) -> str | None:
    """The name of a lone lower-case member step (``code`` in ``code = 'x'``), else None."""
    invocation = lone_term(node, "InvocationTerm")
    if invocation is None or invocation.get("type") != "MemberInvocation":
        return None
    key = identifier(invocation["children"][0]["text"]).replace("`", "")
    if not key or not key[0].isalpha() or key[0] != key[0].lower() or key == "length":
        return None
    return key
