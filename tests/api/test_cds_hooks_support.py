"""Shared helpers for the ``test_cds_hooks_*`` modules (this module holds no tests).

* :func:`cds_app` builds the real app like ``tests.conftest.make_app`` (pinned clock, counter
  ids, temp SQLite, allowlist ``http://ehr.test``) but loads ``definitions/`` once per session;
* :class:`Ehr` is the client's FHIR server behind an ``httpx.MockTransport``, recording every
  request (URL and headers) so that tests can assert what was (not) fetched;
* request builders for the four hooks, the RF-01 patient record, and assertion helpers for
  OperationOutcomes and for the "no empty values" rule (https://cds-hooks.hl7.org/2.0/#cds-service-response).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from fhir_service.knowledge.repository import KnowledgeBase
from fhir_service.knowledge.services import build_services
from fhir_service.settings import Settings
from tests.conftest import DEFAULT_NOW, make_app, shared_knowledge

EHR = "http://ehr.test/fhir"
RULE_SYSTEM = "http://example.org/fhir/muscle-spasm/CodeSystem/rule"
SERVICES = {
    "muscle-spasm-patient-view": "patient-view",
    "muscle-spasm-encounter-start": "encounter-start",
    "muscle-spasm-order-select": "order-select",
    "muscle-spasm-order-sign": "order-sign",
}
PV = "/cds-services/muscle-spasm-patient-view"
JSON = {"Content-Type": "application/json"}


def knowledge() -> KnowledgeBase:
    """The real knowledge base, loaded once per session (it is read-only once built)."""
    return shared_knowledge(Settings())


@functools.cache
def _templates() -> dict[str, dict[str, str]]:
    return {
        sid: {t.key: t.query for t in service.prefetch}
        for sid, service in build_services(knowledge()).items()
    }


def templates(service_id: str) -> dict[str, str]:
    """The prefetch templates the service advertises (key → relative URL)."""
    return dict(_templates()[service_id])


def all_prefetch(service_id: str, **values: Any) -> dict[str, Any]:
    """Every prefetch key of the service sent as ``null`` (no data), except ``values``."""
    out: dict[str, Any] = dict.fromkeys(_templates()[service_id])
    out.update(values)
    return out


def rf01_prefetch(**values: Any) -> dict[str, Any]:
    """Full patient-view prefetch: the RF-01 Conditions, ``null`` for every other key."""
    merged: dict[str, Any] = {"conditions": searchset(SPASM, INJURY)} | values
    return all_prefetch("muscle-spasm-patient-view", **merged)


def rule_codes(body: dict[str, Any]) -> list[str]:
    return [str(c["source"]["topic"]["code"]) for c in body["cards"]]


def cds_app(
    tmp_path: Path,
    *,
    now: datetime = DEFAULT_NOW,
    transport: httpx.AsyncBaseTransport | None = None,
    **settings: Any,
) -> FastAPI:
    """``tests.conftest.make_app`` (knowledge loaded once per session)."""
    return make_app(tmp_path, now=now, transport=transport, **settings)


Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class Ehr:
    """The EHR's FHIR server at ``http://ehr.test/fhir`` (and anything else the app calls).

    ``routes`` maps a relative URL (``Condition?patient=p1``; query compared as a multiset of
    decoded parameters) or an absolute URL to a JSON body, to an ``httpx.Response`` or to a
    handler (sync or async) returning one. Unknown URLs answer 404 with an OperationOutcome.
    """

    def __init__(self, routes: dict[str, Any] | None = None) -> None:
        self.routes: dict[str, Any] = dict(routes or {})
        self.requests: list[httpx.Request] = []

    @property
    def urls(self) -> list[str]:
        return [str(r.url) for r in self.requests]

    def relative(self) -> list[str]:
        """The requested URLs relative to the EHR base, decoded, sorted."""
        out = []
        for r in self.requests:
            url = str(r.url)
            if url.startswith(EHR + "/"):
                path = r.url.path[len("/fhir/") :]
                query = "&".join(f"{k}={v}" for k, v in r.url.params.multi_items())
                url = path + ("?" + query if query else "")
            out.append(url)
        return sorted(out)

    def _match(self, request: httpx.Request) -> Any:
        for key, value in self.routes.items():
            absolute = key.startswith(("http://", "https://"))
            target = httpx.URL(key if absolute else f"{EHR}/{key}")
            if (
                target.scheme == request.url.scheme
                and target.host == request.url.host
                and target.port == request.url.port
                and target.path == request.url.path
                and sorted(target.params.multi_items()) == sorted(request.url.params.multi_items())
            ):
                return value
        return None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        value = self._match(request)
        if value is None:
            return httpx.Response(
                404, json={"resourceType": "OperationOutcome", "issue": [{"code": "not-found"}]}
            )
        if isinstance(value, httpx.Response):
            return value
        if callable(value):
            result = value(request)
            if asyncio.iscoroutine(result):
                result = await result
            assert isinstance(result, httpx.Response)
            return result
        return httpx.Response(
            200, json=copy.deepcopy(value), headers={"content-type": "application/fhir+json"}
        )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def searchset(*resources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if resources:
        bundle["entry"] = [{"resource": copy.deepcopy(r)} for r in resources]
    bundle.update(extra)
    return bundle


# -- the RF-01 record (tests/scenarios/muscle-spasm-patient-view/rf-01-injury-condition-fires)

SPASM = {
    "resourceType": "Condition",
    "id": "c-spasm",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
            }
        ]
    },
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "45352006"}]},
    "subject": {"reference": "Patient/p1"},
    "onsetDateTime": "2026-11-28",
}
INJURY = {
    "resourceType": "Condition",
    "id": "c-injury",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "resolved",
            }
        ]
    },
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "90460009"}]},
    "subject": {"reference": "Patient/p1"},
    "onsetDateTime": "2026-11-10",
}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-05-01"}


def context(hook: str, **extra: Any) -> dict[str, Any]:
    """A minimal valid context for ``hook`` (one R4 draft MedicationRequest for order hooks)."""
    ctx: dict[str, Any] = {"userId": "Practitioner/example", "patientId": "p1"}
    if hook in ("order-select", "order-sign"):
        ctx["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft_order()}],
        }
    if hook == "order-select":
        ctx["selections"] = ["MedicationRequest/draft-1"]
    if hook == "encounter-start":
        ctx["encounterId"] = "e1"
    ctx.update(extra)
    return ctx


def draft_order(rid: str = "draft-1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "617318",
                    "display": "acetaminophen 500 MG Oral Tablet",
                }
            ]
        },
    }


def hook_request(
    service_id: str, *, prefetch: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    hook = SERVICES[service_id]
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),  # unique per invocation, as the spec requires
        "context": context(hook),
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    body.update(extra)
    return body


def outcome(response: Any, status: int) -> list[dict[str, Any]]:
    """Assert an OperationOutcome with ``status``; return its issues."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    issues = body["issue"]
    assert isinstance(issues, list) and issues
    for issue in issues:
        assert issue["severity"] in ("fatal", "error", "warning", "information")
        assert isinstance(issue["code"], str) and issue["code"]
    return list(issues)


def issue_text(response: Any) -> str:
    """Diagnostics and expressions of an OperationOutcome, joined (for ``in`` checks)."""
    parts = []
    for issue in response.json()["issue"]:
        parts.append(str(issue.get("diagnostics", "")))
        parts.extend(issue.get("expression", []))
    return " | ".join(parts)


def empty_values(value: Any, path: str = "$") -> list[str]:
    """Paths of ``null``, ``""``, ``[]`` or ``{}`` anywhere in ``value`` (STU2 §Use of JSON);
    the sanctioned empties ``cards: []`` and ``services: []`` at the top are not reported."""
    if path in ("$.cards", "$.services") and value == []:
        return []
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += empty_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += empty_values(item, f"{path}[{index}]")
    return found
