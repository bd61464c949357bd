"""FHIR operations on the knowledge: ``PlanDefinition/$apply``, ``ActivityDefinition/$apply``,
``PlanDefinition/$package``.

Specs: https://hl7.org/fhir/R4/plandefinition-operation-apply.html,
https://hl7.org/fhir/R4/activitydefinition-operation-apply.html, CRMI ``$package``
(clinical-reasoning.md §1.7). ``$apply`` evaluates every action whatever hook its trigger names;
resources in ``data`` with ``status`` ``draft`` are the orders being decided. ``$package``
returns a ``transaction`` Bundle of PUTs (the artifact and everything it references, found by
canonical), so it loads into any FHIR server as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request

from fhir_service.api.body import read_json
from fhir_service.api.parameters import (
    one,
    require_parameters,
    resource_value,
    string_value,
    subject_reference,
)
from fhir_service.api.responses import FhirResponse
from fhir_service.deps import RuntimeDep
from fhir_service.engine.activity_definition import apply_activity, has_element
from fhir_service.engine.care_plan import CQF_MESSAGES, care_plan
from fhir_service.engine.data import NON_R4_TYPES, build_data_set
from fhir_service.engine.evaluation import CallInput, check_parameter_value, parameter_value
from fhir_service.errors import (
    InvalidRequest,
    IssueLog,
    NotFound,
    PayloadTooLarge,
    operation_outcome,
)
from fhir_service.fhir import validate_resource
from fhir_service.knowledge.loader import Artifact
from fhir_service.runtime import CANONICAL_BASE, Runtime

router = APIRouter(prefix="/fhir", tags=["Operations"])
CANONICAL_RE = re.compile(re.escape(CANONICAL_BASE) + r"/([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


class ApplyInputs:
    """The ``$apply`` in-parameters, from the query string (GET) or a Parameters body (POST)."""

    def __init__(self) -> None:
        self.subject: str = ""
        self.encounter: str | None = None
        self.practitioner: str | None = None
        self.data: list[Any] = []
        self.parameters: dict[str, Any] = {}
        self.url: str | None = None
        self.version: str | None = None


async def _inputs(request: Request, runtime: Runtime) -> ApplyInputs:
    inputs = ApplyInputs()
    if request.method == "GET":
        query = request.query_params
        inputs.subject = subject_reference(query.get("subject"))
        inputs.encounter = query.get("encounter")
        inputs.practitioner = query.get("practitioner")
        inputs.url, inputs.version = query.get("url"), query.get("version")
        return inputs
    settings = runtime.settings
    body = await read_json(
        request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
    )
    params = require_parameters(body)
    inputs.subject = subject_reference(string_value(one(params, "subject"), "subject"))
    inputs.encounter = string_value(one(params, "encounter"), "encounter")
    inputs.practitioner = string_value(one(params, "practitioner"), "practitioner")
    query = request.query_params
    inputs.url = string_value(one(params, "url"), "url") or query.get("url")
    inputs.version = string_value(one(params, "version"), "version") or query.get("version")
    data = resource_value(one(params, "data"), "data", "Bundle")
    if data is not None:
        inputs.data = [data]  # validated in the worker thread (``_call``): CPU-bound
    overrides = resource_value(one(params, "parameters"), "parameters", "Parameters")
    if overrides is not None:
        inputs.parameters = library_parameters(runtime, require_parameters(overrides))
    return inputs


def check_data_bundle(bundle: dict[str, Any]) -> None:
    """400 unless every resource of the ``data`` Bundle parses as FHIR R4.

    Resources of non-R4 types (e.g. DSTU2 ``MedicationOrder``) are let through: the data set
    ignores them, as on the CDS Hooks side.
    """
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidRequest("data.entry must be an array", expression=["data.entry"])
    for index, entry in enumerate(entries):
        where = f"data.entry[{index}]"
        if not isinstance(entry, dict):
            raise InvalidRequest(f"{where} must be an object", expression=[where])
        resource = entry.get("resource")
        if resource is None:
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise InvalidRequest(
                f"{where}.resource must be a FHIR resource", expression=[f"{where}.resource"]
            )
        if resource["resourceType"] in NON_R4_TYPES:
            continue
        try:
            validate_resource(resource)
        except ValueError as exc:
            raise InvalidRequest(
                f"{where}.resource is not a valid R4 {resource['resourceType']}: {exc}",
                expression=[f"{where}.resource"],
            ) from None


def library_parameters(runtime: Runtime, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``parameters`` overrides: Library ``in`` parameters, each of its declared type."""
    out: dict[str, Any] = {}
    types = runtime.engine.parameter_types
    for part in parts:
        name = part["name"]
        where = [f"parameters.{name}"]
        if name not in types:
            raise InvalidRequest(f"unknown library parameter {name!r}", expression=where)
        key = next((k for k in part if k.startswith("value")), None)
        if key is None:
            raise InvalidRequest(f"library parameter {name!r} needs a value", expression=where)
        problem = check_parameter_value(types[name], key, part[key])
        if problem:
            raise InvalidRequest(f"library parameter {name!r}: {problem}", expression=where)
        if name in out:
            raise InvalidRequest(f"library parameter {name!r} given twice", expression=where)
        out[name] = parameter_value(key, part[key])
    return out


def _plan(runtime: Runtime, rid: str | None, inputs: ApplyInputs, rtype: str) -> Artifact:
    if rid is not None:
        artifact = runtime.knowledge.read(rtype, rid)
        if artifact is None:
            raise NotFound(f"{rtype}/{rid} is not known")
        return artifact
    if not inputs.url:
        raise InvalidRequest("type-level $apply needs the 'url' parameter", expression=["url"])
    canonical = inputs.url + (f"|{inputs.version}" if inputs.version else "")
    artifact = runtime.knowledge.by_canonical(canonical, rtype)
    if artifact is None:
        raise NotFound(f"no {rtype} with url {canonical}")
    return artifact


def _call(runtime: Runtime, inputs: ApplyInputs) -> CallInput:
    limit = runtime.settings.max_resources
    for bundle in inputs.data:
        entries = bundle.get("entry")
        if isinstance(entries, list) and len(entries) > limit:
            raise PayloadTooLarge(f"more than {limit} resources in data")
        check_data_bundle(bundle)
    patient_id = inputs.subject.split("/", 1)[1] if inputs.subject.startswith("Patient/") else None
    data = build_data_set(inputs.data, drafts_from_status=True, patient_id=patient_id)
    if data.size > limit:
        raise PayloadTooLarge(f"more than {limit} resources in data")
    return CallInput(data, runtime.now(), patient_id, None, inputs.parameters)


def _apply_plan(runtime: Runtime, plan: Artifact, inputs: ApplyInputs) -> dict[str, Any]:
    call = _call(runtime, inputs)
    issues = IssueLog()
    scope = runtime.engine.new_scope(call, issues)
    result = runtime.engine.apply(plan.resource, scope, inputs.subject, runtime.new_id)
    result.issues.issues[:] = issues.issues
    return care_plan(
        result,
        runtime.new_id(),
        runtime.new_id(),
        encounter=inputs.encounter,
        practitioner=inputs.practitioner,
    )


async def _run_apply(
    request: Request,
    runtime: Runtime,
    rid: str | None,
    resource_type: str,
    apply: Callable[[Runtime, Artifact, ApplyInputs], dict[str, Any]],
) -> FhirResponse:
    """Parse the inputs, find the definition, apply it in a worker thread, answer FHIR JSON."""
    inputs = await _inputs(request, runtime)
    definition = _plan(runtime, rid, inputs, resource_type)
    out = await anyio.to_thread.run_sync(
        apply, runtime, definition, inputs, limiter=runtime.limiter
    )
    return FhirResponse(out)


@router.get("/PlanDefinition/$apply", response_class=FhirResponse)
@router.post("/PlanDefinition/$apply", response_class=FhirResponse)
async def plan_apply_by_url(request: Request, runtime: RuntimeDep) -> FhirResponse:
    """Type-level ``$apply`` by canonical ``url`` (and optional ``version``)."""
    return await _run_apply(request, runtime, None, "PlanDefinition", _apply_plan)


@router.get("/PlanDefinition/{rid}/$apply", response_class=FhirResponse)
@router.post("/PlanDefinition/{rid}/$apply", response_class=FhirResponse)
async def plan_apply(rid: str, request: Request, runtime: RuntimeDep) -> FhirResponse:
    """Instance-level ``$apply``: an R4 CarePlan with a contained RequestGroup."""
    return await _run_apply(request, runtime, rid, "PlanDefinition", _apply_plan)


def _apply_activity(runtime: Runtime, ad: Artifact, inputs: ApplyInputs) -> dict[str, Any]:
    call = _call(runtime, inputs)
    issues = IssueLog()
    scope = runtime.engine.new_scope(call, issues)
    resource = apply_activity(
        ad.resource,
        inputs.subject,
        scope,
        runtime.engine.compiler,
        runtime.new_id,
        f"ActivityDefinition/{ad.id}",
    )
    if inputs.encounter and has_element(resource["resourceType"], "encounter"):
        resource.setdefault("encounter", {"reference": inputs.encounter})
    if issues:  # as in the CarePlan: a contained OperationOutcome named by cqf-messages
        outcome_id = runtime.new_id()
        resource.setdefault("contained", []).append(operation_outcome(issues.issues, outcome_id))
        resource.setdefault("extension", []).append(
            {"url": CQF_MESSAGES, "valueReference": {"reference": f"#{outcome_id}"}}
        )
    return resource


@router.get("/ActivityDefinition/{rid}/$apply", response_class=FhirResponse)
@router.post("/ActivityDefinition/{rid}/$apply", response_class=FhirResponse)
async def activity_apply(rid: str, request: Request, runtime: RuntimeDep) -> FhirResponse:
    """``ActivityDefinition/$apply``: the request resource (``draft``/``proposal``)."""
    return await _run_apply(request, runtime, rid, "ActivityDefinition", _apply_activity)


def package(runtime: Runtime, root: Artifact) -> dict[str, Any]:
    """The artifact and the closure of the artifacts it names by canonical."""
    seen: dict[tuple[str, str], Artifact] = {}
    pending = [root]
    while pending:
        art = pending.pop()
        key = (art.resource_type, art.id)
        if key in seen:
            continue
        seen[key] = art
        for rtype, rid in CANONICAL_RE.findall(json.dumps(art.resource)):
            found = runtime.knowledge.read(rtype, rid)
            if found is not None:
                pending.append(found)
    entries = [
        {
            "fullUrl": f"{runtime.fhir_base}/{a.resource_type}/{a.id}",
            "resource": a.resource,
            "request": {"method": "PUT", "url": f"{a.resource_type}/{a.id}"},
        }
        for a in sorted(
            seen.values(),
            key=lambda a: (a is not root, a.resource_type, a.id),
        )
    ]
    return {
        "resourceType": "Bundle",
        "id": runtime.new_id(),
        "type": "transaction",
        "entry": entries,
    }


@router.get("/PlanDefinition/{rid}/$package", response_class=FhirResponse)
@router.post("/PlanDefinition/{rid}/$package", response_class=FhirResponse)
async def plan_package(rid: str, runtime: RuntimeDep) -> FhirResponse:
    """CRMI ``$package``: a transaction Bundle loadable into another FHIR server."""
    artifact = runtime.knowledge.read("PlanDefinition", rid)
    if artifact is None:
        raise NotFound(f"PlanDefinition/{rid} is not known")
    return FhirResponse(package(runtime, artifact))
