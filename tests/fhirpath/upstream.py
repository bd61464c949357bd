"""fhirpathpy's own test suite, evaluated by the service's closures and by fhirpathpy itself.

Not part of ``make test`` (the suite is not vendored): run it against a checkout of
https://github.com/beda-software/fhirpath-py (its ``tests/`` folder)::

    .venv/bin/python -m tests.fhirpath.upstream /path/to/fhirpath-py/tests

Every enabled case is evaluated twice: ``fhirpathpy.evaluate`` as its suite does, and the
service's ``ClosureCompiler`` over fhirpathpy's own function table (no service functions) with
the case's model. It prints how many give the same values (or both fail), how many the service's
strict parser refuses at load, and every difference.
"""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fhirpathpy
import yaml
from fhirpathpy.engine import base_invocation_registry
from fhirpathpy.models import models

from fhir_service.engine.apply.values import to_json
from fhir_service.engine.fhirpath import _visit, parse_strict
from fhir_service.engine.fhirpath.closures import ClosureCompiler

_COMPILERS: dict[str | None, ClosureCompiler] = {}


def ours(resource: Any, expression: str, variables: dict[str, Any], model: str | None) -> Any:
    compiler = _COMPILERS.get(model)
    if compiler is None:
        compiler = _COMPILERS[model] = ClosureCompiler(
            base_invocation_registry, models[model] if model else None
        )
    fn = compiler.compile(parse_strict(expression)["children"][0])
    root = resource if isinstance(resource, list) else [resource]
    ctx = {
        "dataRoot": root,
        "vars": {"context": resource, "ucum": "http://unitsofmeasure.org", **variables},
        "model": models[model] if model else None,
    }
    return _visit(fn(ctx, root))


def outcome(run: Callable[..., Any], *args: Any) -> tuple[str, str]:
    try:
        return "ok", json.dumps([to_json(v) for v in run(*args)], default=str, sort_keys=True)
    except Exception:  # both arms failing is the same outcome
        return "error", ""


def cases(items: list[Any], disabled: bool = False) -> Iterator[tuple[dict[str, Any], str]]:
    for case in items:
        if isinstance(case, dict) and any(k.startswith("group") for k in case):
            yield from cases(next(iter(case.values())), disabled or case.get("disable", False))
        elif isinstance(case, dict) and "expression" in case:
            if disabled or case.get("disable"):
                continue
            expressions = case["expression"]
            for expression in expressions if isinstance(expressions, list) else [expressions]:
                yield case, expression


def main(folder: Path) -> int:
    inputs = {p.name: json.loads(p.read_text()) for p in (folder / "resources").glob("*.json")}
    stats: collections.Counter[str] = collections.Counter()
    differences = []
    for path in sorted((folder / "cases").glob("*.yaml")):
        content = yaml.safe_load(path.read_text())
        subject = content.get("subject")
        for case, expression in cases(content["tests"]):
            resource = inputs.get(case["inputfile"], subject) if "inputfile" in case else subject
            model = case.get("model")
            variables: dict[str, Any] = {"resource": resource}
            if "context" in case:
                variables["context"] = fhirpathpy.evaluate(resource, case["context"])[0]
            variables.update(case.get("variables") or {})
            model_data = models[model] if model else None
            theirs = outcome(fhirpathpy.evaluate, resource, expression, dict(variables), model_data)
            try:
                parse_strict(expression)
            except Exception:  # noqa: BLE001 - refused at load: a documented strictness
                stats["refused by the strict parser"] += 1
                continue
            mine = outcome(ours, resource, expression, dict(variables), model)
            if mine == theirs:
                stats["same"] += 1
            else:
                stats["different"] += 1
                differences.append((path.name, case.get("desc"), expression, mine, theirs))
    print(json.dumps({"counts": dict(stats), "differences": differences}, indent=1))  # noqa: T201
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
