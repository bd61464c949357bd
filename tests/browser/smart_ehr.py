"""A test EHR on loopback: a SMART App Launch 2.x authorization server built with ``authlib``, a
FHIR gateway that enforces its tokens in front of a real FHIR server (SEKMET), and a chart page
that calls the CDS service and shows its cards with their links (TEST infrastructure only).

* ``GET /ehr/chart/<patient>``: calls ``patient-view`` on the CDS service (``fhirServer`` = the
  gateway, ``fhirAuthorization`` = a token the EHR issues the service) and renders each card and
  its links; a ``smart`` link goes through ``/ehr/launch``.
* ``GET /ehr/launch?url=&appContext=&patient=``: EHR launch. Mints a ``launch`` id bound to the
  patient and the card's ``appContext``, then opens ``url?launch=<id>&iss=<gateway base>``.
* ``/auth/authorize``, ``/auth/token``: authlib's ``AuthorizationServer`` with the
  authorization code grant, PKCE required (``CodeChallenge(required=True)``), public clients
  (``token_endpoint_auth_method=none``). The token response carries SMART's launch context
  (``patient``, ``appContext``, ``need_patient_banner``). Standalone launch (scope
  ``launch/patient``, no ``launch``) shows a patient picker. Scopes listed in ``Ehr.denied`` are
  never granted (a "denied scope").
* ``/fhir/...``: ``.well-known/smart-configuration``; everything else needs a Bearer token of
  this server and a SMART v2 scope for the interaction (``.r``/``.s`` for read/search, ``.c``
  for create, per entry of a transaction), limited to the token's patient; then it is forwarded
  to SEKMET with its base rewritten to the gateway's. ``Ehr.fail_writes`` = a status makes every
  write answer that status (e.g. 401). CORS is open (bearer tokens, no cookies).
"""

from __future__ import annotations

import html
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Error, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, Response, redirect, request
from werkzeug.serving import make_server

from tests.integration._servers import free_port

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "authorization, content-type, accept, prefer, if-match",
    "Access-Control-Allow-Methods": "GET, POST, PUT, OPTIONS",
    "Access-Control-Expose-Headers": "location, etag",
}
FHIR_JSON = "application/fhir+json"
SCOPE_RE = r"^(patient|user|system)/([A-Za-z*]+)\.([a-z*]+)$"


@dataclass
class Client:
    """A registered public SMART client (authlib ``ClientMixin``)."""

    client_id: str
    redirect_uris: list[str]
    ehr: Ehr

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s not in self.ehr.denied)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, _client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, _endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    """An authorization code with its PKCE challenge and SMART launch context."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    context: dict[str, Any]
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

    def save_authorization_code(self, code: str, req: Any) -> None:
        ehr: Ehr = self.server.ehr
        data = req.payload.data
        context = dict(ehr.launches.pop(data.get("launch"), {})) if data.get("launch") else {}
        if "patient" not in context and req.user.get("patient"):
            context["patient"] = req.user["patient"]
        ehr.codes[code] = Code(
            code,
            req.client.client_id,
            req.payload.redirect_uri,
            req.scope,
            context,
            data.get("code_challenge"),
            data.get("code_challenge_method"),
        )

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        found: Code | None = self.server.ehr.codes.get(code)
        return found if found and found.client_id == client.client_id else None

    def delete_authorization_code(self, authorization_code: Code) -> None:
        self.server.ehr.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> dict[str, Any]:
        return {"id": "Practitioner/ehr-user", **authorization_code.context}


class SmartLaunchContext:
    """authlib grant extension: SMART's launch context in the token response."""

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_create_token_response", self.add)

    def add(self, grant: Any, result: tuple[int, dict[str, Any], Any]) -> None:
        _, token, _ = result
        context = grant.request.authorization_code.context
        token.update({k: v for k, v in context.items() if k in ("patient", "appContext")})
        token["need_patient_banner"] = True
        grant.server.ehr.tokens[token["access_token"]]["patient"] = context.get("patient")


@dataclass
class Ehr:
    """The running test EHR; tests change ``denied`` and ``fail_writes`` between steps."""

    base: str
    fhir_upstream: str
    cds_service_url: str
    denied: set[str] = field(default_factory=set)
    fail_writes: int | None = None
    launches: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, Code] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)
    requests: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def fhir_base(self) -> str:
        return f"{self.base}/fhir"

    def register(self, client_id: str, redirect_uri: str) -> None:
        self.clients[client_id] = Client(client_id, [redirect_uri], self)

    def issue_token(self, scope: str, patient: str) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = {"scope": scope, "patient": patient, "expires": time.time() + 300}
        return token


def _scopes(scope: str) -> list[tuple[str, str]]:
    import re

    out = []
    for s in scope.split():
        m = re.match(SCOPE_RE, s)
        if m:
            out.append((m.group(2), m.group(3)))
    return out


def _allowed(scope: str, rtype: str, interaction: str) -> bool:
    for stype, perms in _scopes(scope):
        if stype in (rtype, "*") and (perms == "*" or interaction in perms):
            return True
    return False


def _outcome(status: int, text: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "security", "diagnostics": text}],
    }
    return Response(json.dumps(body), status, {**CORS, "Content-Type": FHIR_JSON})


def _subject_ok(resource: dict[str, Any], patient: str) -> bool:
    if resource.get("resourceType") == "Patient":
        return resource.get("id") == patient
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
    return ref == f"Patient/{patient}"


def create_app(ehr: Ehr) -> Flask:
    app = Flask("smart_ehr")

    def save_token(token: dict[str, Any], _request: Any) -> None:
        expires = time.time() + int(token.get("expires_in", 3600))
        grant = {"scope": token.get("scope", ""), "patient": None, "expires": expires}
        ehr.tokens[token["access_token"]] = grant

    server = AuthorizationServer(app, query_client=ehr.clients.get, save_token=save_token)
    server.ehr = ehr  # type: ignore[attr-defined]
    server.register_grant(CodeGrant, [CodeChallenge(required=True), SmartLaunchContext()])
    http = httpx.Client(timeout=30, trust_env=False)

    @app.after_request
    def _cors(response: Response) -> Response:
        if request.path.startswith(("/auth/token", "/fhir")):
            response.headers.update(CORS)
        return response

    _auth_routes(app, ehr, server, http)
    _ehr_routes(app, ehr, http)
    return app


def _auth_routes(app: Flask, ehr: Ehr, server: AuthorizationServer, http: httpx.Client) -> None:
    @app.route("/auth/authorize")
    def authorize() -> Any:
        scope = request.args.get("scope", "").split()
        patient = request.args.get("patient_choice")
        if "launch/patient" in scope and not request.args.get("launch") and not patient:
            return _picker()
        user = {"patient": patient}
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        return server.create_authorization_response(grant_user=user, grant=grant)

    def _picker() -> str:
        status, bundle = _upstream_json(http, ehr, "Patient?_count=50")
        rows = []
        for entry in (bundle or {}).get("entry", []) if status == 200 else []:
            pid = entry["resource"]["id"]
            query = urlencode({**request.args, "patient_choice": pid})
            name = entry["resource"].get("name", [{}])[0].get("text", pid)
            rows.append(
                f'<li><a class="patient" href="/auth/authorize?{query}">{html.escape(name)}</a>'
            )
        return "<h1>Choose a patient</h1><ul>" + "".join(rows) + "</ul>"

    @app.route("/auth/token", methods=["POST", "OPTIONS"])
    def token() -> Any:
        if request.method == "OPTIONS":
            return Response("", 204)
        return server.create_token_response()

    @app.route("/fhir/.well-known/smart-configuration")
    def smart_configuration() -> Any:
        body = {
            "issuer": ehr.base,
            "authorization_endpoint": f"{ehr.base}/auth/authorize",
            "token_endpoint": f"{ehr.base}/auth/token",
            "token_endpoint_auth_methods_supported": ["none"],
            "grant_types_supported": ["authorization_code"],
            "scopes_supported": ["launch", "launch/patient", "patient/*.rs", "patient/*.c"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": [
                "launch-ehr",
                "launch-standalone",
                "client-public",
                "context-ehr-patient",
                "context-standalone-patient",
                "permission-patient",
                "permission-v2",
            ],
        }
        return Response(json.dumps(body), 200, {**CORS, "Content-Type": "application/json"})

    @app.route("/fhir", defaults={"path": ""}, methods=["GET", "POST", "PUT", "OPTIONS"])
    @app.route("/fhir/<path:path>", methods=["GET", "POST", "PUT", "OPTIONS"])
    def fhir(path: str) -> Any:
        if request.method == "OPTIONS":
            return Response("", 204, CORS)
        response = _gateway(ehr, http, path)
        ehr.requests.append((request.method, request.full_path, response.status_code))
        return response


def _ehr_routes(app: Flask, ehr: Ehr, http: httpx.Client) -> None:
    @app.route("/ehr/chart/<patient>")
    def chart(patient: str) -> str:
        token = ehr.issue_token("patient/*.rs", patient)
        call = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": ehr.fhir_base,
            "fhirAuthorization": {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.rs",
                "subject": "cds-service",
                "patient": patient,
            },
            "context": {"userId": "Practitioner/ehr-user", "patientId": patient},
        }
        answer = http.post(ehr.cds_service_url, json=call)
        cards = answer.json().get("cards", []) if answer.status_code == 200 else []
        parts = [
            f"<h1>Chart of {html.escape(patient)}</h1><p id='cds-status'>{answer.status_code}</p>"
        ]
        for card in cards:
            links = []
            for link in card.get("links", []):
                href = link["url"]
                if link["type"] == "smart":
                    query = {
                        "url": href,
                        "patient": patient,
                        "appContext": link.get("appContext", ""),
                    }
                    href = "/ehr/launch?" + urlencode(query)
                links.append(
                    f'<a class="link-{link["type"]}" href="{html.escape(href)}">'
                    f"{html.escape(link['label'])}</a>"
                )
            code = html.escape(card["source"].get("topic", {}).get("code", ""))
            summary = html.escape(card["summary"])
            parts.append(
                f'<div class="card" data-rule="{code}"><h3>{summary}</h3>{"".join(links)}</div>'
            )
        return "".join(parts)

    @app.route("/ehr/launch")
    def launch() -> Any:
        launch_id = secrets.token_urlsafe(12)
        context: dict[str, Any] = {"patient": request.args["patient"]}
        if request.args.get("appContext"):
            context["appContext"] = request.args["appContext"]
        ehr.launches[launch_id] = context
        target = request.args["url"]
        sep = "&" if "?" in target else "?"
        return redirect(target + sep + urlencode({"launch": launch_id, "iss": ehr.fhir_base}))


def _upstream_json(http: httpx.Client, ehr: Ehr, path: str) -> tuple[int, Any]:
    response = http.get(f"{ehr.fhir_upstream}/{path}", headers={"Accept": FHIR_JSON})
    return response.status_code, response.json() if response.content else None


def _authorize_call(ehr: Ehr, path: str) -> tuple[dict[str, Any] | None, Response | None]:
    header = request.headers.get("Authorization", "")
    grant = ehr.tokens.get(header[7:]) if header.lower().startswith("bearer ") else None
    if grant is None or grant["expires"] < time.time():
        return None, _outcome(401, "A valid access token is required")
    if ehr.fail_writes and request.method in ("POST", "PUT"):
        return None, _outcome(ehr.fail_writes, "The EHR refused the write")
    patient = grant["patient"]
    scope = grant["scope"]
    parts = [p for p in path.split("/") if p]
    if request.method == "GET":
        rtype = parts[0] if parts else ""
        interaction = "r" if len(parts) == 2 else "s"
        if not _allowed(scope, rtype, interaction):
            return None, _outcome(403, f"scope does not allow {interaction} on {rtype}")
        own = parts[1] == patient if rtype == "Patient" and len(parts) == 2 else True
        asked = request.args.get("patient") or request.args.get("subject") or ""
        if len(parts) == 1 and rtype != "Patient" and asked.removeprefix("Patient/") != patient:
            own = False
        if not own:
            return None, _outcome(403, "outside the patient in context")
        return grant, None
    body = request.get_json(force=True, silent=True) or {}
    resources = [body]
    if not parts and body.get("resourceType") == "Bundle":
        resources = [e.get("resource") or {} for e in body.get("entry", [])]
    for resource in resources:
        rtype = str(resource.get("resourceType"))
        if not _allowed(scope, rtype, "c"):
            return None, _outcome(403, f"scope does not allow creating {rtype}")
        if not _subject_ok(resource, patient):
            return None, _outcome(403, "outside the patient in context")
    return grant, None


def _gateway(ehr: Ehr, http: httpx.Client, path: str) -> Response:
    _, refused = _authorize_call(ehr, path)
    if refused is not None:
        return refused
    url = f"{ehr.fhir_upstream}/{path}" if path else ehr.fhir_upstream
    headers = {"Accept": FHIR_JSON}
    if request.method != "GET":
        headers["Content-Type"] = FHIR_JSON
    upstream = http.request(
        request.method,
        url,
        params=list(request.args.items(multi=True)),
        content=request.get_data() if request.method != "GET" else None,
        headers=headers,
    )
    body = upstream.content.replace(ehr.fhir_upstream.encode(), ehr.fhir_base.encode())
    out = Response(body, upstream.status_code, {"Content-Type": FHIR_JSON})
    if "location" in upstream.headers:
        out.headers["Location"] = upstream.headers["location"].replace(
            ehr.fhir_upstream, ehr.fhir_base
        )
    return out


@contextmanager
def smart_ehr(fhir_upstream: str, cds_service_url: str) -> Iterator[Ehr]:
    """The test EHR on a free loopback port (werkzeug, threaded), stopped on exit."""
    port = free_port()
    ehr = Ehr(f"http://127.0.0.1:{port}", fhir_upstream.rstrip("/"), cds_service_url)
    server = make_server("127.0.0.1", port, create_app(ehr), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ehr
    finally:
        server.shutdown()
        thread.join(timeout=10)
