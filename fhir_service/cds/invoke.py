"""One CDS Hooks service call, from the parsed request body to the cards (no HTTP here).

Steps (CDS Hooks 2.0 "Calling a CDS Service", https://cds-hooks.hl7.org/2.0/#calling-a-cds-service):

1. check the request envelope (``hook``, ``hookInstance``, ``context`` and the hook's required
   context fields; ``fhirAuthorization`` needs ``fhirServer``), strip ``Patient/`` from
   ``patientId``;
2. complete the prefetch (``prefetch.complete_prefetch``: 412 naming the keys on failure);
3. index the data: the record from prefetch, the hook's ``draftOrders`` as drafts (non-R4
   orders such as DSTU2 ``MedicationOrder`` are ignored with a warning); on ``order-select``
   only the drafts named in ``selections`` trigger order rules;
4. apply every rule of the service in a worker thread (bounded concurrency) so the event loop
   never blocks;
5. map each rule's RequestGroup to cards, sorted critical → warning → info.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from fhir_service.canonical import CANONICAL_BASE
from fhir_service.cds.cards import CardContext, build_cards, sort_cards
from fhir_service.cds.prefetch import PrefetchRequest, complete_prefetch
from fhir_service.cds.smart_link import add_smart_links
from fhir_service.engine.apply.evaluation import CallInput
from fhir_service.engine.data.dataset import (
    DataSet,
    build_data_set,
    bundle_problem,
    flatten,
    reference_of,
)
from fhir_service.engine.data.patient_data import check_resource_count
from fhir_service.errors import InvalidRequest, IssueLog
from fhir_service.knowledge.services import CdsService
from fhir_service.observability import tracing
from fhir_service.runtime import Runtime

log = logging.getLogger(__name__)

#: Seconds from the start of a request by which its prefetch must be complete (the contract's
#: ceiling for a 412 is 10 s; time spent before the fetches, e.g. on a JWKS fetch, counts).
CALL_BUDGET_SECONDS = 9.0
#: The fetches always get at least this long, however late they start.
MIN_FETCH_SECONDS = 0.5

#: Required context fields per hook (CDS Hooks Library 1.0.1, https://cds-hooks.org/hooks/).
REQUIRED_CONTEXT = {
    "patient-view": ("userId", "patientId"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
    "encounter-start": ("userId", "patientId", "encounterId"),
}


@dataclass(frozen=True)
class HookCall:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    prefetch: dict[str, Any]
    fhir_server: str | None
    token: str | None

    @property
    def patient_id(self) -> str:
        return str(self.context["patientId"])


def _require_string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(
            f"'{name}' is required and must be a non-empty string", expression=[name]
        )
    return value


def _check_prefetch_values(prefetch: Mapping[str, Any], service: CdsService) -> None:
    """A value sent for one of the service's keys is a FHIR resource or ``null`` (no data);
    keys the service did not ask for are ignored whatever they hold."""
    for template in service.prefetch:
        value = prefetch.get(template.key)
        if value is None:
            continue
        problem = bundle_problem(value, f"prefetch.{template.key}")
        if problem:
            raise InvalidRequest(f"{problem} (or null)", expression=[f"prefetch.{template.key}"])


def _checked_context(context: dict[str, Any], hook: str) -> dict[str, Any]:
    """The hook's required context fields are there and well-typed; ``Patient/`` is stripped."""
    for field in REQUIRED_CONTEXT.get(hook, ()):
        if context.get(field) in (None, "", [], {}):
            raise InvalidRequest(
                f"context.{field} is required for {hook}", expression=[f"context.{field}"]
            )
    context = dict(context)
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id.removeprefix("Patient/").strip():
        raise InvalidRequest(
            "context.patientId must be a non-empty string", expression=["context.patientId"]
        )
    context["patientId"] = patient_id.removeprefix("Patient/")
    if "selections" in context and not isinstance(context["selections"], list):
        raise InvalidRequest(
            "context.selections must be an array", expression=["context.selections"]
        )
    if "draftOrders" in context:
        problem = bundle_problem(context["draftOrders"], "context.draftOrders")
        if problem:
            raise InvalidRequest(problem, expression=["context.draftOrders"])
    return context


def parse_hook_call(body: Any, service: CdsService) -> HookCall:
    """Validate the envelope leniently (unknown members ignored); raise 400 on what is required."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    hook = _require_string(body, "hook")
    hook_instance = _require_string(body, "hookInstance")
    context = body.get("context")
    if not isinstance(context, dict):
        raise InvalidRequest("'context' is required and must be an object", expression=["context"])
    if hook != service.hook:
        raise InvalidRequest(
            f"service {service.id} answers hook {service.hook!r}, not {hook!r}", expression=["hook"]
        )
    context = _checked_context(context, hook)
    fhir_server = body.get("fhirServer")
    if fhir_server is not None and not isinstance(fhir_server, str):
        raise InvalidRequest("'fhirServer' must be a URL string", expression=["fhirServer"])
    auth = body.get("fhirAuthorization")
    token = None
    if auth is not None:
        if not fhir_server:
            raise InvalidRequest(
                "'fhirAuthorization' requires 'fhirServer' (cds-r-1)", expression=["fhirServer"]
            )
        if not isinstance(auth, dict) or not isinstance(auth.get("access_token"), str):
            raise InvalidRequest(
                "fhirAuthorization.access_token must be a string",
                expression=["fhirAuthorization.access_token"],
            )
        token = auth["access_token"]
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise InvalidRequest("'prefetch' must be an object", expression=["prefetch"])
    _check_prefetch_values(prefetch or {}, service)
    return HookCall(hook, hook_instance, context, prefetch or {}, fhir_server or None, token)


def triggering_drafts(call: HookCall, data: DataSet) -> list[dict[str, Any]] | None:
    if call.hook != "order-select":
        return None
    selected = {
        s.removeprefix("/") for s in call.context.get("selections") or () if isinstance(s, str)
    }
    return [d for d in data.drafts if reference_of(d) in selected]


def build_call_data(call: HookCall, prefetched: Mapping[str, Any], max_resources: int) -> DataSet:
    drafts = call.context.get("draftOrders")
    data = build_data_set(
        list(prefetched.values()), [drafts] if drafts else [], patient_id=call.patient_id
    )
    check_resource_count(data.size, max_resources, "the call")
    if data.foreign:
        log.warning(
            "left out resources about another patient",
            extra={"hookInstance": call.hook_instance, "count": data.foreign},
        )
    if data.ignored:
        log.warning(
            "ignored non-R4 resources",
            extra={"hookInstance": call.hook_instance, "types": sorted(set(data.ignored))},
        )
    return data


#: Namespace of card and suggestion uuids (uuid5 over service id, hookInstance and position).
CARD_UUID_NAMESPACE = uuid.UUID("5b0c2a35-7d1e-4f0a-9a63-2f1f3c9b8e41")


def call_uuids(service_id: str, hook_instance: str) -> Callable[[], str]:
    """Card/suggestion uuids for one call: unique per hookInstance, and the same when a client
    retries the same hookInstance, so feedback on either response joins to the same cards
    (https://cds-hooks.hl7.org/2.0/#feedback)."""
    counter = itertools.count(1)
    return lambda: str(
        uuid.uuid5(CARD_UUID_NAMESPACE, f"{service_id}|{hook_instance}|{next(counter)}")
    )


def evaluate_service(
    runtime: Runtime, service: CdsService, call: HookCall, data: DataSet
) -> list[dict[str, Any]]:
    """Apply the service's rules and build the cards (CPU-bound: run in a worker thread)."""
    now = runtime.now()
    issues = IssueLog()
    triggers = triggering_drafts(call, data)
    scope = runtime.engine.new_scope(CallInput(data, now, call.patient_id, triggers), issues)
    subject = f"Patient/{call.patient_id}"
    cards: list[dict[str, Any]] = []
    drafts = frozenset(ref for d in data.drafts if (ref := reference_of(d)) is not None)
    card_uuids = call_uuids(service.id, call.hook_instance)
    with tracing.span("cds.evaluate"):
        for rule in service.rules:
            with tracing.span("cds.rule", {"cds.rule.id": rule.id}):
                result = runtime.engine.apply(
                    rule.resource, scope, subject, runtime.new_id, hook=service.hook
                )
                resources = {f"#{r['id']}": r for r in result.resources if r.get("id")}
                ctx = CardContext(card_uuids, runtime.fhir_base, CANONICAL_BASE, resources, drafts)
                made = build_cards(result.request_group, ctx, str(rule.resource.get("title")))
                add_smart_links(
                    made,
                    str(rule.resource.get("url")),
                    runtime.assessments,
                    runtime.settings.smart_launch_url,
                    call.hook_instance,
                )
                tracing.set_attributes({"cds.rule.cards": len(made)})
            cards += made
    for issue in issues.issues:
        log.warning(
            "rule evaluation issue",
            extra={
                "hookInstance": call.hook_instance,
                "service": service.id,
                "where": ",".join(issue.expression),
                "diagnostics": issue.diagnostics,
            },
        )
    return sort_cards(cards)


def prefetch_deadline(runtime: Runtime, started: float | None) -> float:
    """Seconds the prefetch may take: the configured deadline, cut so that the whole request
    (``started`` is its ``time.monotonic()``) stays within ``CALL_BUDGET_SECONDS``."""
    deadline = runtime.settings.prefetch_deadline_seconds
    if started is None:
        return deadline
    remaining = CALL_BUDGET_SECONDS - (time.monotonic() - started)
    return min(deadline, max(remaining, MIN_FETCH_SECONDS))


async def invoke(
    runtime: Runtime, service: CdsService, body: Any, *, started: float | None = None
) -> list[dict[str, Any]]:
    """Serve one call: envelope → prefetch → data → rules (in a thread) → cards.

    ``started`` (``time.monotonic()`` at the request's arrival) bounds the prefetch so that a
    412 is answered within the contract's 10 s even after a slow JWT key fetch.
    """
    call = parse_hook_call(body, service)
    fetcher = runtime.fetcher if call.fhir_server else None
    prefetched = await complete_prefetch(
        service.prefetch,
        PrefetchRequest(call.context, call.prefetch, call.fhir_server, call.token),
        fetcher,
        prefetch_deadline(runtime, started),
    )
    data = build_call_data(call, prefetched, runtime.settings.max_resources)
    return await anyio.to_thread.run_sync(
        evaluate_service, runtime, service, call, data, limiter=runtime.limiter
    )


def count_resources(values: Any) -> int:
    return sum(1 for _ in flatten(values))
