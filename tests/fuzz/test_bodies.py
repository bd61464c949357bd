"""Random and malformed bodies for every endpoint that takes one (FHIR bodies are opaque in the
OpenAPI, so schemathesis cannot reach inside them): never a 5xx, every 4xx an OperationOutcome.

Bodies: raw bytes, non-JSON text, NaN/Infinity/1e999, huge integers, lone surrogates, deep
nesting, random unicode; hook envelopes whose members (``hook``, ``hookInstance``, ``context``,
``prefetch``, ``draftOrders``, ``fhirServer``, ``fhirAuthorization``) take random types and
whose prefetch holds random resources; feedback arrays of half-valid items; random
``Parameters`` for ``$apply`` / ``$populate``; random QuestionnaireResponses for ``$extract``.
Deterministic (seeded, derandomised); ``FUZZ_EXAMPLES`` raises the example counts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import strategies as st

from tests.faults.apps import build_app
from tests.fuzz.conftest import SEED, SENT, check_response, examples

SERVICES = {
    "muscle-spasm-patient-view": "patient-view",
    "muscle-spasm-order-sign": "order-sign",
    "muscle-spasm-order-select": "order-select",
    "muscle-spasm-encounter-start": "encounter-start",
}
BODY_ENDPOINTS = [
    "/cds-services/muscle-spasm-patient-view",
    "/cds-services/muscle-spasm-order-sign",
    "/cds-services/muscle-spasm-patient-view/feedback",
    "/fhir/PlanDefinition/rf-01/$apply",
    "/fhir/Questionnaire/$populate",
    "/fhir/QuestionnaireResponse/$extract",
]
QUESTIONNAIRE = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"
RESOURCE_TYPES = [
    "Patient",
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationStatement",
    "QuestionnaireResponse",
    "Encounter",
    "Bundle",
    "OperationOutcome",
    "MedicationOrder",
    "Parameters",
]


def fuzz_settings(default: int) -> Any:
    return hypothesis.settings(
        max_examples=examples(default),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )


@pytest.fixture(scope="module")
def prefetch_keys(client: TestClient) -> dict[str, list[str]]:
    services = client.get("/cds-services").json()["services"]
    return {s["id"]: sorted(s.get("prefetch") or {}) for s in services}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = build_app(Path(tempfile.mkdtemp(prefix="fuzz-bodies-")))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def send(
    client: TestClient, path: str, content: bytes, content_type: str = "application/json"
) -> None:
    SENT[f"bodies {path}"] += 1
    response = client.post(path, content=content, headers={"content-type": content_type})
    check_response(
        response.status_code,
        response.content,
        response.headers.get("content-type", ""),
        f"POST {path} {content[:120]!r}",
    )


def dumps(value: Any) -> bytes:
    """JSON text of ``value`` as a client could send it (huge ints and NaN allowed)."""
    import json

    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


# -- strategies ------------------------------------------------------------------------------


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` 80 % of the time, ``odd`` otherwise (plain ``|`` would be 50/50)."""
    return st.integers(0, 9).flatmap(lambda roll: usual if roll < 8 else odd)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | mostly(st.floats(allow_nan=False, allow_infinity=False), st.floats())
    | st.text(max_size=20)
    | st.sampled_from(["", "Patient/p1", "p1", "2026-12-01", "http://ehr.test/fhir", "active"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
codings = st.fixed_dictionaries(
    {},
    optional={
        "system": st.sampled_from(["http://snomed.info/sct", "http://loinc.org", ""]) | scalars,
        "code": st.sampled_from(["45352006", "90460009", "72514-3", "21949"]) | scalars,
        "display": scalars,
    },
)
resources = st.builds(
    lambda rtype, extra, rid: {"resourceType": rtype, "id": rid, **extra},
    mostly(st.sampled_from(RESOURCE_TYPES), scalars),
    st.dictionaries(
        st.sampled_from(
            [
                "status",
                "code",
                "clinicalStatus",
                "verificationStatus",
                "onsetDateTime",
                "effectiveDateTime",
                "valueQuantity",
                "valueCodeableConcept",
                "medicationCodeableConcept",
                "subject",
                "questionnaire",
                "item",
                "authored",
                "entry",
                "link",
                "contained",
            ]
        ),
        json_values | st.fixed_dictionaries({"coding": st.lists(codings, max_size=3)}),
        max_size=6,
    ),
    mostly(st.from_regex(r"[A-Za-z0-9\-.]{1,16}", fullmatch=True), scalars),
)
bundles = st.builds(
    lambda entries, extra: {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": entries,
        **extra,
    },
    st.lists(mostly(st.fixed_dictionaries({"resource": resources}), json_values), max_size=5),
    st.dictionaries(st.sampled_from(["link", "total", "type"]), json_values, max_size=2),
)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "userId": st.sampled_from(["Practitioner/u1", "PractitionerRole/r"]) | scalars,
        "patientId": st.sampled_from(["p1", "Patient/p1", "../Patient?_count=1"]) | scalars,
        "encounterId": scalars,
        "selections": st.lists(scalars, max_size=3) | json_values,
        "draftOrders": bundles | json_values,
    },
)
prefetches = st.dictionaries(
    st.sampled_from(["patient", "conditions", "observations", "medicationRequests", "x"])
    | st.text(max_size=6),
    st.none() | bundles | resources | json_values,
    max_size=4,
)


@st.composite
def valid_envelopes(draw: st.DrawFn, hook: str, keys: list[str]) -> dict[str, Any]:
    """A well-formed envelope whose every advertised prefetch key holds random data, so the
    call gets past the envelope and the prefetch and into the rules."""
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": "p1"}
    if hook == "encounter-start":
        context["encounterId"] = "e1"
    if hook in ("order-sign", "order-select"):
        context["draftOrders"] = draw(bundles)
    if hook == "order-select":
        context["selections"] = draw(
            st.lists(st.sampled_from(["MedicationRequest/d1", "x"]) | scalars, max_size=2)
        )
    prefetch = {k: draw(mostly(st.none() | bundles, resources | json_values)) for k in keys}
    prefetch.update(draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)))
    return {
        "hook": hook,
        "hookInstance": draw(st.uuids()).hex,
        "context": context,
        "prefetch": prefetch,
    }


@st.composite
def hook_envelopes(draw: st.DrawFn, hook: str) -> dict[str, Any]:
    """A hook body whose every member is either plausible or of a random type."""
    body: dict[str, Any] = {}
    members = {
        "hook": st.just(hook) | scalars,
        "hookInstance": st.uuids().map(str) | scalars,
        "context": contexts | json_values,
        "prefetch": prefetches | json_values,
        "fhirServer": st.sampled_from(["http://127.0.0.1:9/fhir", "https://10.0.0.1"]) | scalars,
        "fhirAuthorization": st.fixed_dictionaries({"access_token": scalars, "token_type": scalars})
        | json_values,
    }
    for name, strategy in members.items():
        roll = draw(st.integers(0, 9))
        if roll < 7 or name in ("hook", "hookInstance", "context"):
            if roll < 8:
                body[name] = draw(strategy)
    return body


feedback_items = st.fixed_dictionaries(
    {},
    optional={
        "card": st.uuids().map(str) | scalars,
        "outcome": st.sampled_from(["accepted", "overridden", "ignored"]) | scalars,
        "outcomeTimestamp": st.sampled_from(
            ["2026-12-01T12:00:00Z", "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+01:00"]
        )
        | scalars,
        "acceptedSuggestions": st.lists(st.fixed_dictionaries({"id": scalars}), max_size=2)
        | json_values,
        "overrideReason": st.fixed_dictionaries(
            {}, optional={"reason": codings | json_values, "userComment": scalars}
        )
        | json_values,
    },
)
feedback_bodies = st.fixed_dictionaries({"feedback": st.lists(feedback_items, max_size=4)}) | (
    json_values
)
VALUE_KEYS = [
    "valueString",
    "valueReference",
    "valueCanonical",
    "valueUri",
    "valueBoolean",
    "valueInteger",
    "resource",
    "valueDate",
]
parameter_parts = st.builds(
    lambda name, key, value, parts: {"name": name, key: value, **parts},
    mostly(
        st.sampled_from(
            ["subject", "data", "questionnaire", "canonical", "context", "content", "local", "x"]
        ),
        scalars,
    ),
    st.sampled_from(VALUE_KEYS),
    st.sampled_from(["Patient/p1", QUESTIONNAIRE, {"reference": "Patient/p1"}])
    | bundles
    | resources
    | json_values,
    st.dictionaries(st.just("part"), st.lists(json_values, max_size=2), max_size=1),
)
apply_parameters = st.builds(
    lambda data, extra: {
        "resourceType": "Parameters",
        "parameter": [{"name": "subject", "valueString": "Patient/p1"}, data, *extra],
    },
    st.builds(lambda b: {"name": "data", "resource": b}, bundles),
    st.lists(parameter_parts, max_size=1),
)
populate_parameters = st.builds(
    lambda q, data, extra: {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subject", "valueReference": {"reference": "Patient/p1"}},
            q,
            data,
            *extra,
        ],
    },
    st.sampled_from(
        [
            {"name": "questionnaire", "valueCanonical": QUESTIONNAIRE},
            {"name": "canonical", "valueCanonical": QUESTIONNAIRE + "|0.1.0"},
            {"name": "questionnaire", "valueUri": "http://other/Q"},
        ]
    ),
    st.builds(lambda b: {"name": "context", "part": [{"name": "content", "resource": b}]}, bundles)
    | st.builds(lambda b: {"name": "data", "resource": b}, bundles),
    st.lists(parameter_parts, max_size=2),
)
parameters_bodies = mostly(
    apply_parameters | populate_parameters,
    st.builds(
        lambda params, extra: {"resourceType": "Parameters", "parameter": params, **extra},
        st.lists(parameter_parts, max_size=5) | json_values,
        st.dictionaries(st.sampled_from(["id", "meta"]), json_values, max_size=1),
    )
    | resources
    | json_values,
)


@st.composite
def qr_items(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    item: dict[str, Any] = {
        "linkId": draw(
            st.sampled_from(["pain-nrs", "recent-injury", "injury-date", "new-weakness", "x"])
            | scalars
        )
    }
    if draw(st.booleans()):
        item["answer"] = draw(
            st.lists(
                st.dictionaries(
                    st.sampled_from(
                        ["valueInteger", "valueBoolean", "valueCoding", "valueDate", "valueString"]
                    ),
                    json_values | codings,
                    max_size=2,
                ),
                max_size=2,
            )
            | json_values
        )
    if depth < 3 and draw(st.booleans()):
        item["item"] = draw(st.lists(qr_items(depth + 1), max_size=3))
    return item


qr_bodies = (
    st.builds(
        lambda q, status, items: {
            "resourceType": "QuestionnaireResponse",
            "questionnaire": q,
            "status": status,
            "item": items,
        },
        st.sampled_from([QUESTIONNAIRE, QUESTIONNAIRE + "|1.0", "http://other/Q"]) | scalars,
        st.sampled_from(["completed", "in-progress"]) | scalars,
        st.lists(qr_items(), max_size=4) | json_values,
    )
    | st.builds(
        lambda qr: {
            "resourceType": "Parameters",
            "parameter": [{"name": "questionnaire-response", "resource": qr}],
        },
        st.lists(qr_items(), max_size=2).map(
            lambda items: {
                "resourceType": "QuestionnaireResponse",
                "questionnaire": QUESTIONNAIRE,
                "status": "completed",
                "item": items,
            }
        ),
    )
    | json_values
)

RAW_BODIES = [
    b"",
    b"   ",
    b"null",
    b"[]",
    b"{",
    b'{"hook": NaN}',
    b'{"hook": Infinity, "hookInstance": -Infinity}',
    b'{"hook": 1e999, "context": {}}',
    b'{"hook": "patient-view", "hookInstance": "x", "context": {"patientId": 1e999}}',
    b'{"a": 123456789012345678901234567890123456789012345678901234567890}',
    b'{"hook": "\\ud800", "hookInstance": "\\udfff", "context": {}}',
    b'{"hook": "patient-view"}\x00',
    b"\xff\xfe\xfd",
    b"\xef\xbb\xbf{}",
    b'{"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "\\u0000"}]}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b'{"feedback": ' + b"[" * 2_000 + b"]" * 2_000 + b"}",
]


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
def test_fixed_malformed_bodies(client: TestClient, path: str) -> None:
    for raw in RAW_BODIES:
        send(client, path, raw)
    send(client, path, b"{}", "text/plain")
    send(client, path, b"{}", "application/xml")
    send(client, path, b"{}", "")


ODD_ENTRIES: list[Any] = [
    True,
    1,
    "entry",
    {},
    [1],
    [None],
    [{"resource": 1}],
    [{"resource": {"resourceType": 1}}],
    [{"resource": {"resourceType": "Bundle", "entry": True}}],
    [{"resource": {"resourceType": "Bundle", "entry": [{"resource": "x"}]}}],
]


def _odd_bundles(kind: str) -> list[dict[str, Any]]:
    return [{"resourceType": "Bundle", "type": kind, "entry": entry} for entry in ODD_ENTRIES]


@pytest.mark.parametrize("service_id", sorted(SERVICES))
def test_bundles_with_wrong_typed_entries_in_hook_calls(
    client: TestClient, prefetch_keys: dict[str, list[str]], service_id: str
) -> None:
    """Every advertised key sent (null), then one Bundle at a time with an odd ``entry``:
    in a prefetch searchset and, for order hooks, as ``draftOrders``."""
    hook = SERVICES[service_id]
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": "p1"}
    if hook == "encounter-start":
        context["encounterId"] = "e1"
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/d1"]
    keys = prefetch_keys[service_id]
    searches = [k for k in keys if k not in ("patient", "encounter")]
    for bundle in _odd_bundles("searchset"):
        draft_orders = bundle | {"type": "collection"}
        bodies = []
        if hook in ("order-sign", "order-select"):
            bodies.append({**context, "draftOrders": draft_orders})
        elif searches:
            bodies.append(context)
        for ctx in bodies:
            prefetch: dict[str, Any] = dict.fromkeys(keys)
            if searches and "draftOrders" not in ctx:
                prefetch[searches[0]] = bundle
            body = {"hook": hook, "hookInstance": "odd-entry", "context": ctx, "prefetch": prefetch}
            send(client, f"/cds-services/{service_id}", dumps(body))


@pytest.mark.parametrize(
    "path", ["/fhir/PlanDefinition/rf-01/$apply", "/fhir/Questionnaire/$populate"]
)
def test_bundles_with_wrong_typed_entries_in_operation_data(client: TestClient, path: str) -> None:
    subject = (
        {"name": "subject", "valueString": "Patient/p1"}
        if "$apply" in path
        else {"name": "subject", "valueReference": {"reference": "Patient/p1"}}
    )
    for bundle in _odd_bundles("collection"):
        parameters = [subject, {"name": "data", "resource": bundle}]
        if "$populate" in path:
            parameters.append({"name": "questionnaire", "valueCanonical": QUESTIONNAIRE})
        body = {"resourceType": "Parameters", "parameter": parameters}
        send(client, path, dumps(body), "application/fhir+json")


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
@fuzz_settings(30)
@hypothesis.seed(SEED)
@hypothesis.given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes(client: TestClient, path: str, raw: bytes) -> None:
    send(client, path, raw)


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
@fuzz_settings(30)
@hypothesis.seed(SEED)
@hypothesis.given(value=json_values)
def test_random_json(client: TestClient, path: str, value: Any) -> None:
    send(client, path, dumps(value))


@pytest.mark.parametrize("service_id", sorted(SERVICES))
@fuzz_settings(50)
@hypothesis.seed(SEED)
@hypothesis.given(data=st.data())
def test_hook_envelopes(
    client: TestClient,
    prefetch_keys: dict[str, list[str]],
    service_id: str,
    data: st.DataObject,
) -> None:
    hook = SERVICES[service_id]
    body = data.draw(
        valid_envelopes(hook, prefetch_keys[service_id]) | hook_envelopes(hook), label="body"
    )
    send(client, f"/cds-services/{service_id}", dumps(body))


@fuzz_settings(80)
@hypothesis.seed(SEED)
@hypothesis.given(body=feedback_bodies)
def test_feedback_bodies(client: TestClient, body: Any) -> None:
    send(client, "/cds-services/muscle-spasm-patient-view/feedback", dumps(body))


@pytest.mark.parametrize(
    "path", ["/fhir/PlanDefinition/rf-01/$apply", "/fhir/Questionnaire/$populate"]
)
@fuzz_settings(60)
@hypothesis.seed(SEED)
@hypothesis.given(body=parameters_bodies)
def test_parameters_bodies(client: TestClient, path: str, body: Any) -> None:
    send(client, path, dumps(body), "application/fhir+json")


@fuzz_settings(60)
@hypothesis.seed(SEED)
@hypothesis.given(body=qr_bodies)
def test_extract_bodies(client: TestClient, body: Any) -> None:
    send(client, "/fhir/QuestionnaireResponse/$extract", dumps(body), "application/fhir+json")


def test_orjson_rejects_what_json_allows() -> None:
    """Guard for the strategies above: NaN/Infinity really reach the service as such."""
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(dumps({"x": float("nan")}))
