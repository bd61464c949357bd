"""SDC operations and the assessment form page.

* ``GET|POST /fhir/Questionnaire/{id}/$populate`` and ``GET|POST /fhir/Questionnaire/$populate``
  (https://hl7.org/fhir/uv/sdc/OperationDefinition-Questionnaire-populate.html): the
  Questionnaire is the instance, or at type level ``questionnaire`` (``valueCanonical``/
  ``valueUri``/``valueString``, a ``valueReference``, or an inline Questionnaire resolved by its
  url), ``canonical`` (SDC 3.0), ``questionnaireRef`` (older SDC) or the query ``?url=``
  (``&version=``); an unknown one → 404. ``subject`` (Reference; ``?subject=Type/id`` on GET)
  is required (400). Patient data: Bundles (or single resources) in ``data`` and in the
  ``content`` part of every ``context`` parameter, whatever its ``name``. The answer is
  ``Parameters`` {``response``, ``issues`` when there are any}.
* ``POST /fhir/QuestionnaireResponse/$extract``
  (https://hl7.org/fhir/uv/sdc/OperationDefinition-QuestionnaireResponse-extract.html): the
  QuestionnaireResponse raw or as ``Parameters.questionnaire-response``; the answer is the bare
  transaction Bundle (not executed). A body that is not one of these, or a response that is
  not valid R4 → 400; a response for a questionnaire this service does not hold (any version
  of its url counts), invalid answers (SDC validation) or resources that cannot be extracted
  validly → 422.
* ``GET /forms/{id}``: the LHC-Forms page for a Questionnaire (``static/forms``), with the
  LHC-Forms assets served locally under ``/forms/lforms/`` (never a CDN; installed by
  ``scripts/browser-deps.sh``).

See ``shared/contract.md`` ("FHIR R4 REST") and ``clinical-rules.md`` §4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, Response

from fhir_service.api.body import read_json
from fhir_service.api.parameters import named, one, require_parameters, subject_reference, value_of
from fhir_service.api.responses import FhirResponse
from fhir_service.deps import RuntimeDep
from fhir_service.engine.data import flatten
from fhir_service.engine.questionnaire_extract import extract_with_issues
from fhir_service.engine.questionnaire_populate import populate
from fhir_service.engine.questionnaire_response import (
    parse_response,
    require_questionnaire,
    validate_response,
)
from fhir_service.errors import (
    BusinessRuleError,
    InvalidRequest,
    Issue,
    NotFound,
    PayloadTooLarge,
    operation_outcome,
)
from fhir_service.knowledge.loader import Artifact
from fhir_service.runtime import Runtime

router = APIRouter(tags=["SDC"])

STATIC_FORMS = Path(__file__).resolve().parent.parent / "static" / "forms"
LFORMS_DIST = STATIC_FORMS / "node_modules" / "lforms" / "dist" / "lforms"
FORM_ASSETS = {"form.js": "text/javascript", "form.css": "text/css"}
QUESTIONNAIRE_PARAMS = ("questionnaire", "canonical", "questionnaireRef")


# --------------------------------------------------------------------------------------------
# $populate


@dataclass
class PopulateInputs:
    """The ``$populate`` in-parameters this service uses."""

    subject: dict[str, Any] | None = None
    canonical: str | None = None
    reference: str | None = None
    resources: list[dict[str, Any]] = field(default_factory=list)


def _reference(value: Any, name: str) -> dict[str, Any]:
    if isinstance(value, dict) and (
        isinstance(value.get("reference"), str) or isinstance(value.get("identifier"), dict)
    ):
        return dict(value)
    if isinstance(value, str) and value:
        return {"reference": subject_reference(value)}
    raise InvalidRequest(
        f"parameter {name!r} must be a Reference (valueReference) or a 'Type/id' string",
        expression=[name],
    )


def _questionnaire_param(params: list[dict[str, Any]], inputs: PopulateInputs) -> None:
    for name in QUESTIONNAIRE_PARAMS:
        param = one(params, name)
        if param is None:
            continue
        resource = param.get("resource")
        value = value_of(param)
        if isinstance(resource, dict):
            if resource.get("resourceType") != "Questionnaire" or not resource.get("url"):
                raise InvalidRequest(
                    f"parameter {name!r} must carry a Questionnaire with a url", expression=[name]
                )
            version = resource.get("version")
            inputs.canonical = resource["url"] + (f"|{version}" if version else "")
        elif isinstance(value, dict) and isinstance(value.get("reference"), str):
            inputs.reference = value["reference"]
        elif isinstance(value, str) and value:
            inputs.canonical = value
        else:
            raise InvalidRequest(
                f"parameter {name!r} must carry a canonical, a Reference or a Questionnaire",
                expression=[name],
            )
        return


def _data(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sources: list[Any] = []
    for index, param in enumerate(named(params, "data")):
        if not isinstance(param.get("resource"), dict):
            raise InvalidRequest(
                "parameter 'data' must carry a Bundle", expression=[f"data[{index}]"]
            )
        sources.append(param["resource"])
    for index, param in enumerate(named(params, "context")):
        parts = param.get("part") or []
        if not isinstance(parts, list):
            raise InvalidRequest(
                "parameter 'context' must have parts", expression=[f"context[{index}]"]
            )
        for part in parts:
            if isinstance(part, dict) and part.get("name") == "content":
                sources.append(part.get("resource"))
    return list(flatten(sources))


async def _populate_inputs(request: Request, runtime: Runtime) -> PopulateInputs:
    inputs = PopulateInputs()
    query = request.query_params
    if request.method == "POST":
        settings = runtime.settings
        body = await read_json(
            request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
        )
        params = require_parameters(body)
        subject = one(params, "subject")
        if subject is not None:
            inputs.subject = _reference(value_of(subject), "subject")
        _questionnaire_param(params, inputs)
        inputs.resources = _data(params)
    if inputs.subject is None and query.get("subject"):
        inputs.subject = _reference(query["subject"], "subject")
    if inputs.subject is None:
        raise InvalidRequest(
            "parameter 'subject' (a Reference) is required", expression=["subject"]
        )
    if inputs.canonical is None and inputs.reference is None:
        url = query.get("url") or query.get("questionnaire") or query.get("canonical")
        if url:
            version = query.get("version")
            inputs.canonical = url + (f"|{version}" if version and "|" not in url else "")
    if len(inputs.resources) > runtime.settings.max_resources:
        raise PayloadTooLarge(f"more than {runtime.settings.max_resources} resources in data")
    return inputs


def _questionnaire(runtime: Runtime, rid: str | None, inputs: PopulateInputs) -> Artifact:
    knowledge = runtime.knowledge
    if rid is not None:
        found = knowledge.read("Questionnaire", rid)
        if found is None:
            raise NotFound(f"Questionnaire/{rid} is not known")
        return found
    if inputs.reference is not None:
        parts = inputs.reference.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "Questionnaire" and "://" not in inputs.reference:
            found = knowledge.read("Questionnaire", parts[-1])
        else:
            found = knowledge.by_canonical(inputs.reference, "Questionnaire")
        if found is None:
            raise NotFound(f"Questionnaire {inputs.reference} is not known")
        return found
    if not inputs.canonical:
        raise InvalidRequest(
            "type-level $populate needs the questionnaire: 'questionnaire', 'canonical' or ?url=",
            expression=["questionnaire"],
        )
    found = knowledge.by_canonical(inputs.canonical, "Questionnaire")
    if found is None:
        raise NotFound(f"Questionnaire {inputs.canonical} is not known")
    return found


def _run_populate(runtime: Runtime, artifact: Artifact, inputs: PopulateInputs) -> dict[str, Any]:
    compiled = runtime.knowledge.questionnaires[artifact.id]  # compiled once, at load
    assert inputs.subject is not None
    response, issues = populate(
        artifact.resource, compiled, inputs.subject, inputs.resources, runtime.now()
    )
    parameters: list[dict[str, Any]] = [{"name": "response", "resource": response}]
    if issues:
        parameters.append({"name": "issues", "resource": operation_outcome(issues)})
    return {"resourceType": "Parameters", "parameter": parameters}


async def _populate(request: Request, runtime: Runtime, rid: str | None) -> FhirResponse:
    inputs = await _populate_inputs(request, runtime)
    artifact = _questionnaire(runtime, rid, inputs)
    out = await anyio.to_thread.run_sync(
        _run_populate, runtime, artifact, inputs, limiter=runtime.limiter
    )
    return FhirResponse(out)


@router.get("/fhir/Questionnaire/$populate", response_class=FhirResponse)
@router.post("/fhir/Questionnaire/$populate", response_class=FhirResponse)
async def populate_by_canonical(request: Request, runtime: RuntimeDep) -> FhirResponse:
    """Type-level SDC ``$populate`` → Parameters {response, issues?}."""
    return await _populate(request, runtime, None)


@router.get("/fhir/Questionnaire/{rid}/$populate", response_class=FhirResponse)
@router.post("/fhir/Questionnaire/{rid}/$populate", response_class=FhirResponse)
async def populate_instance(rid: str, request: Request, runtime: RuntimeDep) -> FhirResponse:
    """Instance-level SDC ``$populate`` → Parameters {response, issues?}."""
    return await _populate(request, runtime, rid)


# --------------------------------------------------------------------------------------------
# $extract


def _response_of(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        params = require_parameters(body)
        param = one(params, "questionnaire-response")
        if param is None:
            raise InvalidRequest(
                "parameter 'questionnaire-response' is required",
                expression=["questionnaire-response"],
            )
        resource = param.get("resource")
        if not isinstance(resource, dict):
            raise InvalidRequest(
                "parameter 'questionnaire-response' must carry a QuestionnaireResponse",
                expression=["questionnaire-response"],
            )
        return parse_response(resource)
    return parse_response(body)


def _answered_questionnaire(runtime: Runtime, qr: dict[str, Any]) -> Artifact:
    canonical = qr.get("questionnaire")
    found = None
    if isinstance(canonical, str) and canonical:
        knowledge = runtime.knowledge
        found = knowledge.by_canonical(canonical, "Questionnaire") or knowledge.by_canonical(
            canonical.partition("|")[0], "Questionnaire"
        )
    if found is None:
        raise BusinessRuleError(
            f"QuestionnaireResponse.questionnaire {canonical!r} is not a questionnaire of this "
            "service",
            expression=("QuestionnaireResponse.questionnaire",),
        )
    require_questionnaire(qr, found.resource)
    return found


def _run_extract(runtime: Runtime, artifact: Artifact, qr: dict[str, Any]) -> dict[str, Any]:
    problems = [i for i in validate_response(artifact.resource, qr) if i.severity == "error"]
    if problems:
        raise BusinessRuleError(issues=problems)
    bundle, issues = extract_with_issues(
        artifact.resource, qr, runtime.now(), runtime.new_id, runtime.knowledge.compiler
    )
    errors: list[Issue] = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise BusinessRuleError(issues=errors)
    return bundle


@router.post("/fhir/QuestionnaireResponse/$extract", response_class=FhirResponse)
async def extract_response(request: Request, runtime: RuntimeDep) -> FhirResponse:
    """SDC ``$extract`` → the bare transaction Bundle of POST entries (not executed)."""
    settings = runtime.settings
    body = await read_json(
        request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
    )
    qr = _response_of(body)
    artifact = _answered_questionnaire(runtime, qr)
    out = await anyio.to_thread.run_sync(
        _run_extract, runtime, artifact, qr, limiter=runtime.limiter
    )
    return FhirResponse(out)


# --------------------------------------------------------------------------------------------
# The form page


@router.get("/forms/lforms/{path:path}", include_in_schema=False)
async def lforms_asset(path: str) -> Response:
    """LHC-Forms build files (``node_modules/lforms/dist/lforms``), served locally."""
    root = LFORMS_DIST.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound(f"/forms/lforms/{path} not found (run scripts/browser-deps.sh)")
    return FileResponse(target, headers={"Cache-Control": "public, max-age=86400"})


@router.get("/forms/static/{name}", include_in_schema=False)
async def form_asset(name: str) -> Response:
    """The page's own script and style sheet."""
    if name not in FORM_ASSETS:
        raise NotFound(f"/forms/static/{name} not found")
    return FileResponse(STATIC_FORMS / name, media_type=FORM_ASSETS[name])


@router.get("/forms/{rid}", response_class=HTMLResponse, tags=["Forms"])
async def form_page(rid: str, runtime: RuntimeDep) -> HTMLResponse:
    """The LHC-Forms page where a clinician fills ``Questionnaire/{rid}``."""
    if runtime.knowledge.read("Questionnaire", rid) is None:
        raise NotFound(f"Questionnaire/{rid} is not known")
    html = (STATIC_FORMS / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html.replace("{{questionnaire_id}}", rid))
