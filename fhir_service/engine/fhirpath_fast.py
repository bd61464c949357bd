"""Faster fhirpathpy 2.2.4 internals with identical results (a performance work-around).

fhirpathpy's tree-walking interpreter repeats work on every evaluation that depends only on
the parsed expression. This module replaces a few of its functions with equivalents that do
that work once:

* ``apply_parsed_path`` wrapped the user function table on every evaluation, and ``doInvoke``
  and ``infix_invoke`` merged ``{**base_invocation_registry, **user table}`` on every function
  call and operator; both are now done once per ``InvocationTable`` (the compiler's);
* string literals and identifiers were unescaped with ``re.sub`` on every evaluation; the
  unescaped text is now cached per node text (a fresh one-item list is returned each time,
  as before, since callers may modify it);
* ``where()`` evaluated its criteria twice for every item whose result was non-empty
  (``check_macro_expr``); ``where_macro`` below evaluates it once and keeps the same test
  (Python truth of the first item). The criteria have no side effects but the ``$this`` and
  ``$index`` bookkeeping, which is set the same way by the second run.

The replacement functions are copies of fhirpathpy's with only those changes; everything
else (messages, arity checks, nullable handling) is unchanged. Installed once, at import of
``fhir_service.engine.fhirpath``; fhirpathpy keeps these in module globals, so this is
process-wide and idempotent.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import fhirpathpy
import fhirpathpy.engine as engine
from fhirpathpy.engine import base_invocation_registry, util
from fhirpathpy.engine.evaluators import evaluators
from fhirpathpy.engine.invocations import filtering


class ProcessedTable(dict[str, Any]):
    """fhirpathpy's wrapping of an ``InvocationTable``, with its merge with fhirpathpy's own
    registry kept on it."""

    merged: dict[str, Any] | None = None


class InvocationTable(dict[str, Any]):
    """A user function table whose fhirpathpy wrapping is computed once, at first use (so
    do not change its entries after an expression using it has been evaluated)."""

    processed: ProcessedTable | None = None


def _registry(user_table: Any) -> dict[str, Any]:
    """``{**base_invocation_registry, **user_table}``, once per ``ProcessedTable``."""
    if isinstance(user_table, ProcessedTable):
        if user_table.merged is None:
            user_table.merged = {**base_invocation_registry, **user_table}
        return user_table.merged
    return {**base_invocation_registry, **(user_table or {})}


def do_eval(ctx: Any, parent_data: Any, node: Any) -> Any:
    node_type = node["type"]
    evaluator = evaluators.get(node_type)
    if evaluator is None:
        raise Exception("No " + node_type + " evaluator ")
    return evaluator(ctx, parent_data, node)


def do_invoke(ctx: Any, fn_name: Any, data: Any, raw_params: Any) -> Any:
    invocation_registry = _registry(ctx["userInvocationTable"])
    make_param = engine.make_param

    if isinstance(fn_name, list) and len(fn_name) == 1:
        fn_name = fn_name[0]

    if not isinstance(fn_name, str) or fn_name not in invocation_registry:
        raise Exception("Not implemented: " + str(fn_name))

    invocation = invocation_registry[fn_name]

    if "nullable_input" in invocation and util.is_nullable(data):
        return []

    if "variadic" in invocation:
        tp = invocation["variadic"]
        raw_params_list = raw_params if isinstance(raw_params, list) else []
        this_value = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
        variadic = [make_param(ctx, this_value, tp, pr) for pr in raw_params_list]
        res = invocation["fn"](ctx, util.arraify(data), *variadic)
        return util.arraify(res)

    if "arity" not in invocation:
        if raw_params is None or util.is_empty(raw_params):
            res = invocation["fn"](ctx, util.arraify(data))
            return util.arraify(res)

        raise Exception(fn_name + " expects no params")

    if invocation["fn"].__name__ == "trace_fn" and raw_params is not None:
        raw_params = raw_params[:1]

    params_number = 0
    if isinstance(raw_params, list):
        params_number = len(raw_params)

    if params_number not in invocation["arity"]:
        raise Exception(fn_name + " wrong arity: got " + str(params_number))

    params: list[Any] = []
    arg_types = invocation["arity"][params_number]

    this_value = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
    for i in range(0, params_number):
        params.append(make_param(ctx, this_value, arg_types[i], raw_params[i]))

    params.insert(0, data)
    params.insert(0, ctx)

    if "nullable" in invocation:
        if any(util.is_nullable(x) for x in params):
            return []

    res = invocation["fn"](*params)

    return util.arraify(res)


def infix_invoke(ctx: Any, fn_name: Any, data: Any, raw_params: Any) -> Any:
    invocation_registry = _registry(ctx["userInvocationTable"])
    if fn_name not in invocation_registry or "fn" not in invocation_registry[fn_name]:
        raise Exception("Not implemented " + fn_name)

    invocation = invocation_registry[fn_name]
    params_number = len(raw_params)

    if params_number != 2:
        raise Exception("Infix invoke should have arity 2")

    arg_types = invocation["arity"][params_number]

    if arg_types is not None:
        make_param = engine.make_param
        params = [ctx]

        for i in range(0, params_number):
            params.append(make_param(ctx, data, arg_types[i], raw_params[i]))

        if "nullable" in invocation:
            if any(util.is_nullable(x) for x in params):
                return []

        res = invocation["fn"](*params)
        return util.arraify(res)

    # fhirpathpy prints ``fn_name + " wrong arity: got " + paramsNumber`` here, which raises
    # (str + int); no operator of its registry lacks the arity 2 entry.
    raise TypeError(f"{fn_name} wrong arity: got {params_number}")


#: the module (``fhirpathpy.engine.evaluators`` the attribute is the evaluator table)
evaluators_module = importlib.import_module("fhirpathpy.engine.evaluators")
_STRING_LITERALS: dict[str, str] = {}
_IDENTIFIERS: dict[str, str] = {}
_original_string_literal = evaluators_module.string_literal
_original_identifier = evaluators_module.identifier


def string_literal(ctx: Any, parent_data: Any, node: Any) -> list[Any]:
    text = node["text"]
    value = _STRING_LITERALS.get(text)
    if value is None:
        value = _original_string_literal(ctx, parent_data, node)[0]
        _STRING_LITERALS[text] = value
    return [value]


def identifier(ctx: Any, parent_data: Any, node: Any) -> list[Any]:
    text = node["text"]
    value = _IDENTIFIERS.get(text)
    if value is None:
        value = _original_identifier(ctx, parent_data, node)[0]
        _IDENTIFIERS[text] = value
    return [value]


def where_macro(ctx: Any, data: Any, expr: Any) -> list[Any]:
    """fhirpathpy's ``where`` with the criteria evaluated once per item."""
    if not isinstance(data, list):
        return []
    result = []
    for i, x in enumerate(data):
        ctx["$index"] = i
        found = expr(x)
        if len(found) > 0 and found[0]:
            result.append(x)
    return cast(list[Any], util.flatten(result))


_original_process = util.process_user_invocation_table


def process_user_invocation_table(table: Any) -> dict[str, Any]:
    """fhirpathpy's wrapping of a user function table, done once per ``InvocationTable``
    (fhirpathpy does it on every evaluation)."""
    if isinstance(table, InvocationTable):
        if table.processed is None:
            table.processed = ProcessedTable(_original_process(table))
        return table.processed
    return cast(dict[str, Any], _original_process(table))


def _state() -> dict[str, Any]:
    return {
        "process": fhirpathpy.process_user_invocation_table,
        "where": base_invocation_registry["where"],
        "where_macro": filtering.where_macro,
        "do_eval": engine.do_eval,
        "doInvoke": engine.doInvoke,
        "infix_invoke": engine.infix_invoke,
        "StringLiteral": evaluators["StringLiteral"],
        "Identifier": evaluators["Identifier"],
    }


def _restore(state: dict[str, Any]) -> None:
    fhirpathpy.process_user_invocation_table = state["process"]
    base_invocation_registry["where"] = state["where"]
    filtering.where_macro = state["where_macro"]
    engine.do_eval = state["do_eval"]
    engine.doInvoke = state["doInvoke"]
    engine.infix_invoke = state["infix_invoke"]
    evaluators["StringLiteral"] = state["StringLiteral"]
    evaluators["Identifier"] = state["Identifier"]


#: fhirpathpy's own functions, as imported (for the differential tests).
_ORIGINAL = _state()


def install() -> None:
    _restore(
        {
            "process": process_user_invocation_table,
            "where": {**_ORIGINAL["where"], "fn": where_macro},
            "where_macro": where_macro,
            "do_eval": do_eval,
            "doInvoke": do_invoke,
            "infix_invoke": infix_invoke,
            "StringLiteral": string_literal,
            "Identifier": identifier,
        }
    )


@contextmanager
def original_fhirpathpy() -> Iterator[None]:
    """Run the block with fhirpathpy's own functions (tests only: not thread-safe)."""
    current = _state()
    _restore(_ORIGINAL)
    try:
        yield
    finally:
        _restore(current)
