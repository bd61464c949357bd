"""CDS Hooks 2.0 endpoints: discovery, service calls, feedback, analytics.

Spec: https://cds-hooks.hl7.org/2.0/ (discovery, calling a service, feedback, security); status
codes: README "Endpoints". Routers only parse, call and serialize.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from fhir_service.api.responses import JsonResponse
from fhir_service.cds.feedback import parse_feedback
from fhir_service.cds.invoke import invoke
from fhir_service.clock import system_clock
from fhir_service.deps import ArrivalDep, JsonBodyDep, RuntimeDep, authenticate
from fhir_service.errors import NotFound
from fhir_service.knowledge.services import CdsService
from fhir_service.observability import tracing
from fhir_service.observability.app import record_cards, record_feedback
from fhir_service.runtime import Runtime
from fhir_service.store.records import IssuedCard

#: Every CDS Hooks route authenticates the client first (``deps.authenticate``).
router = APIRouter(tags=["CDS Hooks"], dependencies=[Depends(authenticate)])
log = logging.getLogger(__name__)


def cds_service(service_id: str, runtime: RuntimeDep) -> CdsService:
    """The service a path names (404 when unknown), resolved before the body is read."""
    service = runtime.services.get(service_id)
    if service is None:
        raise NotFound(f"no CDS service {service_id!r}")
    return service


ServiceDep = Annotated[CdsService, Depends(cds_service)]


@router.get("/cds-services", response_class=JsonResponse)
@router.get("/cds-services/", response_class=JsonResponse, include_in_schema=False)
async def discovery(runtime: RuntimeDep) -> JsonResponse:
    """Discovery: one entry per service, generated from the PlanDefinitions (serialised once)."""
    return JsonResponse(runtime.discovery_json)


@router.post("/cds-services/{service_id}", response_class=JsonResponse)
async def call_service(
    request: Request,
    runtime: RuntimeDep,
    started: ArrivalDep,
    service: ServiceDep,
    body: JsonBodyDep,
) -> JsonResponse:
    """A hook call: 200 with cards (``{"cards": []}`` when none), 400/404/412/415 otherwise."""
    with tracing.span("cds.hook", {"cds.service": service.id, "cds.hook": service.hook}):
        cards = await invoke(runtime, service, body, started=started)
        record_cards(request, service.id, cards)
    # Recorded after the answer is sent: a slow or locked store never delays the cards.
    remember = BackgroundTask(_remember, runtime, service, body, cards)
    return JsonResponse({"cards": cards}, background=remember)


async def _remember(
    runtime: Runtime, service: CdsService, body: dict[str, Any], cards: list[dict[str, Any]]
) -> None:
    """Record issued card uuids so feedback can be joined to its rule; never fails the call."""
    if not cards:
        return
    issued = [
        IssuedCard(
            card_uuid=c["uuid"],
            rule_id=str(c["source"].get("topic", {}).get("code", "")),
            indicator=c["indicator"],
            suggestion_uuids=tuple(s["uuid"] for s in c.get("suggestions", ())),
        )
        for c in cards
    ]
    try:
        await run_in_threadpool(
            runtime.store.record_cards, service.id, body["hookInstance"], issued, system_clock()
        )
    except Exception as exc:  # the cards are still right; feedback for them will be unmatched
        log.error("could not record issued cards: %s", type(exc).__name__)


@router.post("/cds-services/{service_id}/feedback", response_class=JsonResponse)
async def feedback(
    request: Request, runtime: RuntimeDep, service: ServiceDep, body: JsonBodyDep
) -> JsonResponse:
    """Feedback (cds-fb-1..3): 200 when valid (idempotent), 400 otherwise, 503 if not stored."""
    items = parse_feedback(body)
    result = await run_in_threadpool(
        runtime.store.record_feedback, service.id, items, system_clock()
    )
    record_feedback(request, service.id, result.recorded)
    return JsonResponse(
        {"stored": result.stored, "duplicates": result.duplicates, "unmatched": result.unmatched}
    )


@router.get("/cds-services/{service_id}/analytics", response_class=JsonResponse)
async def analytics(runtime: RuntimeDep, service: ServiceDep) -> JsonResponse:
    """Per rule: cards issued, accepted, overridden (with reasons). Read-only."""
    return JsonResponse(await run_in_threadpool(runtime.store.analytics, service.id))
