"""FHIR operations on the knowledge: ``PlanDefinition/$apply``, ``ActivityDefinition/$apply``,
``PlanDefinition/$package``: the routes parse, call ``operations.*`` and serialise.

Specs: https://hl7.org/fhir/R4/plandefinition-operation-apply.html,
https://hl7.org/fhir/R4/activitydefinition-operation-apply.html, CRMI ``$package``
(https://hl7.org/fhir/uv/crmi/). In-parameters come from the query string (GET) or a
``Parameters`` body (POST).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request

from fhir_service.api.parameters import (
    one,
    require_parameters,
    resource_value,
    string_value,
    subject_reference,
)
from fhir_service.api.responses import FhirResponse
from fhir_service.deps import JsonBodyDep, RuntimeDep
from fhir_service.operations.apply import (
    ApplyRequest,
    apply_activity_definition,
    apply_plan_definition,
)
from fhir_service.operations.package import package_plan_definition

router = APIRouter(prefix="/fhir", tags=["Operations"])


def apply_request(body: Any, query: Mapping[str, str], definition_id: str | None) -> ApplyRequest:
    """The ``$apply`` in-parameters of a GET (``body`` None) or a POSTed Parameters."""
    if body is None:
        return ApplyRequest(
            subject=subject_reference(query.get("subject")),
            definition_id=definition_id,
            url=query.get("url"),
            version=query.get("version"),
            encounter=query.get("encounter"),
            practitioner=query.get("practitioner"),
        )
    params = require_parameters(body)
    subject = subject_reference(string_value(one(params, "subject"), "subject"))
    encounter = string_value(one(params, "encounter"), "encounter")
    practitioner = string_value(one(params, "practitioner"), "practitioner")
    url = string_value(one(params, "url"), "url") or query.get("url")
    version = string_value(one(params, "version"), "version") or query.get("version")
    data = resource_value(one(params, "data"), "data", "Bundle")
    overrides = resource_value(one(params, "parameters"), "parameters", "Parameters")
    return ApplyRequest(
        subject=subject,
        definition_id=definition_id,
        url=url,
        version=version,
        encounter=encounter,
        practitioner=practitioner,
        data=(data,) if data is not None else (),  # checked in the handler's worker thread
        parameters=tuple(require_parameters(overrides)) if overrides is not None else (),
    )


@router.get("/PlanDefinition/$apply", response_class=FhirResponse)
@router.post("/PlanDefinition/$apply", response_class=FhirResponse)
async def plan_apply_by_url(
    request: Request, runtime: RuntimeDep, body: JsonBodyDep
) -> FhirResponse:
    """Type-level ``$apply`` by canonical ``url`` (and optional ``version``)."""
    inputs = apply_request(body, request.query_params, None)
    return FhirResponse(await apply_plan_definition(runtime, inputs))


@router.get("/PlanDefinition/{rid}/$apply", response_class=FhirResponse)
@router.post("/PlanDefinition/{rid}/$apply", response_class=FhirResponse)
async def plan_apply(
    rid: str, request: Request, runtime: RuntimeDep, body: JsonBodyDep
) -> FhirResponse:
    """Instance-level ``$apply``: an R4 CarePlan with a contained RequestGroup."""
    inputs = apply_request(body, request.query_params, rid)
    return FhirResponse(await apply_plan_definition(runtime, inputs))


@router.get("/ActivityDefinition/{rid}/$apply", response_class=FhirResponse)
@router.post("/ActivityDefinition/{rid}/$apply", response_class=FhirResponse)
async def activity_apply(
    rid: str, request: Request, runtime: RuntimeDep, body: JsonBodyDep
) -> FhirResponse:
    """``ActivityDefinition/$apply``: the request resource (``draft``/``proposal``)."""
    inputs = apply_request(body, request.query_params, rid)
    return FhirResponse(await apply_activity_definition(runtime, inputs))


@router.get("/PlanDefinition/{rid}/$package", response_class=FhirResponse)
@router.post("/PlanDefinition/{rid}/$package", response_class=FhirResponse)
async def plan_package(rid: str, runtime: RuntimeDep) -> FhirResponse:
    """CRMI ``$package``: a transaction Bundle loadable into another FHIR server."""
    return FhirResponse(package_plan_definition(runtime, rid))
