"""FHIR R4 REST face of the knowledge repository: metadata, read, search-type.

Spec: https://hl7.org/fhir/R4/http.html (read, search), https://hl7.org/fhir/R4/search.html
(``_count``/``_offset`` paging with ``link`` next/previous, ``_summary``, ``_elements``; unknown
parameters are ignored unless ``Prefer: handling=strict``), contract "FHIR R4 REST".
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request

from fhir_service.api.responses import FhirResponse
from fhir_service.deps import RuntimeDep
from fhir_service.errors import InvalidRequest, NotAcceptable, NotFound
from fhir_service.fhir import FHIR_VERSION, model_class
from fhir_service.knowledge.loader import KNOWLEDGE_TYPES
from fhir_service.runtime import Runtime

router = APIRouter(prefix="/fhir", tags=["FHIR"])

SEARCH_PARAMS = ("_id", "url", "version", "name", "title", "status")
CONTROL_PARAMS = ("_count", "_offset", "_summary", "_elements", "_format", "_pretty")
STRING_SEARCH_PARAMS = ("name", "title")
STRING_MODIFIERS = ("exact", "contains")
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
DEFAULT_COUNT = 50
MAX_COUNT = 500


JSON_FORMATS = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir"}
)


def check_format(request: Request) -> None:
    """406 for a ``_format`` or an ``Accept`` header that admits no JSON (R4 http.html §2.21)."""
    fmt = request.query_params.get("_format")
    if fmt:
        # an unencoded '+' in a query string arrives as a space: application/fhir json
        media = fmt.split(";", 1)[0].strip().lower().replace(" ", "+")
        if media not in JSON_FORMATS:
            raise NotAcceptable(f"_format {fmt!r} is not supported; this server speaks FHIR JSON")
        return
    accept = request.headers.get("accept", "")
    if accept and not _accepts_json(accept):
        raise NotAcceptable(f"Accept {accept!r} admits no JSON; this server speaks FHIR JSON")


def _accepts_json(accept: str) -> bool:
    for item in accept.split(","):
        media, *params = (part.strip().lower() for part in item.split(";"))
        quality = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            if float(quality) <= 0:
                continue  # q=0: explicitly not acceptable
        except ValueError:
            continue
        if media in ("*/*", "application/*") or media in JSON_FORMATS or media.endswith("+json"):
            return True
    return False


def capability_statement(runtime: Runtime) -> dict[str, Any]:
    """A truthful CapabilityStatement (contract: read/search-type on the six types)."""
    base = runtime.fhir_base
    search_params = [
        {"name": "_id", "type": "token"},
        {"name": "url", "type": "uri"},
        {"name": "version", "type": "token"},
        {"name": "name", "type": "string"},
        {"name": "title", "type": "string"},
        {"name": "status", "type": "token"},
    ]
    operations: dict[str, list[dict[str, str]]] = {
        "PlanDefinition": [
            {
                "name": "apply",
                "definition": "http://hl7.org/fhir/OperationDefinition/PlanDefinition-apply",
            },
            {
                "name": "package",
                "definition": "http://hl7.org/fhir/uv/crmi/OperationDefinition/crmi-package",
            },
        ],
        "ActivityDefinition": [
            {
                "name": "apply",
                "definition": "http://hl7.org/fhir/OperationDefinition/ActivityDefinition-apply",
            },
        ],
        "ValueSet": [
            {
                "name": "expand",
                "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand",
            },
            {
                "name": "validate-code",
                "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
            },
        ],
        "Questionnaire": [
            {
                "name": "populate",
                "definition": "http://hl7.org/fhir/uv/sdc/OperationDefinition/Questionnaire-populate",
            },
        ],
    }
    resources: list[dict[str, Any]] = []
    for rtype in KNOWLEDGE_TYPES:
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": search_params,
        }
        if rtype in operations:
            entry["operation"] = operations[rtype]
        resources.append(entry)
    resources.append(
        {
            "type": "QuestionnaireResponse",
            "operation": [
                {
                    "name": "extract",
                    "definition": "http://hl7.org/fhir/uv/sdc/OperationDefinition/QuestionnaireResponse-extract",
                }
            ],
        }
    )
    all_ops = [op for ops in operations.values() for op in ops] + resources[-1]["operation"]
    return {
        "resourceType": "CapabilityStatement",
        "id": "fhir-service",
        "url": f"{base}/metadata",
        "name": "MuscleSpasmGuidelineService",
        "title": "Muscle spasm guideline service",
        "status": "active",
        "date": "2026-12-01",
        "publisher": "Muscle Spasm Guideline Service",
        "kind": "instance",
        "software": {"name": "fhir-service", "version": _version()},
        "implementation": {"description": "Muscle spasm clinical guideline service", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{"mode": "server", "resource": resources, "operation": all_ops}],
    }


def _version() -> str:
    from fhir_service import __version__

    return __version__


@router.get("/metadata", response_class=FhirResponse)
async def metadata(request: Request, runtime: RuntimeDep) -> FhirResponse:
    check_format(request)
    return FhirResponse(capability_statement(runtime))


def _known_type(resource_type: str) -> None:
    if resource_type not in KNOWLEDGE_TYPES:
        raise NotFound(f"resource type {resource_type!r} is not served here")


def _strict(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return "handling=strict" in prefer.replace(" ", "").lower()


def _int_param(request: Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise InvalidRequest(f"{name} must be a non-negative integer", expression=[name])
    value = int(raw)
    return min(value, maximum) if maximum is not None else value


@cache
def _summary_elements(resource_type: str) -> frozenset[str]:
    """The elements ``_summary=true`` keeps: the R4B model's summary elements."""
    return frozenset(model_class(resource_type).summary_elements_sequence()) | {"resourceType"}


@cache
def _mandatory_elements(resource_type: str) -> frozenset[str]:
    """Top-level mandatory elements (kept by ``_elements`` and ``_summary=text``)."""
    cls = model_class(resource_type)
    out = {"resourceType", "id", "meta"}
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("element_required") or info.is_required():
            out.add(info.alias or name)
    return frozenset(out)


def _shape(resource: dict[str, Any], summary: str | None, elements: list[str]) -> dict[str, Any]:
    """Apply ``_summary``/``_elements`` (R4 search.html §3.1.1.5.8-9); subsets are tagged."""
    rtype = str(resource.get("resourceType"))
    if summary == "true":
        keep = _summary_elements(rtype)
    elif summary == "text":
        keep = _mandatory_elements(rtype) | {"text"}
    elif summary == "data":
        keep = frozenset(k for k in resource if k != "text")
    elif elements:
        keep = _mandatory_elements(rtype) | set(elements)
    else:
        return resource
    kept = copy.deepcopy({k: v for k, v in resource.items() if k in keep})
    meta = kept.setdefault("meta", {})
    meta.setdefault("tag", []).append(SUBSETTED)
    return kept


def _search_params(request: Request) -> dict[str, list[str]]:
    """The search parameters of the query (R4 search.html §3.1.1.4-5).

    Unknown parameters are ignored, or refused with ``Prefer: handling=strict``; a modifier
    this server does not support is always refused (ignoring it would change the result);
    empty values are ignored.
    """
    params: dict[str, list[str]] = {}
    for name in request.query_params:
        base_name, _, modifier = name.partition(":")
        if base_name in SEARCH_PARAMS:
            if modifier and (
                base_name not in STRING_SEARCH_PARAMS or modifier not in STRING_MODIFIERS
            ):
                raise InvalidRequest(
                    f"modifier :{modifier} is not supported on {base_name!r}", expression=[name]
                )
            values = [v for v in request.query_params.getlist(name) if v]
            if values:
                params[name] = values
        elif name not in CONTROL_PARAMS and _strict(request):
            raise InvalidRequest(f"unknown search parameter {name!r}", expression=[name])
    return params


@router.get("/{resource_type}", response_class=FhirResponse)
async def search(resource_type: str, request: Request, runtime: RuntimeDep) -> FhirResponse:
    """search-type: a searchset Bundle with ``total``, ``fullUrl`` and paging links."""
    check_format(request)
    _known_type(resource_type)
    params = _search_params(request)
    count = _int_param(request, "_count", DEFAULT_COUNT, MAX_COUNT)
    offset = _int_param(request, "_offset", 0)
    summary = request.query_params.get("_summary")
    if summary not in (None, "true", "false", "count", "data", "text"):
        raise InvalidRequest(
            "_summary must be true, false, count, data or text", expression=["_summary"]
        )
    elements = [e for e in request.query_params.get("_elements", "").split(",") if e]
    matches = runtime.knowledge.search(resource_type, params)
    base = runtime.fhir_base
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": runtime.new_id(),
        "meta": {"lastUpdated": runtime.now().isoformat(timespec="seconds")},
        "type": "searchset",
        "total": len(matches),
    }
    query = [(k, v) for k, values in params.items() for v in values]
    for key in ("_summary", "_elements"):
        if request.query_params.get(key):
            query.append((key, request.query_params[key]))

    def page_url(at: int) -> str:
        return f"{base}/{resource_type}?" + urlencode(
            [*query, ("_count", str(count)), ("_offset", str(at))]
        )

    links = [{"relation": "self", "url": page_url(offset)}]
    if summary != "count" and count > 0:  # _count=0: the total only
        if offset + count < len(matches):
            links.append({"relation": "next", "url": page_url(offset + count)})
        if offset > 0:
            links.append({"relation": "previous", "url": page_url(max(0, offset - count))})
        page = matches[offset : offset + count]
        if page:
            bundle["entry"] = [
                {
                    "fullUrl": f"{base}/{a.resource_type}/{a.id}",
                    "resource": _shape(a.resource, summary, elements),
                    "search": {"mode": "match"},
                }
                for a in page
            ]
    bundle["link"] = links
    return FhirResponse(bundle)


@router.get("/{resource_type}/{rid}", response_class=FhirResponse)
async def read(resource_type: str, rid: str, request: Request, runtime: RuntimeDep) -> FhirResponse:
    """read: the artifact as loaded, 404 OperationOutcome when unknown."""
    check_format(request)
    _known_type(resource_type)
    artifact = runtime.knowledge.read(resource_type, rid)
    if artifact is None:
        raise NotFound(f"{resource_type}/{rid} is not known")
    summary = request.query_params.get("_summary")
    elements = [e for e in request.query_params.get("_elements", "").split(",") if e]
    return FhirResponse(_shape(artifact.resource, summary, elements))
