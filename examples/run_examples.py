#!/usr/bin/env python3
"""Send every example to a running service and print what comes back, readably.

Usage::

    python examples/run_examples.py [BASE_URL]        # default http://127.0.0.1:8000

It starts nothing: run the service first, with the clock the examples were written for and
without JWT auth (development only), e.g.::

    FHIR_SERVICE_NOW=2026-12-01T12:00:00Z make run        # in one terminal
    python examples/run_examples.py                        # in another

What it sends (standard library only, no proxies):

1. every CDS Hooks request file under ``examples/cds-hooks/**/*.json`` (a JSON object with a
   ``hook``), to the service named by the nearest folder that is a service id, else to the one
   service of that hook in discovery; files without a ``hook`` are skipped;
2. for every example patient (``examples/patients/*.json``, FHIR transaction Bundles):
   a ``patient-view`` call whose prefetch is the patient's own resources (a stand-in for an
   EHR running the discovery templates), then ``PlanDefinition/{id}/$apply`` of each rule that
   made a card (RF-01 when none did) and ``Questionnaire/$populate`` of the assessment, both
   with the patient's resources as ``data``.

Prints each card's indicator, summary, rule id and suggestions. Exits 1 if any call answers
other than 2xx (or cannot be made), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HOOK_EXAMPLES = HERE / "cds-hooks"
PATIENTS = HERE / "patients"
RULE_SYSTEM = "http://example.org/fhir/muscle-spasm/CodeSystem/rule"
QUESTIONNAIRE = "muscle-spasm-assessment"


class Failure(Exception):
    """A call that did not answer 2xx."""


def request(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Accept", "application/json, application/fhir+json")
    if data is not None:
        content_type = "application/fhir+json" if path.startswith("/fhir") else "application/json"
        req.add_header("Content-Type", content_type)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except OSError as err:
        raise Failure(f"{method} {base}{path}: {err}") from err
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    if not 200 <= status < 300:
        raise Failure(f"{method} {path} -> {status}: {json.dumps(parsed)[:1500]}")
    return status, parsed


# --------------------------------------------------------------------------------------------
# Printing


def describe_action(action: dict[str, Any]) -> str:
    resource = action.get("resource") or {}
    target = action.get("resourceId") or "/".join(
        str(resource[k]) for k in ("resourceType", "id") if k in resource
    )
    code = next(iter(resource.get("code", {}).get("coding", [])), None) or next(
        iter(resource.get("medicationCodeableConcept", {}).get("coding", [])), None
    )
    what = f" [{code.get('display') or code.get('code')}]" if code else ""
    return f"{action.get('type')} {target}{what}".strip()


def print_cards(cards: list[dict[str, Any]]) -> None:
    if not cards:
        print("    (no cards)")
    for card in cards:
        topic = card.get("source", {}).get("topic", {})
        rule = topic.get("code", "?") if topic.get("system") == RULE_SYSTEM else "?"
        print(f"    [{card.get('indicator', '?').upper():8}] {rule:10} {card.get('summary')}")
        for suggestion in card.get("suggestions", []):
            actions = "; ".join(describe_action(a) for a in suggestion.get("actions", []))
            print(f"        suggestion: {suggestion.get('label')}  ({actions})")
        for link in card.get("links", []):
            print(f"        link: {link.get('label')} <{link.get('url')}>")


# --------------------------------------------------------------------------------------------
# CDS Hooks request files


def service_for(path: Path, body: dict[str, Any], services: list[dict[str, Any]]) -> str:
    ids = {s["id"] for s in services}
    for folder in path.relative_to(HOOK_EXAMPLES).parents:
        if folder.name in ids:
            return folder.name
    candidates = [s["id"] for s in services if s["hook"] == body.get("hook")]
    if len(candidates) != 1:
        raise Failure(f"{path}: cannot tell which service takes hook {body.get('hook')!r}")
    return candidates[0]


def run_hook_files(base: str, services: list[dict[str, Any]]) -> tuple[int, int]:
    """(files sent, failures)."""
    count = failures = 0
    for path in sorted(HOOK_EXAMPLES.rglob("*.json")) if HOOK_EXAMPLES.is_dir() else []:
        body = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(body, dict) or "hook" not in body:
            continue
        count += 1
        try:
            service_id = service_for(path, body, services)
            _, answer = request(base, "POST", f"/cds-services/{service_id}", body)
        except Failure as exc:
            print(f"FAILED {path.relative_to(HERE)}: {exc}", file=sys.stderr)
            failures += 1
            continue
        cards = answer.get("cards", [])
        print(f"== {path.relative_to(HERE)} -> {service_id}: {len(cards)} card(s)")
        print_cards(cards)
    return count, failures


# --------------------------------------------------------------------------------------------
# Example patients


def as_data(bundle: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The transaction's resources with ids (the urn:uuid) and references rewritten to them,
    as a FHIR server would store them; returns (patient id, resources)."""
    ids = {}
    for entry in bundle["entry"]:
        rtype = entry["resource"]["resourceType"]
        ids[entry["fullUrl"]] = (rtype, entry["fullUrl"].rsplit(":", 1)[-1])
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    for full_url, (rtype, rid) in ids.items():
        text = text.replace(f'"{full_url}"', f'"{rtype}/{rid}"')
    resources = json.loads(text)
    for resource, (_, rid) in zip(resources, ids.values(), strict=True):
        resource["id"] = rid
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    return patient_id, resources


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if resources:
        out["entry"] = [{"resource": r} for r in resources]
    return out


def stand_in_prefetch(
    service: dict[str, Any], resources: list[dict[str, Any]], context: dict[str, Any]
) -> dict[str, Any]:
    """Each template answered with the patient's resources of its type (the service filters
    codes, dates and statuses itself); a template it cannot fill is left out (fetched)."""
    prefetch: dict[str, Any] = {}
    for key, template in service.get("prefetch", {}).items():
        filled = template
        for name, value in context.items():
            if isinstance(value, str):
                filled = filled.replace("{{context." + name + "}}", value)
        if "{{" in filled:
            continue
        path = filled.split("?", 1)[0]
        rtype = path.split("/", 1)[0]
        matching = [r for r in resources if r["resourceType"] == rtype]
        if "?" in filled:
            prefetch[key] = searchset(matching)
        else:
            rid = path.split("/", 1)[1] if "/" in path else None
            prefetch[key] = next((r for r in matching if r["id"] == rid), None)
    return prefetch


def answers(items: list[dict[str, Any]], link_id: str) -> list[Any]:
    found: list[Any] = []
    for item in items:
        if item.get("linkId") == link_id:
            for answer in item.get("answer", []):
                found += [v for k, v in answer.items() if k.startswith("value")]
        found += answers(item.get("item", []), link_id)
        for answer in item.get("answer", []):
            found += answers(answer.get("item", []), link_id)
    return found


def walk_actions(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for action in actions:
        out.append(action)
        out += walk_actions(action.get("action", []))
    return out


def run_patient(base: str, path: Path, services: list[dict[str, Any]]) -> None:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    patient_id, resources = as_data(bundle)
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    name = patient.get("name", [{}])[0]
    who = f"{' '.join(name.get('given', []))} {name.get('family', '')}".strip()
    print(f"== {path.relative_to(HERE)}: {who}, born {patient.get('birthDate')}")

    service = next(s for s in services if s["hook"] == "patient-view")
    context = {"userId": "Practitioner/example", "patientId": patient_id}
    call = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": stand_in_prefetch(service, resources, context),
    }
    _, answer = request(base, "POST", f"/cds-services/{service['id']}", call)
    print(f"  patient-view ({service['id']}):")
    print_cards(answer.get("cards", []))

    data = {
        "name": "data",
        "resource": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in resources],
        },
    }
    fired = [c.get("source", {}).get("topic", {}).get("code") for c in answer.get("cards", [])]
    for rule in [r for r in fired if r] or ["RF-01"]:
        plan = rule.lower()
        apply_body = {
            "resourceType": "Parameters",
            "parameter": [{"name": "subject", "valueString": f"Patient/{patient_id}"}, data],
        }
        _, care_plan = request(base, "POST", f"/fhir/PlanDefinition/{plan}/$apply", apply_body)
        codes = [
            coding.get("code")
            for group in care_plan.get("contained", [])
            if group.get("resourceType") == "RequestGroup"
            for action in walk_actions(group.get("action", []))
            for concept in action.get("code", [])
            for coding in concept.get("coding", [])
        ]
        print(
            f"  $apply PlanDefinition/{plan}: CarePlan {care_plan.get('status')}, "
            f"actions {', '.join(codes) or '(none apply)'}"
        )

    populate_body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subject", "valueReference": {"reference": f"Patient/{patient_id}"}},
            data,
        ],
    }
    _, populated = request(
        base, "POST", f"/fhir/Questionnaire/{QUESTIONNAIRE}/$populate", populate_body
    )
    qr = next(p["resource"] for p in populated["parameter"] if p["name"] == "response")
    pain = answers(qr.get("item", []), "pain-nrs")
    pregnancy = [
        v.get("display") or v.get("code") for v in answers(qr.get("item", []), "pregnancy")
    ]
    print(
        f"  $populate {QUESTIONNAIRE}: status {qr.get('status')}, "
        f"pain-nrs {pain[0] if pain else '-'}, pregnancy {pregnancy[0] if pregnancy else '-'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    base = args.base.rstrip("/")
    failures = 0
    try:
        _, discovery = request(base, "GET", "/cds-services")
    except Failure as exc:
        print(f"FAILED {exc}", file=sys.stderr)
        return 1
    services = discovery["services"]
    print(f"{base}: {len(services)} CDS services ({', '.join(s['id'] for s in services)})")
    count, failures = run_hook_files(base, services)
    print(f"-- {count} CDS Hooks request file(s) under {HOOK_EXAMPLES.relative_to(HERE)}/")
    for path in sorted(PATIENTS.glob("*.json")):
        try:
            run_patient(base, path, services)
        except Failure as exc:
            print(f"FAILED {path.relative_to(HERE)}: {exc}", file=sys.stderr)
            failures += 1
    if failures:
        print(f"{failures} example(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
