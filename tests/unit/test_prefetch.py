"""Prefetch completion (``fhir_service/cds/prefetch.py``): contract "Prefetch",
https://cds-hooks.hl7.org/2.0/#prefetch-template.

A fake :class:`Fetcher` records every call, so each test states what is fetched and what is not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fhir_service.cds.prefetch import (
    PrefetchRequest,
    complete_prefetch,
    fill_template,
    is_error_outcome,
    next_link,
)
from fhir_service.errors import PreconditionFailed
from fhir_service.knowledge.services import PrefetchTemplate

BASE = "https://ehr.example/fhir"
CONDITIONS = PrefetchTemplate("conditions", "Condition?patient={{context.patientId}}", "Condition")
PATIENT = PrefetchTemplate("patient", "Patient/{{context.patientId}}", "Patient")
ENCOUNTER = PrefetchTemplate("encounter", "Encounter/{{context.encounterId}}", "Encounter")
PRACTITIONER = PrefetchTemplate("user", "Practitioner/{{userPractitionerId}}", "Practitioner")
TEMPLATES = [CONDITIONS, PATIENT, ENCOUNTER]
CONTEXT = {"userId": "Practitioner/dr-1", "patientId": "p1"}
OO = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeFetcher:
    def __init__(self, answers: dict[str, Any] | None = None, delay: float = 0.0) -> None:
        self.answers = answers or {}
        self.delay = delay
        self.calls: list[tuple[str, str, str | None]] = []

    async def fetch(self, base: str, relative: str, *, token: str | None) -> dict[str, Any] | None:
        self.calls.append((base, relative, token))
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.answers.get(f"{base}/{relative}")
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            raise RuntimeError(f"unexpected fetch {base}/{relative}")
        return dict(answer)


def bundle(*ids: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if ids:
        out["entry"] = [{"resource": {"resourceType": "Condition", "id": i}} for i in ids]
    return out | extra


def request(
    prefetch: dict[str, Any],
    *,
    server: str | None = BASE,
    token: str | None = None,
    context: dict[str, Any] | None = None,
) -> PrefetchRequest:
    return PrefetchRequest(context or CONTEXT, prefetch, server, token)


def missing(exc: pytest.ExceptionInfo[PreconditionFailed]) -> list[str]:
    (issue,) = exc.value.issues
    return list(issue.expression)


# -- fill_template ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "context", "expected"),
    [
        ("Condition?patient={{context.patientId}}", CONTEXT, "Condition?patient=p1"),
        ("Patient/{{ context.patientId }}", CONTEXT, "Patient/p1"),
        ("Practitioner/{{userPractitionerId}}", CONTEXT, "Practitioner/dr-1"),
        ("PractitionerRole/{{userPractitionerRoleId}}", CONTEXT, None),
        ("Patient/{{userPatientId}}", {"userId": "Patient/p9", "patientId": "p9"}, "Patient/p9"),
        (
            "RelatedPerson/{{userRelatedPersonId}}",
            {"userId": "RelatedPerson/r1", "patientId": "p1"},
            "RelatedPerson/r1",
        ),
        ("Encounter/{{context.encounterId}}", CONTEXT, None),
        ("Encounter/{{context.encounterId}}", CONTEXT | {"encounterId": ""}, None),
        (
            "Encounter/{{context.encounterId}}",
            CONTEXT | {"encounterId": "e 1/x"},
            "Encounter/e%201%2Fx",
        ),
        ("Encounter/{{context.encounterId}}", CONTEXT | {"encounterId": {"id": 1}}, None),
        ("Encounter/{{context.encounterId}}", CONTEXT | {"encounterId": True}, None),
        ("X?a={{context.selections}}", CONTEXT | {"selections": ["a"]}, None),
        ("X?a={{today()}}", CONTEXT, None),
        (
            "Condition?patient={{context.patientId}}&code=http://loinc.org|1",
            CONTEXT,
            "Condition?patient=p1&code=http://loinc.org|1",
        ),
    ],
)
def test_fill_template(template: str, context: dict[str, Any], expected: str | None) -> None:
    assert fill_template(template, context) == expected


def test_filled_values_are_url_encoded() -> None:
    assert fill_template("Patient/{{context.patientId}}", {"patientId": "a&b=c?d#e"}) == (
        "Patient/a%26b%3Dc%3Fd%23e"
    )


# -- is_error_outcome / next_link ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (OO, True),
        ({"resourceType": "OperationOutcome"}, True),
        (bundle(), False),
        ({"resourceType": "Bundle", "entry": [{"resource": OO}]}, True),
        (
            {
                "resourceType": "Bundle",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "OperationOutcome",
                            "issue": [{"severity": "fatal"}],
                        }
                    }
                ],
            },
            True,
        ),
        (
            {
                "resourceType": "Bundle",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "OperationOutcome",
                            "issue": [{"severity": "warning"}],
                        }
                    }
                ],
            },
            False,
        ),
        (
            {
                "resourceType": "Bundle",
                "entry": [{"resource": OO}, {"resource": {"resourceType": "Condition"}}],
            },
            False,
        ),
        ({"resourceType": "Patient"}, False),
        (None, False),
        ("OperationOutcome", False),
    ],
)
def test_is_error_outcome(value: Any, expected: bool) -> None:
    assert is_error_outcome(value) is expected


def test_next_link() -> None:
    assert next_link(bundle()) is None
    assert next_link(bundle(link=[{"relation": "self", "url": "x"}])) is None
    assert next_link(bundle(link=[{"relation": "next", "url": f"{BASE}/p2"}])) == f"{BASE}/p2"
    assert next_link(bundle(link=[{"relation": "next"}])) is None


# -- complete_prefetch ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_everything_sent_fetches_nothing() -> None:
    fetcher = FakeFetcher()
    sent = {"conditions": bundle("c1"), "patient": {"resourceType": "Patient", "id": "p1"}}
    result = await complete_prefetch(TEMPLATES, request(sent), fetcher, 5)
    assert fetcher.calls == []
    assert result == {"conditions": bundle("c1"), "patient": sent["patient"], "encounter": None}


@pytest.mark.anyio
@pytest.mark.parametrize("token", [None, "tok"])
async def test_absent_key_fetched_with_filled_template_and_token(token: str | None) -> None:
    fetcher = FakeFetcher({f"{BASE}/Condition?patient=p1": bundle("c1")})
    result = await complete_prefetch(TEMPLATES, request({"patient": None}, token=token), fetcher, 5)
    assert fetcher.calls == [(BASE, "Condition?patient=p1", token)]
    assert result["conditions"] == bundle("c1")
    assert result["patient"] is None


@pytest.mark.anyio
async def test_null_and_empty_searchset_are_never_fetched() -> None:
    fetcher = FakeFetcher()
    result = await complete_prefetch(
        TEMPLATES, request({"conditions": bundle(), "patient": None}), fetcher, 5
    )
    assert fetcher.calls == []
    assert result["conditions"] == bundle()


@pytest.mark.anyio
@pytest.mark.parametrize("value", [OO, {"resourceType": "Bundle", "entry": [{"resource": OO}]}])
async def test_operation_outcome_is_unobtainable_and_never_fetched(value: Any) -> None:
    fetcher = FakeFetcher({f"{BASE}/Condition?patient=p1": bundle("c1")})
    with pytest.raises(PreconditionFailed) as exc:
        await complete_prefetch(
            TEMPLATES, request({"conditions": value, "patient": None}), fetcher, 5
        )
    assert missing(exc) == ["prefetch.conditions"]
    assert exc.value.status_code == 412
    assert fetcher.calls == []


@pytest.mark.anyio
async def test_no_fhir_server_names_every_missing_key() -> None:
    with pytest.raises(PreconditionFailed) as exc:
        await complete_prefetch(TEMPLATES, request({}, server=None), FakeFetcher(), 5)
    assert missing(exc) == ["prefetch.conditions", "prefetch.patient"]
    assert "conditions" in str(exc.value.issues[0].diagnostics)


@pytest.mark.anyio
async def test_no_fetcher_is_412() -> None:
    with pytest.raises(PreconditionFailed) as exc:
        await complete_prefetch([CONDITIONS], request({}), None, 5)
    assert missing(exc) == ["prefetch.conditions"]


@pytest.mark.anyio
async def test_unfillable_template_is_not_needed() -> None:
    fetcher = FakeFetcher()
    result = await complete_prefetch(
        [ENCOUNTER, PRACTITIONER],
        request({}, server=None, context={"userId": "PractitionerRole/r1", "patientId": "p1"}),
        fetcher,
        5,
    )
    assert result == {"encounter": None, "user": None}
    assert fetcher.calls == []


@pytest.mark.anyio
async def test_upstream_failure_is_412_naming_only_that_key() -> None:
    fetcher = FakeFetcher(
        {
            f"{BASE}/Condition?patient=p1": RuntimeError("boom"),
            f"{BASE}/Patient/p1": {"resourceType": "Patient", "id": "p1"},
        }
    )
    with pytest.raises(PreconditionFailed) as exc:
        await complete_prefetch(TEMPLATES, request({}), fetcher, 5)
    assert missing(exc) == ["prefetch.conditions"]


@pytest.mark.anyio
async def test_deadline_is_412_naming_the_pending_keys_only() -> None:
    class Mixed(FakeFetcher):
        async def fetch(
            self, base: str, relative: str, *, token: str | None
        ) -> dict[str, Any] | None:
            self.calls.append((base, relative, token))
            if relative.startswith("Condition"):
                await asyncio.sleep(10)
            return {"resourceType": "Patient", "id": "p1"}

    started = time.monotonic()
    with pytest.raises(PreconditionFailed) as exc:
        await complete_prefetch(TEMPLATES, request({}), Mixed(), 0.2)
    assert time.monotonic() - started < 1.5
    assert missing(exc) == ["prefetch.conditions"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("link", "base", "relative"),
    [
        (f"{BASE}/Condition?patient=p1&page=2", BASE, "Condition?patient=p1&page=2"),
        (
            "https://ehr.example/fhir?_getpages=abc&_getpagesoffset=20",
            "https://ehr.example",
            "fhir?_getpages=abc&_getpagesoffset=20",
        ),
        ("https://ehr.example/fhir/?page=2", "https://ehr.example/fhir", "?page=2"),
        ("https://ehr.example/other/page/2", "https://ehr.example/other/page", "2"),
    ],
)
async def test_next_link_on_the_fhir_server_origin_is_followed(
    link: str, base: str, relative: str
) -> None:
    fetcher = FakeFetcher({f"{base}/{relative}": bundle("c2")})
    sent = bundle("c1", link=[{"relation": "next", "url": link}])
    result = await complete_prefetch(
        [CONDITIONS], request({"conditions": sent}, token="tok"), fetcher, 5
    )
    assert fetcher.calls == [(base, relative, "tok")]
    assert [e["resource"]["id"] for e in result["conditions"]["entry"]] == ["c1", "c2"]
    assert "link" not in result["conditions"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "link",
    [
        "https://evil.example/fhir/Condition?page=2",
        "http://ehr.example/fhir/Condition?page=2",
        "https://ehr.example:8443/fhir/Condition?page=2",
        "Condition?page=2",
    ],
)
async def test_next_link_off_origin_is_412_without_a_fetch(link: str) -> None:
    fetcher = FakeFetcher()
    sent = bundle("c1", link=[{"relation": "next", "url": link}])
    with pytest.raises(PreconditionFailed) as exc:
        await complete_prefetch([CONDITIONS], request({"conditions": sent}), fetcher, 5)
    assert missing(exc) == ["prefetch.conditions"]
    assert fetcher.calls == []


@pytest.mark.anyio
async def test_next_link_without_fhir_server_is_412() -> None:
    sent = bundle("c1", link=[{"relation": "next", "url": f"{BASE}/Condition?page=2"}])
    with pytest.raises(PreconditionFailed):
        await complete_prefetch(
            [CONDITIONS], request({"conditions": sent}, server=None), FakeFetcher(), 5
        )


@pytest.mark.anyio
async def test_no_templates_is_nothing_to_do() -> None:
    assert await complete_prefetch([], request({}), None, 5) == {}
