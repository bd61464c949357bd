"""Prefetch through the real app: contract "Prefetch", https://cds-hooks.hl7.org/2.0/#providing-fhir-resources-to-a-cds-service.

The EHR's FHIR server is an ``httpx.MockTransport`` (:class:`Ehr`) that records every request,
so each test asserts both the answer and exactly what was (not) fetched. RF-01 (a spasm
Condition plus a recent injury Condition) is the rule that proves the data arrived.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fhir_service.knowledge.services import PrefetchTemplate
from tests.api.test_cds_hooks_support import (
    EHR,
    INJURY,
    PATIENT,
    PV,
    SPASM,
    Ehr,
    all_prefetch,
    cds_app,
    hook_request,
    issue_text,
    outcome,
    rf01_prefetch,
    rule_codes,
    searchset,
    templates,
)

SERVICE = "muscle-spasm-patient-view"
TOKEN = "opaque-access-token-123"
AUTH = {
    "access_token": TOKEN,
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/Condition.read patient/Observation.read",
    "subject": "muscle-spasm-cds",
}
OO_ERROR = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "not permitted"}],
}


def fill(template: str, **values: str) -> str:
    """The template with its tokens filled (``p1``, ``Practitioner/example``)."""
    values = {"context.patientId": "p1", "context.userId": "Practitioner/example"} | values
    return re.sub(r"\{\{\s*(.*?)\s*\}\}", lambda m: values[m.group(1)], template)


def is_read(relative: str) -> bool:
    return "?" not in relative and relative.count("/") == 1


def rf01_data() -> dict[str, Any]:
    """Per key of patient-view: the value the client would send (RF-01 record, else empty)."""
    out: dict[str, Any] = {}
    for key, template in templates(SERVICE).items():
        if "{{context.encounterId}}" in template:
            continue
        if key == "conditions":
            out[key] = searchset(SPASM, INJURY)
        elif is_read(fill(template)):
            out[key] = copy.deepcopy(PATIENT) if template.startswith("Patient/") else None
        else:
            out[key] = searchset()
    return out


def ehr_serving(data: dict[str, Any]) -> Ehr:
    """The EHR answering every template of patient-view with ``data`` (read ``None`` → 404)."""
    routes = {}
    for key, template in templates(SERVICE).items():
        if key in data and data[key] is not None:
            routes[fill(template)] = data[key]
    return Ehr(routes)


def post(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post(PV, json=body)


def without_uuids(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "uuid"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(c) for c in cards]


def make(tmp_path: Path, ehr: Ehr, **settings: Any) -> TestClient:
    return TestClient(cds_app(tmp_path, transport=ehr.transport(), **settings))


# -- all, some, none ----------------------------------------------------------------------------


def test_full_prefetch_makes_no_upstream_call(tmp_path: Path) -> None:
    ehr = Ehr()
    with make(tmp_path, ehr) as client:
        response = post(client, hook_request(SERVICE, prefetch=rf01_data(), fhirServer=EHR))
    assert response.status_code == 200, response.text
    assert "RF-01" in rule_codes(response.json())
    assert ehr.requests == []


@pytest.mark.parametrize("with_token", [False, True], ids=["open-server", "fhirAuthorization"])
def test_absent_key_is_fetched_at_the_template_url(tmp_path: Path, with_token: bool) -> None:
    data = rf01_data()
    ehr = ehr_serving(data)
    sent = {k: v for k, v in data.items() if k != "conditions"}
    body = hook_request(SERVICE, prefetch=sent, fhirServer=EHR)
    if with_token:
        body["fhirAuthorization"] = AUTH
    with make(tmp_path, ehr) as client:
        fetched = post(client, body)
        full = post(client, hook_request(SERVICE, prefetch=data))
    assert fetched.status_code == 200, fetched.text
    assert ehr.relative() == ["Condition?patient=p1"]
    request = ehr.requests[0]
    assert request.method == "GET"
    assert str(request.url) == f"{EHR}/Condition?patient=p1"
    if with_token:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
    else:
        assert "authorization" not in request.headers
    assert TOKEN not in fetched.text
    # the fetched data gives the same answer as the same data sent as prefetch
    assert without_uuids(fetched.json()["cards"]) == without_uuids(full.json()["cards"])
    assert "RF-01" in rule_codes(fetched.json())


def test_no_prefetch_at_all_fetches_every_needed_template(tmp_path: Path) -> None:
    """The sandbox omits ``prefetch`` entirely when every fetch failed (https://cds-hooks.hl7.org/2.0/#prefetch-template)."""
    data = rf01_data()
    ehr = ehr_serving(data)
    body = hook_request(SERVICE, fhirServer=EHR, fhirAuthorization=AUTH)
    with make(tmp_path, ehr) as client:
        fetched = post(client, body)
        full = post(client, hook_request(SERVICE, prefetch=data))
    assert fetched.status_code == 200, fetched.text
    expected = sorted(
        fill(t) for k, t in templates(SERVICE).items() if "{{context.encounterId}}" not in t
    )
    assert sorted(str(r.url)[len(EHR) + 1 :] for r in ehr.requests) == sorted(
        str(httpx.URL(f"{EHR}/{e}"))[len(EHR) + 1 :] for e in expected
    )
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in ehr.requests)
    assert without_uuids(fetched.json()["cards"]) == without_uuids(full.json()["cards"])


def test_read_answered_404_is_no_data(tmp_path: Path) -> None:
    """An absent instance-read key whose resource does not exist (404/410) is no data."""
    ehr = Ehr({"Patient/p2": httpx.Response(410)})
    app = cds_app(tmp_path, transport=ehr.transport())
    service = app.state.runtime.services[SERVICE]
    if all(t.key != "patient" for t in service.prefetch):
        service.prefetch.append(
            PrefetchTemplate("patient", "Patient/{{context.patientId}}", "Patient")
        )
    sent = {k: v for k, v in rf01_prefetch().items() if k != "patient"}
    with TestClient(app) as client:
        response = post(client, hook_request(SERVICE, prefetch=sent, fhirServer=EHR))
        assert response.status_code == 200, response.text
        assert "RF-01" in rule_codes(response.json())
        assert ehr.relative() == ["Patient/p1"]
        body = hook_request(SERVICE, prefetch=sent, fhirServer=EHR)
        body["context"]["patientId"] = "p2"
        assert post(client, body).status_code == 200
    assert ehr.relative() == ["Patient/p1", "Patient/p2"]


# -- what is never fetched ----------------------------------------------------------------------


def test_null_keys_are_never_fetched(tmp_path: Path) -> None:
    ehr = Ehr()
    with make(tmp_path, ehr) as client:
        response = post(
            client, hook_request(SERVICE, prefetch=all_prefetch(SERVICE), fhirServer=EHR)
        )
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}
    assert ehr.requests == []


def test_empty_searchsets_are_no_data_and_never_fetched(tmp_path: Path) -> None:
    ehr = Ehr()
    prefetch = {
        k: (searchset() if not is_read(fill(t)) else None) for k, t in templates(SERVICE).items()
    }
    prefetch["conditions"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    with make(tmp_path, ehr) as client:
        response = post(client, hook_request(SERVICE, prefetch=prefetch, fhirServer=EHR))
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}
    assert ehr.requests == []


@pytest.mark.parametrize(
    "value",
    [
        OO_ERROR,
        {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "timeout"}]},
        {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": OO_ERROR}]},
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": OO_ERROR, "search": {"mode": "outcome"}}],
        },
    ],
    ids=["outcome", "fatal-outcome", "bundle-of-outcome", "bundle-of-outcome-mode"],
)
def test_key_sent_as_operation_outcome_is_412_and_not_fetched(tmp_path: Path, value: Any) -> None:
    ehr = ehr_serving(rf01_data())
    with make(tmp_path, ehr) as client:
        response = post(
            client,
            hook_request(SERVICE, prefetch=rf01_prefetch(conditions=value), fhirServer=EHR),
        )
    outcome(response, 412)
    assert "conditions" in issue_text(response)
    assert "prefetch.conditions" in response.json()["issue"][0]["expression"]
    assert ehr.requests == []


def test_warning_outcome_in_a_searchset_is_just_a_note(tmp_path: Path) -> None:
    note = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "informational"}],
    }
    conditions = searchset(SPASM, INJURY)
    conditions["entry"].append({"resource": note, "search": {"mode": "outcome"}})
    ehr = Ehr()
    with make(tmp_path, ehr) as client:
        response = post(
            client, hook_request(SERVICE, prefetch=rf01_prefetch(conditions=conditions))
        )
    assert response.status_code == 200, response.text
    assert "RF-01" in rule_codes(response.json())


def test_unfillable_template_is_not_needed(tmp_path: Path) -> None:
    """``Encounter/{{context.encounterId}}`` on patient-view without ``encounterId``: skipped;
    with ``encounterId`` the same absent key is fetched."""
    ehr = Ehr({"Encounter/e1": {"resourceType": "Encounter", "id": "e1", "status": "in-progress"}})
    app = cds_app(tmp_path, transport=ehr.transport())
    service = app.state.runtime.services[SERVICE]
    if all(t.key != "encounter" for t in service.prefetch):
        service.prefetch.append(
            PrefetchTemplate("encounter", "Encounter/{{context.encounterId}}", "Encounter")
        )
    prefetch = {k: v for k, v in rf01_prefetch().items() if k != "encounter"}
    with TestClient(app) as client:
        response = post(client, hook_request(SERVICE, prefetch=prefetch, fhirServer=EHR))
        assert response.status_code == 200, response.text
        assert ehr.requests == []
        assert "RF-01" in rule_codes(response.json())
        # no fhirServer either: still not needed, still 200
        response = post(client, hook_request(SERVICE, prefetch=prefetch))
        assert response.status_code == 200, response.text
        # with encounterId the key is needed and fetched
        body = hook_request(SERVICE, prefetch=prefetch, fhirServer=EHR)
        body["context"]["encounterId"] = "e1"
        response = post(client, body)
        assert response.status_code == 200, response.text
        assert ehr.relative() == ["Encounter/e1"]
        # and without a fhirServer it is 412 naming it
        body.pop("fhirServer")
        response = post(client, body)
    outcome(response, 412)
    assert "encounter" in issue_text(response)


# -- paging -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "next_url",
    [
        f"{EHR}/Condition?patient=p1&_page=2",
        "http://ehr.test/fhir?_getpages=abc123&_getpagesoffset=1&_count=1&_bundletype=searchset",
        "http://EHR.test/fhir/Condition?patient=p1&_page=2",
    ],
    ids=["same-base", "hapi-getpages", "host-case"],
)
@pytest.mark.parametrize("with_token", [False, True])
def test_next_link_in_a_sent_bundle_is_followed_on_the_fhir_server_origin(
    tmp_path: Path, next_url: str, with_token: bool
) -> None:
    page2 = searchset(INJURY)
    ehr = Ehr({next_url.replace("EHR.test", "ehr.test"): page2})
    first = searchset(SPASM, link=[{"relation": "self", "url": f"{EHR}/Condition?patient=p1"}])
    first["link"].append({"relation": "next", "url": next_url})
    body = hook_request(SERVICE, prefetch=rf01_prefetch(conditions=first), fhirServer=EHR)
    if with_token:
        body["fhirAuthorization"] = AUTH
    with make(tmp_path, ehr) as client:
        response = post(client, body)
    assert response.status_code == 200, response.text
    assert len(ehr.requests) == 1
    assert str(ehr.requests[0].url).lower() == next_url.lower()
    assert ("authorization" in ehr.requests[0].headers) is with_token
    assert "RF-01" in rule_codes(response.json())  # the injury was on page 2


def test_next_link_in_a_fetched_bundle_is_followed(tmp_path: Path) -> None:
    data = rf01_data()
    ehr = ehr_serving(data)
    ehr.routes["Condition?patient=p1"] = searchset(
        SPASM, link=[{"relation": "next", "url": f"{EHR}/Condition?patient=p1&_page=2"}]
    )
    ehr.routes["Condition?patient=p1&_page=2"] = searchset(INJURY)
    sent = {k: v for k, v in data.items() if k != "conditions"}
    with make(tmp_path, ehr) as client:
        response = post(client, hook_request(SERVICE, prefetch=sent, fhirServer=EHR))
    assert response.status_code == 200, response.text
    assert ehr.relative() == ["Condition?patient=p1", "Condition?patient=p1&_page=2"]
    assert "RF-01" in rule_codes(response.json())


@pytest.mark.parametrize(
    "next_url",
    [
        "http://evil.test/fhir/Condition?patient=p1&_page=2",
        "https://ehr.test/fhir/Condition?patient=p1&_page=2",
        "http://ehr.test:8080/fhir/Condition?patient=p1&_page=2",
        "Condition?patient=p1&_page=2",
        "//evil.test/fhir/Condition",
    ],
)
def test_next_link_off_the_fhir_server_origin_is_412(tmp_path: Path, next_url: str) -> None:
    ehr = Ehr({"http://evil.test/fhir/Condition?patient=p1&_page=2": searchset(INJURY)})
    first = searchset(SPASM, link=[{"relation": "next", "url": next_url}])
    body = hook_request(
        SERVICE, prefetch=rf01_prefetch(conditions=first), fhirServer=EHR, fhirAuthorization=AUTH
    )
    with make(
        tmp_path, ehr, fhir_server_allowlist=("http://ehr.test", "http://evil.test")
    ) as client:
        response = post(client, body)
    outcome(response, 412)
    assert "conditions" in issue_text(response)
    assert ehr.requests == []


def test_next_link_without_fhir_server_is_412(tmp_path: Path) -> None:
    ehr = Ehr()
    first = searchset(SPASM, link=[{"relation": "next", "url": f"{EHR}/Condition?page=2"}])
    with make(tmp_path, ehr) as client:
        response = post(client, hook_request(SERVICE, prefetch=rf01_prefetch(conditions=first)))
    outcome(response, 412)
    assert "conditions" in issue_text(response)
    assert ehr.requests == []


def test_next_page_that_fails_is_412(tmp_path: Path) -> None:
    ehr = Ehr({"Condition?patient=p1&_page=2": httpx.Response(500, text="boom")})
    first = searchset(
        SPASM, link=[{"relation": "next", "url": f"{EHR}/Condition?patient=p1&_page=2"}]
    )
    with make(tmp_path, ehr) as client:
        response = post(
            client, hook_request(SERVICE, prefetch=rf01_prefetch(conditions=first), fhirServer=EHR)
        )
    outcome(response, 412)
    assert "conditions" in issue_text(response)


# -- 412: the key cannot be obtained ------------------------------------------------------------


def test_missing_key_without_fhir_server_is_412_naming_it(tmp_path: Path) -> None:
    ehr = Ehr()
    sent = rf01_prefetch()
    del sent["conditions"]
    with make(tmp_path, ehr) as client:
        response = post(client, hook_request(SERVICE, prefetch=sent))
    issues = outcome(response, 412)
    assert issues[0]["expression"] == ["prefetch.conditions"]
    assert "conditions" in issues[0]["diagnostics"]
    assert ehr.requests == []


def test_every_missing_key_is_named(tmp_path: Path) -> None:
    with make(tmp_path, Ehr()) as client:
        response = post(client, hook_request(SERVICE))
    outcome(response, 412)
    needed = [k for k, t in templates(SERVICE).items() if "{{context.encounterId}}" not in t]
    expressions = response.json()["issue"][0]["expression"]
    assert sorted(expressions) == sorted(f"prefetch.{k}" for k in needed)


@pytest.mark.parametrize(
    ("fhir_server", "allowlist"),
    [
        ("http://other.test/fhir", ("http://ehr.test",)),
        ("http://ehr.test/fhir", ()),
        ("http://ehr.test/fhir", ("http://ehr.test/r4",)),
        ("http://ehr.test/fhir2", ("http://ehr.test/fhir",)),
        ("http://127.0.0.1:9/fhir", ("*",)),
        ("http://169.254.169.254/latest", ("*",)),
        ("https://10.0.0.1/fhir", ("*",)),
        ("ftp://ehr.test/fhir", ("http://ehr.test",)),
        ("not a url", ("http://ehr.test",)),
    ],
)
def test_fhir_server_not_on_the_allowlist_is_412_without_any_request(
    tmp_path: Path, fhir_server: str, allowlist: tuple[str, ...]
) -> None:
    ehr = ehr_serving(rf01_data())
    sent = rf01_prefetch()
    del sent["conditions"]
    body = hook_request(SERVICE, prefetch=sent, fhirServer=fhir_server, fhirAuthorization=AUTH)
    with make(tmp_path, ehr, fhir_server_allowlist=allowlist) as client:
        response = post(client, body)
    outcome(response, 412)
    assert "conditions" in issue_text(response)
    assert ehr.requests == []


async def _slow(_request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(30)
    return httpx.Response(200, json=searchset())


def _raise_connect(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _raise_read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("read timed out", request=request)


UPSTREAM_FAILURES: dict[str, Any] = {
    "500": httpx.Response(500, json=OO_ERROR),
    "401": httpx.Response(401, json=OO_ERROR, headers={"WWW-Authenticate": "Bearer"}),
    "403": httpx.Response(403, text="forbidden"),
    "404-search": httpx.Response(404, json=OO_ERROR),
    "302": httpx.Response(302, headers={"Location": "http://ehr.test/login"}),
    "html": httpx.Response(
        200, text="<html><body>Login</body></html>", headers={"content-type": "text/html"}
    ),
    "truncated-json": httpx.Response(
        200,
        content=b'{"resourceType": "Bundle", "type": "searchset", "entr',
        headers={"content-type": "application/fhir+json"},
    ),
    "json-array": httpx.Response(200, json=[1, 2], headers={"content-type": "application/json"}),
    "operation-outcome-200": httpx.Response(
        200, json=OO_ERROR, headers={"content-type": "application/fhir+json"}
    ),
    "not-a-searchset": httpx.Response(
        200, json=SPASM, headers={"content-type": "application/fhir+json"}
    ),
    "nan": httpx.Response(
        200,
        content=b'{"resourceType": "Bundle", "total": NaN}',
        headers={"content-type": "application/json"},
    ),
    "connect-error": _raise_connect,
    "read-timeout": _raise_read_timeout,
}


@pytest.mark.parametrize("failure", sorted(UPSTREAM_FAILURES))
def test_upstream_failure_is_412_naming_the_key(tmp_path: Path, failure: str) -> None:
    data = rf01_data()
    ehr = ehr_serving(data)
    ehr.routes["Condition?patient=p1"] = UPSTREAM_FAILURES[failure]
    sent = {k: v for k, v in data.items() if k != "conditions"}
    with make(tmp_path, ehr) as client:
        response = post(
            client, hook_request(SERVICE, prefetch=sent, fhirServer=EHR, fhirAuthorization=AUTH)
        )
    issues = outcome(response, 412)
    assert issues[0]["expression"] == ["prefetch.conditions"]
    assert TOKEN not in response.text
    assert len(ehr.requests) == 1  # no retry, no redirect followed


def test_upstream_timeout_is_412_within_the_deadline(tmp_path: Path) -> None:
    data = rf01_data()
    ehr = ehr_serving(data)
    ehr.routes["Condition?patient=p1"] = _slow
    sent = {k: v for k, v in data.items() if k != "conditions"}
    # another key fetched quickly is not named
    fast = next((k for k in sent if k != "conditions" and sent[k] is not None), None)
    if fast is not None:
        del sent[fast]
    with make(tmp_path, ehr, prefetch_deadline_seconds=0.5) as client:
        started = time.monotonic()
        response = post(client, hook_request(SERVICE, prefetch=sent, fhirServer=EHR))
        elapsed = time.monotonic() - started
    issues = outcome(response, 412)
    assert issues[0]["expression"] == ["prefetch.conditions"]
    assert 0.4 <= elapsed < 2.5, elapsed


def test_prefetch_deadline_default_is_within_the_contract(tmp_path: Path) -> None:
    app = cds_app(tmp_path)
    assert 0 < app.state.runtime.settings.prefetch_deadline_seconds < 10


def test_access_token_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = rf01_data()
    ehr = ehr_serving(data)
    ehr.routes["Condition?patient=p1"] = httpx.Response(500, text=f"echo {TOKEN}")
    sent = {k: v for k, v in data.items() if k != "conditions"}
    with caplog.at_level(logging.DEBUG), make(tmp_path, ehr) as client:
        response = post(
            client, hook_request(SERVICE, prefetch=sent, fhirServer=EHR, fhirAuthorization=AUTH)
        )
    assert response.status_code == 412
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert TOKEN not in logged
