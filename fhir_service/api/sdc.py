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
The routes parse, call ``operations.populate``/``operations.extract`` and serialise.

* ``GET /forms/{id}``: the LHC-Forms page for a Questionnaire (``static/forms``), with the
  LHC-Forms assets served locally under ``/forms/lforms/`` (never a CDN; installed by
  ``scripts/browser-deps.sh``).

See README "Endpoints" and ``docs/authoring.md`` (the assessment Questionnaire).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, Response

from fhir_service.api.parameters import named, one, require_parameters, subject_reference, value_of
from fhir_service.api.responses import FhirResponse
from fhir_service.deps import JsonBodyDep, RuntimeDep
from fhir_service.engine.data.dataset import flatten
from fhir_service.engine.sdc.questionnaire_response import parse_response
from fhir_service.errors import InvalidRequest, NotFound
from fhir_service.operations.extract import ExtractRequest, extract_questionnaire_response
from fhir_service.operations.populate import PopulateRequest, populate_questionnaire

router = APIRouter(tags=["SDC"])

STATIC_FORMS = Path(__file__).resolve().parent.parent / "static" / "forms"
LFORMS_DIST = STATIC_FORMS / "node_modules" / "lforms" / "dist" / "lforms"
FORM_ASSETS = {"form.js": "text/javascript", "form.css": "text/css"}
QUESTIONNAIRE_PARAMS = ("questionnaire", "canonical", "questionnaireRef")


# --------------------------------------------------------------------------------------------
# $populate


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


def _questionnaire_param(params: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """``(canonical, reference)`` from ``questionnaire``/``canonical``/``questionnaireRef``."""
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
            return resource["url"] + (f"|{version}" if version else ""), None
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            return None, value["reference"]
        if isinstance(value, str) and value:
            return value, None
        raise InvalidRequest(
            f"parameter {name!r} must carry a canonical, a Reference or a Questionnaire",
            expression=[name],
        )
    return None, None


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


def populate_request(
    body: Any, query: Mapping[str, str], questionnaire_id: str | None
) -> PopulateRequest:
    """The ``$populate`` in-parameters of a GET (``body`` None) or a POSTed Parameters."""
    subject: dict[str, Any] | None = None
    canonical = reference = None
    resources: list[dict[str, Any]] = []
    if body is not None:
        params = require_parameters(body)
        param = one(params, "subject")
        if param is not None:
            subject = _reference(value_of(param), "subject")
        canonical, reference = _questionnaire_param(params)
        resources = _data(params)
    if subject is None and query.get("subject"):
        subject = _reference(query["subject"], "subject")
    if subject is None:
        raise InvalidRequest(
            "parameter 'subject' (a Reference) is required", expression=["subject"]
        )
    if canonical is None and reference is None:
        url = query.get("url") or query.get("questionnaire") or query.get("canonical")
        if url:
            version = query.get("version")
            canonical = url + (f"|{version}" if version and "|" not in url else "")
    return PopulateRequest(subject, questionnaire_id, canonical, reference, tuple(resources))


@router.get("/fhir/Questionnaire/$populate", response_class=FhirResponse)
@router.post("/fhir/Questionnaire/$populate", response_class=FhirResponse)
async def populate_by_canonical(
    request: Request, runtime: RuntimeDep, body: JsonBodyDep
) -> FhirResponse:
    """Type-level SDC ``$populate`` → Parameters {response, issues?}."""
    inputs = populate_request(body, request.query_params, None)
    return FhirResponse(await populate_questionnaire(runtime, inputs))


@router.get("/fhir/Questionnaire/{rid}/$populate", response_class=FhirResponse)
@router.post("/fhir/Questionnaire/{rid}/$populate", response_class=FhirResponse)
async def populate_instance(
    rid: str, request: Request, runtime: RuntimeDep, body: JsonBodyDep
) -> FhirResponse:
    """Instance-level SDC ``$populate`` → Parameters {response, issues?}."""
    inputs = populate_request(body, request.query_params, rid)
    return FhirResponse(await populate_questionnaire(runtime, inputs))


# --------------------------------------------------------------------------------------------
# $extract


def extract_request(body: Any) -> ExtractRequest:
    """The QuestionnaireResponse, raw or as ``Parameters.questionnaire-response`` (400 when
    neither, or not valid R4)."""
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
        return ExtractRequest(parse_response(resource))
    return ExtractRequest(parse_response(body))


@router.post("/fhir/QuestionnaireResponse/$extract", response_class=FhirResponse)
async def extract_response(runtime: RuntimeDep, body: JsonBodyDep) -> FhirResponse:
    """SDC ``$extract`` → the bare transaction Bundle of POST entries (not executed)."""
    return FhirResponse(await extract_questionnaire_response(runtime, extract_request(body)))


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
