"""Plain fhirpathpy as the other arm of the differential tests.

``fhirpathpy.compile`` (its own parser and tree-walking interpreter, unchanged) with the
service's functions (``memberOf``, ``resolve``, ``now``...) given through fhirpathpy's documented
``userInvocationTable`` option, so both arms see the same functions and only the evaluators
differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fhirpathpy

from fhir_service.engine.apply.values import to_json
from fhir_service.engine.fhirpath import R4_MODEL, REIMPLEMENTED, FhirPathCompiler


class PlainArm:
    """``fhirpathpy.compile`` with the service's functions as a user invocation table."""

    def __init__(self, compiler: FhirPathCompiler) -> None:
        self.context: dict[str, Any] = {"session": None}
        context = self.context
        table: dict[str, Any] = {}
        for name, entry in compiler.extensions.items():
            if name in REIMPLEMENTED:
                continue  # fhirpathpy's own
            fn = entry["fn"]
            table[name] = {
                **entry,
                "fn": lambda inputs, *args, _fn=fn: _fn(context, inputs, *args),
            }
        self.options = {"userInvocationTable": table}
        self.raw_options = {**self.options, "returnRawData": True}
        self._cache: dict[tuple[str, bool], Any] = {}

    def evaluate(
        self, expression: str, resource: Any, env: dict[str, Any], session: Any, *, typed: bool
    ) -> list[Any]:
        key = (expression, typed)
        fn = self._cache.get(key)
        if fn is None:
            options = self.raw_options if typed else self.options
            fn = self._cache[key] = fhirpathpy.compile(expression, R4_MODEL, options)
        self.context["session"] = session
        return list(fn(resource if resource is not None else {}, dict(env)))


def outcome(run: Callable[..., list[Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``run(*args, **kwargs)`` as JSON values, or the name of the exception it raised."""
    try:
        return {"value": [to_json(v) for v in run(*args, **kwargs)]}
    except Exception as exc:  # any failure is an outcome to compare
        return {"error": type(exc).__name__}
