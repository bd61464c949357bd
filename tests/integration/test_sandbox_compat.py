"""The CDS Hooks Sandbox as a client (``cds-hooks/sandbox`` @ 3b7e255; docs/deployment.md).

Every request below has the exact shape the sandbox sends from the browser: an ES384 JWT with
``kid``/``jku`` from issuer ``https://sandbox.cds-hooks.org`` and ``aud`` = the URL called, an
``Origin`` header (so CORS matters, preflights included), ``Accept: application/json``, the
prefetch it fills itself (templates whose tokens it cannot fill are skipped, failed ones omitted),
its non-conformant R4 draft orders (no ``Bundle.type``, ``category``/``reasonCode`` as objects,
no ``intent``, ``doseQuantity`` directly on the dosage), DSTU2 ``MedicationOrder`` drafts when it
runs on its default DSTU2 server, and its feedback (dismiss without ``display``; accept).

The sandbox's real signing key is public, so these tests sign with a TEST key pair bound to the
sandbox issuer through an inline JWK Set; ``config/trusted-issuers.dev.json`` (the real public
JWKS, development only) is checked separately.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm

from fhir_service.runtime import build_runtime
from fhir_service.settings import Settings
from tests.conftest import make_app
from tests.integration._servers import ROOT

ISS = "https://sandbox.cds-hooks.org"
JKU = f"{ISS}/.well-known/jwks.json"
KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
ORIGIN = "https://sandbox.cds-hooks.org"
#: Where a developer exposes the service to the hosted sandbox (a tunnel); the sandbox computes
#: every ``aud`` from the discovery URL typed in, so this must be FHIR_SERVICE_PUBLIC_BASE_URL.
PUBLIC = "https://cds-dev.example.org"
SANDBOX_FHIR = "https://launch.smarthealthit.org/v/r4/fhir"
DEV_ISSUERS = ROOT / "config" / "trusted-issuers.dev.json"
TEST_KEY = ec.generate_private_key(ec.SECP384R1())


def sandbox_jwt(aud: str, key: Any = TEST_KEY, **override: Any) -> str:
    """``jwt-generator.js``: header {alg ES384, typ JWT, kid, jku}; claims iss/aud/exp/iat/jti."""
    now = int(time.time())
    claims = {"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    claims.update(override)
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": KID, "jku": JKU})


def headers(aud: str, **override: Any) -> dict[str, str]:
    return {
        "Accept": "application/json",
        "Authorization": f"Bearer {sandbox_jwt(aud, **override)}",
        "Content-Type": "application/json",
        "Origin": ORIGIN,
    }


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("sandbox")
    public = ECAlgorithm.to_jwk(TEST_KEY.public_key(), as_dict=True)
    issuers = {ISS: {"jwks": {"keys": [public | {"kid": KID, "alg": "ES384", "use": "sig"}]}}}
    (tmp / "issuers.json").write_text(json.dumps(issuers), encoding="utf-8")
    app = make_app(
        tmp,
        auth="jwt",
        trusted_issuers=tmp / "issuers.json",
        public_base_url=PUBLIC,
    )
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def discovery(client: TestClient) -> dict[str, Any]:
    url = f"{PUBLIC}/cds-services"
    response = client.get("/cds-services", headers=headers(url))
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
    body: dict[str, Any] = response.json()
    return body


def service_url(service_id: str) -> str:
    # the sandbox builds it by concatenation: `${discoveryUrl}/${service.id}`
    return f"{PUBLIC}/cds-services/{service_id}"


# --------------------------------------------------------------------------------------------
# Discovery and CORS


def test_preflight_without_auth(client: TestClient) -> None:
    for path in ("/cds-services", "/cds-services/muscle-spasm-patient-view/feedback"):
        response = client.options(
            path,
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert 200 <= response.status_code < 300
        assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
        allowed = response.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert "POST" in response.headers["access-control-allow-methods"]


def test_discovery_is_usable_by_the_sandbox(discovery: dict[str, Any]) -> None:
    services = discovery["services"]
    assert services, "the sandbox treats an empty services array as a failure"
    assert len({s["id"] for s in services}) == len(services)  # keyed by discoveryUrl/id
    for service in services:
        for field in ("hook", "id", "title", "description"):
            assert service[field]
    hooks = {s["hook"] for s in services}
    assert {"patient-view", "order-select", "order-sign"} <= hooks  # what the sandbox fires


def test_bad_tokens_get_401_with_cors(client: TestClient) -> None:
    url = f"{PUBLIC}/cds-services"
    wrong_key = ec.generate_private_key(ec.SECP384R1())
    cases = [
        {"Origin": ORIGIN},  # no token
        headers(f"{PUBLIC}/cds-services/"),  # aud with a trailing slash is another URL
        headers("http://127.0.0.1:8000/cds-services"),  # aud for another base URL
        headers(url, exp=int(time.time()) - 600),
        {**headers(url), "Authorization": f"Bearer {sandbox_jwt(url, key=wrong_key)}"},
    ]
    for sent in cases:
        response = client.get("/cds-services", headers=sent)
        assert response.status_code == 401, sent
        assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)


def test_a_token_is_accepted_once(client: TestClient) -> None:
    url = f"{PUBLIC}/cds-services"
    sent = headers(url)
    assert client.get("/cds-services", headers=sent).status_code == 200
    assert client.get("/cds-services", headers=sent).status_code == 401


# --------------------------------------------------------------------------------------------
# Service calls as the sandbox builds them


def searchset(*resources: dict[str, Any], query: str) -> dict[str, Any]:
    """A search result as the sandbox's FHIR server (HAPI) returns it, passed through as is."""
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": "2026-12-01T11:59:00.000+00:00"},
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{SANDBOX_FHIR}/{query}"}],
        "entry": [
            {
                "fullUrl": f"{SANDBOX_FHIR}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def condition(cid: str, code: str, display: str, onset: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "meta": {"versionId": "1", "lastUpdated": "2026-11-28T10:00:00.000+00:00"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]
        },
        "subject": {"reference": "Patient/smart-1288992"},
        "onsetDateTime": onset,
    }


PATIENT = {
    "resourceType": "Patient",
    "id": "smart-1288992",
    "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000+00:00"},
    "name": [{"use": "official", "family": "Shaw", "given": ["Amy", "V."]}],
    "gender": "female",
    "birthDate": "1987-02-20",
}


def sandbox_prefetch(service: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """What ``service-exchange.js`` sends: templates with an unfilled token are skipped; the
    results of the rest (here: the RF-01 patient's record) are passed through as searchsets."""
    records = {
        "Patient": [PATIENT],
        "Condition": [
            condition("c-spasm", "45352006", "Spasm", "2026-11-28"),
            condition("c-neck", "90460009", "Injury of neck", "2026-11-20"),
        ],
    }
    prefetch: dict[str, Any] = {}
    for key, template in service.get("prefetch", {}).items():
        filled = template
        for name, value in context.items():
            if isinstance(value, str):
                filled = filled.replace("{{context." + name + "}}", value)
        if "{{" in filled:
            continue  # e.g. {{context.encounterId}}: the sandbox never sends one
        path = filled.split("?", 1)[0]
        rtype = path.split("/", 1)[0]
        if "?" in filled:
            prefetch[key] = searchset(*records.get(rtype, []), query=filled)
        else:  # a read; one of a resource the server does not have fails: the key is omitted
            found = [r for r in records.get(rtype, []) if f"{rtype}/{r['id']}" == path]
            if found:
                prefetch[key] = found[0]
    return prefetch


def by_hook(discovery: dict[str, Any], hook: str) -> dict[str, Any]:
    return next(s for s in discovery["services"] if s["hook"] == hook)


def post_hook(
    client: TestClient, service: dict[str, Any], context: dict[str, Any], **extra: Any
) -> Any:
    body = {
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": SANDBOX_FHIR,
        "hook": service["hook"],
        "context": context,
        **extra,
    }
    return client.post(
        f"/cds-services/{service['id']}",
        content=json.dumps(body),
        headers=headers(service_url(service["id"])),
    )


def test_patient_view_with_sandbox_prefetch(client: TestClient, discovery: dict[str, Any]) -> None:
    service = by_hook(discovery, "patient-view")
    context = {"userId": "Practitioner/COREPRACTITIONER1", "patientId": "smart-1288992"}
    prefetch = sandbox_prefetch(service, context)
    response = post_hook(client, service, context, prefetch=prefetch)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
    cards = response.json()["cards"]
    assert "RF-01" in [c["source"]["topic"]["code"] for c in cards]
    for card in cards:  # the sandbox hides Dismiss without a uuid; sorts by indicator
        assert card["uuid"] and card["indicator"] in ("info", "warning", "critical")
        assert len(card["summary"]) < 140
        for suggestion in card.get("suggestions", []):
            assert suggestion["uuid"]
            for action in suggestion["actions"]:
                assert action.get("description"), "the sandbox logs an error without one"


def test_no_prefetch_and_an_unreachable_fhir_server_is_412_with_cors(
    client: TestClient, discovery: dict[str, Any]
) -> None:
    """When every prefetch fails the sandbox omits ``prefetch``; the sandbox's server is not on
    this test's allowlist, so the data cannot be had: 412 (the sandbox shows its error)."""
    service = by_hook(discovery, "patient-view")
    context = {"userId": "Practitioner/COREPRACTITIONER1", "patientId": "smart-1288992"}
    response = post_hook(client, service, context)
    assert response.status_code == 412, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)


def sandbox_r4_draft(code: str, name: str) -> dict[str, Any]:
    """``createFhirResource`` for R4: not valid R4 (see the module docstring)."""
    return {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "authoredOn": "2026-12-01",
        "status": "draft",
        "subject": {"reference": "Patient/smart-1288992"},
        "dosageInstruction": [
            {
                "doseQuantity": {
                    "value": 1,
                    "system": "http://unitsofmeasure.org",
                    "code": "{pill}",
                },
                "timing": {
                    "repeat": {
                        "frequency": 3,
                        "period": 1,
                        "periodUnit": "d",
                        "boundsPeriod": {"start": "2026-12-01", "end": "2026-12-31"},
                    }
                },
            }
        ],
        "medicationCodeableConcept": {
            "text": name,
            "coding": [
                {
                    "display": name,
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": code,
                }
            ],
        },
        "category": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                    "code": "outpatient",
                }
            ]
        },
        "reasonCode": {"coding": [{"system": "http://snomed.info/sct", "code": "45352006"}]},
    }


CYCLOBENZAPRINE = ("828348", "cyclobenzaprine hydrochloride 10 MG Oral Tablet")


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_orders_with_sandbox_r4_shapes(
    client: TestClient, discovery: dict[str, Any], hook: str
) -> None:
    service = by_hook(discovery, hook)
    context: dict[str, Any] = {
        "userId": "Practitioner/COREPRACTITIONER1",
        "patientId": "smart-1288992",
        "draftOrders": {
            "resourceType": "Bundle",
            "entry": [{"resource": sandbox_r4_draft(*CYCLOBENZAPRINE)}],
        },
    }
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/request-123"]
    prefetch = sandbox_prefetch(service, context)
    response = post_hook(client, service, context, prefetch=prefetch)
    assert response.status_code in (200, 412), response.text
    if response.status_code == 412:  # a key the sandbox could not fill is fetched: not here
        pytest.fail(
            f"{service['id']} needs data the sandbox sends no template for: {response.text}"
        )
    for card in response.json()["cards"]:
        assert card["uuid"]
        for suggestion in card.get("suggestions", []):
            for action in suggestion["actions"]:
                if action["type"] in ("update", "delete"):  # only the drafts may be targeted
                    target = action.get("resourceId") or (
                        f"{action['resource']['resourceType']}/{action['resource']['id']}"
                    )
                    assert str(target).endswith("MedicationRequest/request-123")


def test_dstu2_medication_order_is_ignored(client: TestClient, discovery: dict[str, Any]) -> None:
    """The sandbox on its default DSTU2 server sends ``MedicationOrder``: ignored, no cards."""
    service = by_hook(discovery, "order-select")
    order = {
        "resourceType": "MedicationOrder",
        "id": "request-123",
        "dateWritten": "2026-12-01",
        "status": "draft",
        "patient": {"reference": "Patient/smart-1288992"},
        "dosageInstruction": [
            {
                "doseQuantity": {
                    "value": 1,
                    "system": "http://unitsofmeasure.org",
                    "code": "{pill}",
                },
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnits": "d"}},
            }
        ],
        "medicationCodeableConcept": {
            "text": CYCLOBENZAPRINE[1],
            "coding": [
                {
                    "display": CYCLOBENZAPRINE[1],
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": CYCLOBENZAPRINE[0],
                }
            ],
        },
        "reasonCodeableConcept": {
            "coding": [{"system": "http://snomed.info/sct", "code": "45352006"}]
        },
    }
    context = {
        "userId": "Practitioner/COREPRACTITIONER1",
        "patientId": "smart-1288992",
        "selections": ["MedicationOrder/request-123"],
        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": order}]},
    }
    response = post_hook(client, service, context, prefetch=sandbox_prefetch(service, context))
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}


def test_feedback_dismiss_and_accept(client: TestClient, discovery: dict[str, Any]) -> None:
    service = by_hook(discovery, "patient-view")
    context = {"userId": "Practitioner/COREPRACTITIONER1", "patientId": "smart-1288992"}
    cards = post_hook(client, service, context, prefetch=sandbox_prefetch(service, context))
    card = cards.json()["cards"][0]
    url = f"{service_url(service['id'])}/feedback"
    dismiss = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-12-01T12:01:00.000Z",
                "overrideReason": {
                    "reason": {"code": "reason-1", "system": "http://example.org/override"}
                },
            }
        ]
    }
    plain_dismiss = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-12-01T12:01:30.000Z",
            }
        ]
    }
    accept = {
        "feedback": [
            {
                "card": str(uuid.uuid4()),  # unknown to us: still 200 (logged)
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
                "outcomeTimestamp": "2026-12-01T12:02:00.000Z",
            }
        ]
    }
    for body in (dismiss, plain_dismiss, accept):
        response = client.post(
            f"/cds-services/{service['id']}/feedback",
            content=json.dumps(body),
            headers=headers(url),
        )
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
    # the feedback token's aud is the feedback URL, not the service URL
    response = client.post(
        f"/cds-services/{service['id']}/feedback",
        content=json.dumps(dismiss),
        headers=headers(service_url(service["id"])),
    )
    assert response.status_code == 401


# --------------------------------------------------------------------------------------------
# The development issuers file (the real, public sandbox key)


def test_dev_trusted_issuers_file_is_accepted(tmp_path: Path) -> None:
    settings = Settings(
        auth="jwt",
        trusted_issuers=DEV_ISSUERS,
        database_url=f"sqlite:///{tmp_path / 'dev.db'}",
    )
    issuers = settings.load_trusted_issuers()
    assert set(issuers) == {ISS}
    keys = issuers[ISS]["jwks"]["keys"]
    sandbox_key = next(k for k in keys if k["kid"] == KID)
    assert sandbox_key["kty"] == "EC" and sandbox_key["crv"] == "P-384"
    assert sandbox_key.get("alg", "ES384") == "ES384"
    ECAlgorithm.from_jwk(json.dumps(sandbox_key))  # a valid public EC key
    assert "d" not in sandbox_key  # public part only
    runtime = build_runtime(settings)
    try:
        assert runtime.verifier is not None
    finally:
        runtime.store.close()


def test_dev_trusted_issuers_rejects_tokens_not_signed_by_the_sandbox(tmp_path: Path) -> None:
    app = make_app(tmp_path, auth="jwt", trusted_issuers=DEV_ISSUERS, public_base_url=PUBLIC)
    with TestClient(app) as client:
        response = client.get("/cds-services", headers=headers(f"{PUBLIC}/cds-services"))
    assert response.status_code == 401  # our TEST key is not the sandbox's key
