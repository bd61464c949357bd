"""CORS on every ``/cds-services*`` answer and the last-resort 500: contract "CORS",
https://cds-hooks.hl7.org/2.0/#cross-origin-resource-sharing and #trusting-cds-clients
(preflights without auth; errors carry CORS headers too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fhir_service.api import cds_hooks
from tests.api.test_cds_hooks_support import (
    PV,
    Ehr,
    cds_app,
    hook_request,
    outcome,
    rf01_prefetch,
)

ORIGIN = "https://sandbox.cds-hooks.org"
PATHS = ["/cds-services", "/cds-services/", PV, PV + "/feedback"]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(cds_app(tmp_path, transport=Ehr().transport())) as test_client:
        yield test_client


@pytest.fixture
def jwt_client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(cds_app(tmp_path, auth="jwt")) as test_client:
        yield test_client


def allowed_origin(response: Any, origin: str | None) -> None:
    value = response.headers.get("access-control-allow-origin")
    assert value in ("*", origin), (response.status_code, dict(response.headers))


def listed(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(",") if part.strip()}


# -- preflight ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("auth", ["off", "jwt"])
def test_preflight_is_2xx_without_auth(
    client: TestClient, jwt_client: TestClient, path: str, auth: str
) -> None:
    app_client = jwt_client if auth == "jwt" else client
    response = app_client.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert 200 <= response.status_code < 300, response.text
    allowed_origin(response, ORIGIN)
    assert {"get", "post", "options"} <= listed(response.headers["access-control-allow-methods"])
    headers = listed(response.headers["access-control-allow-headers"])
    assert {"authorization", "content-type"} <= headers
    assert "*" not in headers  # named explicitly (a wildcard does not cover Authorization)


def test_preflight_for_get_without_origin_header(jwt_client: TestClient) -> None:
    response = jwt_client.options(
        "/cds-services",
        headers={
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert 200 <= response.status_code < 300
    allowed_origin(response, None)


# -- every status carries Access-Control-Allow-Origin -------------------------------------------


def _requests() -> dict[str, tuple[int, str, str, dict[str, Any]]]:
    ok = hook_request("muscle-spasm-patient-view", prefetch=rf01_prefetch())
    no_data = hook_request("muscle-spasm-patient-view", prefetch={})
    return {
        "discovery-200": (200, "GET", "/cds-services", {}),
        "call-200": (200, "POST", PV, {"json": ok}),
        "feedback-200": (200, "POST", PV + "/feedback", {"json": {"feedback": []}}),
        "analytics-200": (200, "GET", PV + "/analytics", {}),
        "call-400": (400, "POST", PV, {"json": {"hook": "patient-view"}}),
        "feedback-400": (400, "POST", PV + "/feedback", {"json": {"feedback": {}}}),
        "call-404": (404, "POST", "/cds-services/nope", {"json": ok}),
        "path-404": (404, "GET", "/cds-services/a/b/c", {}),
        "method-405": (405, "GET", PV, {}),
        "call-412": (412, "POST", PV, {"json": no_data}),
        "call-413": (413, "POST", PV, {"json": ok | {"pad": "x" * 6000}}),
        "call-415": (
            415,
            "POST",
            PV,
            {"content": json.dumps(ok), "headers": {"Content-Type": "text/plain"}},
        ),
    }


REQUESTS = sorted(_requests())


@pytest.mark.parametrize("case", REQUESTS)
@pytest.mark.parametrize("origin", [ORIGIN, None])
def test_every_answer_carries_allow_origin(tmp_path: Path, case: str, origin: str | None) -> None:
    status, method, path, kwargs = _requests()[case]
    headers = dict(kwargs.pop("headers", {}))
    if origin:
        headers["Origin"] = origin
    app = cds_app(tmp_path, transport=Ehr().transport(), max_body_bytes=4096)
    with TestClient(app) as client:
        response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    allowed_origin(response, origin)
    if status >= 400:
        outcome(response, status)


@pytest.mark.parametrize("origin", [ORIGIN, None])
def test_401_carries_allow_origin(jwt_client: TestClient, origin: str | None) -> None:
    headers = {"Origin": origin} if origin else {}
    for method, path in (("GET", "/cds-services"), ("POST", PV), ("POST", PV + "/feedback")):
        response = jwt_client.request(method, path, headers=headers, json={})
        assert response.status_code == 401
        allowed_origin(response, origin)


def test_503_carries_allow_origin(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    app = cds_app(tmp_path, database_url=f"sqlite:///{blocker / 'sub' / 'db.sqlite'}")
    item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-12-01T12:00:00Z"}
    with TestClient(app) as client:
        response = client.post(
            PV + "/feedback", json={"feedback": [item]}, headers={"Origin": ORIGIN}
        )
    outcome(response, 503)
    allowed_origin(response, ORIGIN)


# -- the last-resort 500 ------------------------------------------------------------------------

SECRET = "SECRET-DETAIL /srv/app/fhir_service/x.py line 42"


def _boom(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(SECRET)


@pytest.mark.parametrize("origin", [ORIGIN, None])
@pytest.mark.parametrize(
    ("target", "method", "path"),
    [
        ("invoke", "POST", PV),
        ("parse_feedback", "POST", PV + "/feedback"),
    ],
)
def test_unhandled_error_is_a_500_outcome_with_cors_and_no_trace(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    origin: str | None,
    target: str,
    method: str,
    path: str,
) -> None:
    monkeypatch.setattr(cds_hooks, target, _boom)
    headers = {"Origin": origin} if origin else {}
    body = hook_request("muscle-spasm-patient-view", prefetch=rf01_prefetch())
    if path.endswith("/feedback"):
        body = {"feedback": []}
    response = client.request(method, path, json=body, headers=headers)
    issues = outcome(response, 500)
    allowed_origin(response, origin)
    assert response.headers["content-type"].startswith(
        ("application/json", "application/fhir+json")
    )
    text = response.text
    for leak in ("SECRET", "Traceback", "RuntimeError", ".py", "line 42"):
        assert leak not in text
    correlation = response.headers["x-correlation-id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", correlation)
    assert correlation in issues[0]["diagnostics"]
    assert issues[0]["code"] == "exception"
    logged = [r for r in caplog.records if getattr(r, "correlationId", None) == correlation]
    assert logged and all(SECRET not in r.getMessage() for r in logged)


def test_unhandled_error_in_discovery_is_a_500_outcome(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    broken = {"x": type("Broken", (), {"id": "x", "discovery": _boom})()}
    monkeypatch.setattr(runtime, "services", broken)
    response = client.get("/cds-services", headers={"Origin": ORIGIN})
    outcome(response, 500)
    allowed_origin(response, ORIGIN)
    assert SECRET not in response.text


def test_upstream_failure_is_never_a_500(tmp_path: Path) -> None:
    def explode(_request: httpx.Request) -> httpx.Response:
        raise ValueError("transport bug")

    ehr = Ehr({"Condition?patient=p1": explode})
    sent = rf01_prefetch()
    del sent["conditions"]
    body = hook_request(
        "muscle-spasm-patient-view", prefetch=sent, fhirServer="http://ehr.test/fhir"
    )
    with TestClient(cds_app(tmp_path, transport=ehr.transport())) as client:
        response = client.post(PV, json=body, headers={"Origin": ORIGIN})
    outcome(response, 412)
    allowed_origin(response, ORIGIN)
