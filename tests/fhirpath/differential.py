"""Differential run: the service's FHIRPath evaluator against plain fhirpathpy, in a fresh process.

``python -m tests.fhirpath.differential`` prints a JSON report. It first snapshots every
attribute of fhirpathpy's modules (``pristine.snapshot``), then imports the service, builds the
runtime, and evaluates

* every FHIRPath expression of ``definitions/`` (Library and PlanDefinition variables, action
  conditions, dynamicValues, ActivityDefinition dynamicValues, action targets) on the data of
  every golden scenario (``tests/scenarios/**``: prefetch, draft orders and the EHR server's
  bodies), with the ``%variables`` the engine binds in that call;
* every case of ``tests/fhirpath/*.yaml`` (FHIRPath specification sections and engine cases);

once with the service's compiled closures and once with ``fhirpathpy.compile`` (its own parser
and interpreter, unchanged), the service's functions (``memberOf``, ``resolve``...) handed to
both the same way: through fhirpathpy's documented ``userInvocationTable`` option for the plain
arm. It reports every expression whose values (or error/no error) differ, and whether
fhirpathpy's modules are still the originals after all of it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fhirpath import pristine

BEFORE = pristine.snapshot()  # before anything of the service is imported

import yaml  # noqa: E402

from fhir_service.engine.apply.evaluation import CallInput, Scope  # noqa: E402
from fhir_service.engine.data.dataset import build_data_set, flatten  # noqa: E402
from fhir_service.engine.fhirpath import (  # noqa: E402
    CompiledExpression,
    EvaluationSession,
    FhirPathCompiler,
    fhir_date,
    fhir_datetime,
)
from fhir_service.engine.fhirpath.expressions import FHIRPATH  # noqa: E402
from fhir_service.engine.terminology.membership import Terminology  # noqa: E402
from fhir_service.errors import IssueLog  # noqa: E402
from fhir_service.runtime import build_runtime  # noqa: E402
from fhir_service.settings import Settings  # noqa: E402
from tests.fhirpath.plain import PlainArm, outcome  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "scenarios"
CASES = ROOT / "tests" / "fhirpath"
MINI = ROOT / "tests" / "fixtures" / "definitions-mini"
DEFAULT_NOW = "2026-12-01T12:00:00Z"


def definition_expressions(definitions: Path) -> Iterator[tuple[str, str, str]]:
    """(artifact id, owner kind, expression) of every FHIRPath Expression in ``definitions``."""
    for path in sorted(definitions.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        owner = f"{resource.get('resourceType')}/{resource.get('id')}"
        for expression in _expressions(resource):
            yield owner, str(resource.get("resourceType")), expression


def _expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("language") == FHIRPATH and isinstance(node.get("expression"), str):
            yield node["expression"]
        for value in node.values():
            yield from _expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value)


def scenario_calls() -> Iterator[tuple[str, datetime, Any, list[Any], list[Any]]]:
    """(name, now, patient id, record, drafts) of every golden scenario."""
    for request_path in sorted(SCENARIOS.glob("*/*/request.json")):
        folder = request_path.parent
        body = json.loads(request_path.read_text(encoding="utf-8"))
        meta_path = folder / "scenario.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        now = datetime.fromisoformat(str(meta.get("now", DEFAULT_NOW)).replace("Z", "+00:00"))
        context = body.get("context") if isinstance(body.get("context"), dict) else {}
        record: list[Any] = []
        prefetch = body.get("prefetch")
        if isinstance(prefetch, dict):
            record += [v for v in prefetch.values() if isinstance(v, dict)]
        server = folder / "fhir-server.json"
        if server.exists():
            routes = json.loads(server.read_text(encoding="utf-8"))
            record += [v for v in routes.values() if isinstance(v, dict) and "resourceType" in v]
        drafts = context.get("draftOrders")
        yield (
            f"{folder.parent.name}/{folder.name}",
            now,
            context.get("patientId"),
            record,
            list(flatten(drafts)) if drafts else [],
        )


def run_definitions(report: dict[str, Any]) -> None:
    settings = Settings(auth="off", database_url="sqlite://", log_level="ERROR")
    runtime = build_runtime(settings)
    engine = runtime.engine
    compiler = engine.compiler
    plain = PlainArm(compiler)
    expressions = sorted(set(definition_expressions(settings.definitions_dir)))
    compiled = {e: compiler.compile(e) for _, _, e in expressions}
    report["definition_expressions"] = len(compiled)
    plan_scopes = engine.plan_variables
    mismatches = report.setdefault("mismatches", [])
    count = 0
    for name, now, patient_id, record, drafts in scenario_calls():
        data = build_data_set(record, drafts, patient_id=patient_id)
        call = CallInput(data, now, patient_id)
        top = engine.new_scope(call, IssueLog())
        scopes = {pid: top.child(variables) for pid, variables in plan_scopes.items()}
        for owner, kind, expression in expressions:
            pid = owner.split("/", 1)[1]
            scope: Scope = scopes.get(pid, top) if kind == "PlanDefinition" else top
            expr: CompiledExpression = compiled[expression]
            env = scope.env(expression=expr)
            resource = scope.patient or {}
            ours = outcome(expr.evaluate_typed, resource, env, call.session)
            if "error" in ours:
                report["definition_errors"] = report.get("definition_errors", 0) + 1
            theirs = outcome(plain.evaluate, expression, resource, env, call.session, typed=True)
            count += 1
            if ours != theirs:
                mismatches.append(
                    {
                        "where": f"{name} {owner}",
                        "expression": expression,
                        "ours": ours,
                        "fhirpathpy": theirs,
                    }
                )
    report["definition_evaluations"] = count


def run_cases(report: dict[str, Any]) -> None:
    value_sets = [json.loads(p.read_text(encoding="utf-8")) for p in MINI.glob("ValueSet-*.json")]
    compiler = FhirPathCompiler(Terminology(value_sets))
    plain = PlainArm(compiler)
    cases = report.setdefault("case_outcomes", [])
    for path in sorted(CASES.glob("*.yaml")):
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in _cases(content.get("tests") or []):
            try:
                expr = compiler.compile(case["expression"])
            except ValueError:
                continue  # refused at compile time: a documented strictness, no evaluation
            now = datetime.fromisoformat(str(case.get("now", DEFAULT_NOW)).replace("Z", "+00:00"))
            resource = {}
            if "inputfile" in case:
                resource = json.loads((CASES / "resources" / case["inputfile"]).read_text())
            env: dict[str, Any] = {"now": fhir_datetime(now), "today": fhir_date(now)}
            env.update(case.get("variables") or {})
            data = build_data_set(
                [resource] + [v for v in env.values() if isinstance(v, dict | list)]
            )
            session = EvaluationSession(now, data.resolve, data.resolve_scoped)
            ours = outcome(expr.evaluate, resource, env, session)
            theirs = outcome(
                plain.evaluate, case["expression"], resource, env, session, typed=False
            )
            cases.append(
                {
                    "file": path.name,
                    "desc": case["desc"],
                    "expression": case["expression"],
                    "same": ours == theirs,
                    "ours": ours,
                    "fhirpathpy": theirs,
                }
            )


def _cases(items: list[Any]) -> Iterator[dict[str, Any]]:
    for item in items:
        if isinstance(item, dict) and len(item) == 1 and next(iter(item)).startswith("group:"):
            yield from _cases(next(iter(item.values())))
        else:
            yield item


def main() -> None:
    report: dict[str, Any] = {}
    parts = sys.argv[1:] or ["definitions", "cases"]
    if "definitions" in parts:
        run_definitions(report)
    if "cases" in parts:
        run_cases(report)
    report["fhirpathpy_changes"] = pristine.changes(BEFORE)
    print(json.dumps(report, default=str))  # noqa: T201 - the report is the output


if __name__ == "__main__":
    main()
