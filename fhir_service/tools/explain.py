"""Explain a hook request: print chosen variables, the cards, and every evaluation issue.

Usage::

    python -m fhir_service.tools.explain request.json [--now 2026-12-01T12:00:00Z] [VAR ...]

A tool for rule authors (docs/authoring.md): it runs the real engine on the request's prefetch
(no FHIR server is called).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from fhir_service.cds.invoke import (
    build_call_data,
    evaluate_service,
    parse_hook_call,
    triggering_drafts,
)
from fhir_service.engine.apply.evaluation import CallInput
from fhir_service.engine.apply.values import to_json
from fhir_service.errors import IssueLog
from fhir_service.runtime import build_runtime
from fhir_service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("request", type=Path)
    parser.add_argument("variables", nargs="*")
    parser.add_argument("--now", default="2026-12-01T12:00:00+00:00")
    parser.add_argument("--service", default=None, help="service id (default: from the hook)")
    args = parser.parse_args(argv)
    now = datetime.fromisoformat(args.now.replace("Z", "+00:00")).astimezone(UTC)
    settings = Settings(auth="off", database_url="sqlite://")
    runtime = build_runtime(settings, clock=lambda: now)
    body = json.loads(args.request.read_text(encoding="utf-8"))
    service_id = args.service or f"muscle-spasm-{body.get('hook')}"
    service = runtime.services[service_id]
    call = parse_hook_call(body, service)
    data = build_call_data(call, call.prefetch, settings.max_resources)
    issues = IssueLog()
    scope = runtime.engine.new_scope(
        CallInput(data, now, call.patient_id, triggering_drafts(call, data)), issues
    )
    for name in args.variables:
        print(f"%{name} = {json.dumps(to_json(scope.get(name)), default=str)[:2000]}")
    cards = evaluate_service(runtime, service, call, data)
    print(json.dumps({"cards": cards}, indent=2, ensure_ascii=False))
    for issue in issues.issues:
        print(
            f"ISSUE {issue.severity}: {issue.diagnostics} @ {','.join(issue.expression)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
