"""Client JWTs through the real app (``FHIR_SERVICE_AUTH=jwt``): contract "Trusted issuers",
"Public base URL", "Auth"; https://cds-hooks.hl7.org/2.0/#trusting-cds-clients.

Tokens are minted here with fresh EC/RSA keys; ``iat``/``exp`` come from the wall clock while the
app's rule clock is pinned far in the past (``FHIR_SERVICE_NOW`` never drives JWT time checks).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm

from fhir_service.cds import invoke as invoke_module
from tests.api.test_cds_hooks_support import PV, cds_app, hook_request, rf01_prefetch
from tests.conftest import make_app

BASE = "http://127.0.0.1:8000"
DISCOVERY = f"{BASE}/cds-services"
SERVICE = f"{BASE}{PV}"
FEEDBACK = f"{SERVICE}/feedback"
ISS = "https://ehr.example.org/cds-client"
JKU_ISS = "https://sandbox.cds-hooks.test"
JKU = "http://keys.test/.well-known/jwks.json"
KEY = ec.generate_private_key(ec.SECP384R1())
JKU_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER = ec.generate_private_key(ec.SECP384R1())
PAST = datetime(2001, 1, 1, tzinfo=UTC)


def public_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    out: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return out | {"kid": kid, "use": "sig", "alg": "ES384"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(
    aud: str | list[str] = SERVICE,
    *,
    key: Any = KEY,
    iss: str = ISS,
    kid: str | None = "key-1",
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload = {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    payload |= claims
    head: dict[str, Any] = {"typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    head |= header or {}
    return jwt.encode(payload, key, algorithm="ES384", headers=head)


def unsigned(aud: str = SERVICE, alg: str = "none") -> str:
    now = int(time.time())
    head = {"alg": alg, "typ": "JWT", "kid": "key-1"}
    payload = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(payload).encode())}"
    if alg == "none":
        return signing_input + "."
    secret = json.dumps(public_jwk(KEY, "key-1")).encode()  # the classic key-confusion attempt
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Keys:
    """The JWKS endpoint of the jku-bound issuer, behind the app's MockTransport."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if str(request.url) == JKU:
            return httpx.Response(200, json={"keys": [public_jwk(JKU_KEY, "sandbox-key")]})
        return httpx.Response(404)


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def issuers_file(tmp_path: Path) -> Path:
    path = tmp_path / "issuers.json"
    path.write_text(
        json.dumps(
            {
                ISS: {"jwks": {"keys": [public_jwk(KEY, "key-1")]}},
                JKU_ISS: {"jku": JKU},
            }
        )
    )
    return path


@pytest.fixture
def client(tmp_path: Path, issuers_file: Path, keys: Keys) -> Iterator[TestClient]:
    app = cds_app(
        tmp_path,
        now=PAST,
        transport=httpx.MockTransport(keys.handle),
        auth="jwt",
        trusted_issuers=issuers_file,
        fhir_server_allowlist=("http://ehr.test", "http://keys.test/.well-known"),
    )
    with TestClient(app) as test_client:
        yield test_client


def call_body() -> dict[str, Any]:
    return hook_request("muscle-spasm-patient-view", prefetch=rf01_prefetch())


def feedback_body() -> dict[str, Any]:
    item = {
        "card": "9b2f2f1e-0000-4000-8000-000000000001",
        "outcome": "overridden",
        "outcomeTimestamp": "2026-12-01T12:00:00Z",
    }
    return {"feedback": [item]}


# -- valid tokens -------------------------------------------------------------------------------


def test_valid_token_for_discovery_service_and_feedback(client: TestClient) -> None:
    assert client.get("/cds-services", headers=bearer(mint(DISCOVERY))).status_code == 200
    response = client.post(PV, json=call_body(), headers=bearer(mint(SERVICE)))
    assert response.status_code == 200, response.text
    assert "RF-01" in [c["source"]["topic"]["code"] for c in response.json()["cards"]]
    response = client.post(PV + "/feedback", json=feedback_body(), headers=bearer(mint(FEEDBACK)))
    assert response.status_code == 200, response.text


def test_aud_may_be_an_array_holding_the_url(client: TestClient) -> None:
    token = mint(["https://elsewhere.example/cds-services", SERVICE])
    assert client.post(PV, json=call_body(), headers=bearer(token)).status_code == 200


def test_expired_within_leeway_and_epic_style_nbf_are_accepted(client: TestClient) -> None:
    now = int(time.time())
    token = mint(SERVICE, iat=now - 330, exp=now - 30)
    assert client.post(PV, json=call_body(), headers=bearer(token)).status_code == 200
    # Epic: exp - iat = 900 s, nbf = iat - 5 min, a sub: no lifetime cap
    token = mint(SERVICE, iat=now, exp=now + 900, nbf=now - 300, sub="epic-client")
    assert client.post(PV, json=call_body(), headers=bearer(token)).status_code == 200


def test_pinned_rule_clock_does_not_drive_jwt_time_checks(client: TestClient) -> None:
    """The app's clock is 2001: a token valid now passes, one valid in 2001 is expired."""
    assert client.app.state.runtime.now() == PAST  # type: ignore[attr-defined]
    past = int(PAST.timestamp())
    token = mint(SERVICE, iat=past, exp=past + 300)
    assert client.post(PV, json=call_body(), headers=bearer(token)).status_code == 401
    assert client.post(PV, json=call_body(), headers=bearer(mint(SERVICE))).status_code == 200


def test_jku_bound_issuer_fetches_its_jwks_once(client: TestClient, keys: Keys) -> None:
    def token(aud: str) -> str:
        return mint(aud, key=JKU_KEY, iss=JKU_ISS, kid="sandbox-key", header={"jku": JKU})

    assert client.get("/cds-services", headers=bearer(token(DISCOVERY))).status_code == 200
    assert client.post(PV, json=call_body(), headers=bearer(token(SERVICE))).status_code == 200
    assert [str(r.url) for r in keys.requests] == [JKU]  # cached for the second call
    assert "authorization" not in keys.requests[0].headers
    # without a jku header the bound URL is used too
    plain = mint(SERVICE, key=JKU_KEY, iss=JKU_ISS, kid="sandbox-key")
    assert client.post(PV, json=call_body(), headers=bearer(plain)).status_code == 200


# -- 401, always the same body ------------------------------------------------------------------


def _failures() -> dict[str, tuple[str, dict[str, str]]]:
    now = int(time.time())
    return {
        "no-header": (PV, {}),
        "empty-bearer": (PV, {"Authorization": "Bearer "}),
        "basic": (PV, {"Authorization": "Basic dXNlcjpwYXNz"}),
        "not-a-jwt": (PV, bearer("abc.def")),
        "other-service-aud": (
            PV,
            bearer(mint(f"{BASE}/cds-services/muscle-spasm-order-sign")),
        ),
        "discovery-aud-on-service": (PV, bearer(mint(DISCOVERY))),
        "service-aud-on-feedback": (PV + "/feedback", bearer(mint(SERVICE))),
        "service-aud-on-discovery": ("/cds-services", bearer(mint(SERVICE))),
        "trailing-slash-aud": (PV, bearer(mint(SERVICE + "/"))),
        "other-host-aud": (PV, bearer(mint("http://localhost:8000" + PV))),
        "expired-61s": (PV, bearer(mint(iat=now - 400, exp=now - 61))),
        "expired-long-ago": (PV, bearer(mint(iat=now - 7200, exp=now - 3600))),
        "iat-future": (PV, bearer(mint(iat=now + 600, exp=now + 900))),
        "nbf-future": (PV, bearer(mint(nbf=now + 600))),
        "alg-none": (PV, bearer(unsigned(alg="none"))),
        "hs256": (PV, bearer(unsigned(alg="HS256"))),
        "unknown-issuer": (PV, bearer(mint(iss="https://unknown.example"))),
        "wrong-key": (PV, bearer(mint(key=OTHER))),
        "unknown-kid": (PV, bearer(mint(kid="key-2"))),
        "no-kid": (PV, bearer(mint(kid=None))),
        "typ-not-jwt": (PV, bearer(mint(header={"typ": "at+jwt"}))),
        "no-jti": (PV, bearer(mint(jti=None))),
        "jku-mismatch": (
            PV,
            bearer(
                mint(
                    key=JKU_KEY,
                    iss=JKU_ISS,
                    kid="sandbox-key",
                    header={"jku": "http://keys.test/.well-known/other.json"},
                )
            ),
        ),
    }


FAILURES = sorted(_failures())


@pytest.mark.parametrize("case", FAILURES)
def test_every_jwt_failure_is_the_same_401(client: TestClient, keys: Keys, case: str) -> None:
    path, headers = _failures()[case]
    body = feedback_body() if path.endswith("/feedback") else call_body()
    if path == "/cds-services":
        response = client.get(path, headers=headers)
    else:
        response = client.post(path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login"}],
    }
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert response.headers["access-control-allow-origin"]
    assert keys.requests == []  # nothing fetched for these (inline keys or refused jku)


def test_replayed_jti_is_401(client: TestClient) -> None:
    token = mint(SERVICE)
    assert client.post(PV, json=call_body(), headers=bearer(token)).status_code == 200
    replay = client.post(PV, json=call_body(), headers=bearer(token))
    assert replay.status_code == 401
    assert replay.json()["issue"] == [{"severity": "error", "code": "login"}]


def test_401_comes_before_any_body_check(client: TestClient) -> None:
    for raw, content_type in ((b"not json", "application/json"), (b"{}", "text/plain")):
        response = client.post(PV, content=raw, headers={"Content-Type": content_type})
        assert response.status_code == 401


def test_jku_not_on_the_allowlist_is_401_without_a_fetch(
    tmp_path: Path, issuers_file: Path, keys: Keys
) -> None:
    app = cds_app(
        tmp_path,
        transport=httpx.MockTransport(keys.handle),
        auth="jwt",
        trusted_issuers=issuers_file,
        fhir_server_allowlist=("http://ehr.test",),
    )
    token = mint(SERVICE, key=JKU_KEY, iss=JKU_ISS, kid="sandbox-key", header={"jku": JKU})
    with TestClient(app) as client:
        assert client.post(PV, json=call_body(), headers=bearer(token)).status_code == 401
    assert keys.requests == []


# -- what needs no JWT --------------------------------------------------------------------------


def test_preflight_healthz_and_fhir_need_no_jwt(client: TestClient) -> None:
    for path in ("/cds-services", PV, PV + "/feedback"):
        response = client.options(
            path,
            headers={
                "Origin": "https://sandbox.cds-hooks.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert 200 <= response.status_code < 300, (path, response.status_code)
    assert client.get("/healthz").json() == {"status": "ok"}
    metadata = client.get("/fhir/metadata")
    assert metadata.status_code == 200
    assert metadata.json()["resourceType"] == "CapabilityStatement"
    assert client.get("/fhir/PlanDefinition/rf-01").status_code == 200


def test_default_settings_refuse_discovery(tmp_path: Path) -> None:
    """``FHIR_SERVICE_AUTH`` defaults to jwt and no issuer is trusted by default."""
    app = make_app(tmp_path, auth="jwt")
    assert app.state.runtime.settings.trusted_issuers is None
    with TestClient(app) as client:
        assert client.get("/cds-services").status_code == 401
        assert client.get("/cds-services", headers=bearer(mint(DISCOVERY))).status_code == 401
        assert client.get("/healthz").status_code == 200


# -- the 10 s budget counts the JWT key fetch -----------------------------------------------------


def test_slow_jwks_fetch_counts_against_the_412_budget(
    tmp_path: Path, issuers_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow JWKS fetch plus a hanging FHIR server still gives a 412 within the budget."""
    monkeypatch.setattr(invoke_module, "CALL_BUDGET_SECONDS", 3.0)

    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == JKU:
            await asyncio.sleep(1.5)
            return httpx.Response(200, json={"keys": [public_jwk(JKU_KEY, "sandbox-key")]})
        await asyncio.sleep(30)
        return httpx.Response(500)

    app = cds_app(
        tmp_path,
        transport=httpx.MockTransport(handler),
        auth="jwt",
        trusted_issuers=issuers_file,
        fhir_server_allowlist=("http://ehr.test", "http://keys.test/.well-known"),
        prefetch_deadline_seconds=8,
    )
    sent = rf01_prefetch()
    del sent["conditions"]
    body = hook_request(
        "muscle-spasm-patient-view", prefetch=sent, fhirServer="http://ehr.test/fhir"
    )
    token = mint(SERVICE, key=JKU_KEY, iss=JKU_ISS, kid="sandbox-key", header={"jku": JKU})
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.post(PV, json=body, headers=bearer(token))
        elapsed = time.monotonic() - started
    assert response.status_code == 412, response.text
    assert 1.5 <= elapsed < 4.5, elapsed  # without the budget: 1.5 s + 8 s


def test_default_budget_is_within_the_contract() -> None:
    assert invoke_module.CALL_BUDGET_SECONDS + 0.5 < 10
