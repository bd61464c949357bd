"""The assessment form as a SMART on FHIR app (SMART App Launch 2.x; docs/smart-launch.md).

* ``GET /forms/{id}/launch``: the app's launch URL. An EHR opens it with ``launch`` and ``iss``
  (EHR launch); a person opens it with ``?iss=<FHIR base>`` (standalone launch). The page hands
  both to the ``fhirclient`` library (npm ``fhirclient``, served from this service under
  ``/forms/fhirclient/``, never a CDN), which discovers the EHR's endpoints
  (``.well-known/smart-configuration``) and redirects to its authorization endpoint
  (authorization code with PKCE S256).
* ``GET /forms/{id}/smart-configuration``: the app's registration as this deployment publishes
  it (settings ``FHIR_SERVICE_SMART_*``): client id, scopes, redirect URI (default: the form
  page, ``<public base>/forms/{id}``) and launch URL. Nothing in it is specific to one EHR.
* The redirect URI is the form page itself (``GET /forms/{id}``, ``api/sdc.py``): ``smart.js``
  completes the code exchange there, pre-fills through ``$populate`` from the EHR's data and
  writes the answers back.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from fhir_service.api.sdc import STATIC_FORMS
from fhir_service.deps import RuntimeDep
from fhir_service.errors import NotFound

router = APIRouter(tags=["Forms"])

FHIRCLIENT_BUILD = STATIC_FORMS / "node_modules" / "fhirclient" / "build"
FHIRCLIENT_FILES = {"fhir-client.min.js": "text/javascript", "fhir-client.min.js.map": None}
SMART_ASSETS = {"smart.js": "text/javascript", "launch.js": "text/javascript"}


def _questionnaire_known(runtime: RuntimeDep, rid: str) -> None:
    if runtime.knowledge.read("Questionnaire", rid) is None:
        raise NotFound(f"Questionnaire/{rid} is not known")


@router.get("/forms/fhirclient/{name}", include_in_schema=False)
async def fhirclient_asset(name: str) -> Response:
    """The ``fhirclient`` browser build (``node_modules/fhirclient/build``), served locally."""
    target: Path = FHIRCLIENT_BUILD / name
    if name not in FHIRCLIENT_FILES or not target.is_file():
        raise NotFound(f"/forms/fhirclient/{name} not found (run scripts/browser-deps.sh)")
    return FileResponse(
        target,
        media_type=FHIRCLIENT_FILES[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )


@router.get("/forms/smart/{name}", include_in_schema=False)
async def smart_asset(name: str) -> Response:
    """The SMART app's own scripts."""
    if name not in SMART_ASSETS:
        raise NotFound(f"/forms/smart/{name} not found")
    return FileResponse(STATIC_FORMS / name, media_type=SMART_ASSETS[name])


@router.get("/forms/{rid}/smart-configuration", tags=["Forms"])
async def smart_configuration(rid: str, runtime: RuntimeDep) -> JSONResponse:
    """The app's SMART registration values (client id, scopes, redirect URI, launch URL)."""
    _questionnaire_known(runtime, rid)
    settings = runtime.settings
    page = f"{settings.public_base_url}/forms/{rid}"
    body = {
        "clientId": settings.smart_client_id,
        "scope": settings.smart_scopes,
        "redirectUri": settings.smart_redirect_uri or page,
        "launchUrl": settings.smart_launch_url or f"{page}/launch",
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/forms/{rid}/launch", response_class=HTMLResponse, tags=["Forms"])
async def smart_launch(rid: str, runtime: RuntimeDep) -> HTMLResponse:
    """SMART App Launch: EHR launch (``launch`` + ``iss``) or standalone launch (``iss``)."""
    _questionnaire_known(runtime, rid)
    html = (STATIC_FORMS / "launch.html").read_text(encoding="utf-8")
    return HTMLResponse(html.replace("{{questionnaire_id}}", rid))
