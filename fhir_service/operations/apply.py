"""``PlanDefinition/$apply`` and ``ActivityDefinition/$apply``, without HTTP.

Specs: https://hl7.org/fhir/R4/plandefinition-operation-apply.html and
https://hl7.org/fhir/R4/activitydefinition-operation-apply.html. ``$apply`` evaluates every
action whatever hook its trigger names; resources in ``data`` with ``status`` ``draft`` are the
orders being decided.

Steps:

1. check the ``parameters`` overrides against the Library ``in`` parameters (400);
2. find the definition: by id, else by ``url`` (and ``version``) (404);
3. in a worker thread: check the ``data`` Bundles (size, R4 validity: 413/400), index the
   patient's data (``engine.data.dataset``; resources about another patient left out), apply;
4. answer a CarePlan with a contained RequestGroup, or the ActivityDefinition's request
   resource (issues in a contained OperationOutcome named by ``cqf-messages``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from fhir_service.engine.apply.activity_definition import apply_activity, has_element
from fhir_service.engine.apply.care_plan import CQF_MESSAGES, care_plan
from fhir_service.engine.apply.evaluation import CallInput, check_parameter_value, parameter_value
from fhir_service.engine.data.dataset import NON_R4_TYPES, build_data_set
from fhir_service.engine.data.patient_data import check_resource_count, patient_id_of
from fhir_service.errors import InvalidRequest, IssueLog, NotFound, operation_outcome
from fhir_service.fhir import validate_resource
from fhir_service.knowledge.loader import Artifact
from fhir_service.runtime import Runtime


@dataclass(frozen=True)
class ApplyRequest:
    """The ``$apply`` in-parameters this service uses.

    Attributes:
        subject: ``Type/id`` of the subject (``Patient/123``).
        definition_id: The instance's id (instance-level call), else None.
        url: ``url`` of the definition (type-level call).
        version: ``version`` of the definition (with ``url``).
        encounter: ``encounter`` reference, copied onto the result.
        practitioner: ``practitioner`` reference, copied onto the result.
        data: The ``data`` Bundles (patient data), unchecked.
        parameters: The ``parameters`` overrides: ``Parameters.parameter`` entries.
    """

    subject: str
    definition_id: str | None = None
    url: str | None = None
    version: str | None = None
    encounter: str | None = None
    practitioner: str | None = None
    data: tuple[dict[str, Any], ...] = ()
    parameters: tuple[dict[str, Any], ...] = field(default=())


def check_data_bundle(bundle: Mapping[str, Any]) -> None:
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


def library_parameters(runtime: Runtime, parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
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


def find_definition(runtime: Runtime, request: ApplyRequest, resource_type: str) -> Artifact:
    """The definition to apply: by id, else by canonical ``url|version`` (404 when unknown)."""
    if request.definition_id is not None:
        artifact = runtime.knowledge.read(resource_type, request.definition_id)
        if artifact is None:
            raise NotFound(f"{resource_type}/{request.definition_id} is not known")
        return artifact
    if not request.url:
        raise InvalidRequest("type-level $apply needs the 'url' parameter", expression=["url"])
    canonical = request.url + (f"|{request.version}" if request.version else "")
    artifact = runtime.knowledge.by_canonical(canonical, resource_type)
    if artifact is None:
        raise NotFound(f"no {resource_type} with url {canonical}")
    return artifact


def _call(runtime: Runtime, request: ApplyRequest, overrides: dict[str, Any]) -> CallInput:
    limit = runtime.settings.max_resources
    for bundle in request.data:
        entries = bundle.get("entry")
        if isinstance(entries, list):
            check_resource_count(len(entries), limit, "data")
        check_data_bundle(bundle)
    patient_id = patient_id_of(request.subject)
    data = build_data_set(list(request.data), drafts_from_status=True, patient_id=patient_id)
    check_resource_count(data.size, limit, "data")
    return CallInput(data, runtime.now(), patient_id, None, overrides)


def _apply_plan(
    runtime: Runtime, plan: Artifact, request: ApplyRequest, overrides: dict[str, Any]
) -> dict[str, Any]:
    call = _call(runtime, request, overrides)
    issues = IssueLog()
    scope = runtime.engine.new_scope(call, issues)
    result = runtime.engine.apply(plan.resource, scope, request.subject, runtime.new_id)
    result.issues.issues[:] = issues.issues
    return care_plan(
        result,
        runtime.new_id(),
        runtime.new_id(),
        encounter=request.encounter,
        practitioner=request.practitioner,
    )


def _apply_activity(
    runtime: Runtime, ad: Artifact, request: ApplyRequest, overrides: dict[str, Any]
) -> dict[str, Any]:
    call = _call(runtime, request, overrides)
    issues = IssueLog()
    scope = runtime.engine.new_scope(call, issues)
    resource = apply_activity(
        ad.resource,
        request.subject,
        scope,
        runtime.engine.compiler,
        runtime.new_id,
        f"ActivityDefinition/{ad.id}",
    )
    if request.encounter and has_element(resource["resourceType"], "encounter"):
        resource.setdefault("encounter", {"reference": request.encounter})
    if issues:  # as in the CarePlan: a contained OperationOutcome named by cqf-messages
        outcome_id = runtime.new_id()
        resource.setdefault("contained", []).append(operation_outcome(issues.issues, outcome_id))
        resource.setdefault("extension", []).append(
            {"url": CQF_MESSAGES, "valueReference": {"reference": f"#{outcome_id}"}}
        )
    return resource


Applier = Callable[[Runtime, Artifact, ApplyRequest, dict[str, Any]], dict[str, Any]]


async def _run(
    runtime: Runtime, request: ApplyRequest, resource_type: str, apply: Applier
) -> dict[str, Any]:
    overrides = library_parameters(runtime, request.parameters)
    definition = find_definition(runtime, request, resource_type)
    return await anyio.to_thread.run_sync(
        apply, runtime, definition, request, overrides, limiter=runtime.limiter
    )


async def apply_plan_definition(runtime: Runtime, request: ApplyRequest) -> dict[str, Any]:
    """``PlanDefinition/$apply``: an R4 CarePlan with a contained RequestGroup."""
    return await _run(runtime, request, "PlanDefinition", _apply_plan)


async def apply_activity_definition(runtime: Runtime, request: ApplyRequest) -> dict[str, Any]:
    """``ActivityDefinition/$apply``: the request resource (``draft``/``proposal``)."""
    return await _run(runtime, request, "ActivityDefinition", _apply_activity)
