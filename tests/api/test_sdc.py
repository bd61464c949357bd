"""SDC API: $populate / $extract parameter forms and every error path; the form page routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_service.api.sdc import LFORMS_DIST
from tests.conftest import make_app

Q_URL = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"
POPULATE = "/fhir/Questionnaire/muscle-spasm-assessment/$populate"
TYPE_POPULATE = "/fhir/Questionnaire/$populate"
EXTRACT = "/fhir/QuestionnaireResponse/$extract"
FHIR = {"Content-Type": "application/fhir+json"}
ANSWERS = "http://example.org/fhir/muscle-spasm/CodeSystem/muscle-spasm-assessment"
SUBJECT = {"name": "subject", "valueReference": {"reference": "Patient/p1"}}
PAIN = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-11-30",
    "valueInteger": 5,
}
BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": PAIN}]}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module (the knowledge load dominates the run time)."""
    with TestClient(make_app(tmp_path_factory.mktemp("sdc"))) as test_client:
        yield test_client


def params(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(parameters)}


def qr(**fields: Any) -> dict[str, Any]:
    out = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": Q_URL,
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-12-01T10:00:00Z",
        "item": [{"linkId": "pain-nrs", "answer": [{"valueInteger": 6}]}, *RED_FLAGS_NO],
    }
    out.update(fields)
    return out


#: The red-flag items a completed response must answer (clinical-rules R2.7), answered "no".
RED_FLAGS_NO: list[dict[str, Any]] = [
    {"linkId": link_id, "answer": [{"valueBoolean": False}]}
    for link_id in (
        "new-weakness",
        "sensory-change",
        "other-neuro",
        "swelling",
        "skin-change",
        "self-care-tried",
    )
] + [
    {"linkId": link_id, "answer": [{"valueCoding": {"system": ANSWERS, "code": code}}]}
    for link_id, code in (("frequency", "first"), ("recent-injury", "none"))
]


def outcome(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    if code is not None:
        assert body["issue"][0]["code"] == code
    return body


def pain_answer(response: Any) -> list[Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "Parameters"
    qr_out = next(p["resource"] for p in body["parameter"] if p["name"] == "response")
    assert qr_out["status"] == "in-progress"
    found = []
    for group in qr_out.get("item", []):
        for item in group.get("item", []):
            if item["linkId"] == "pain-nrs":
                found += [a["valueInteger"] for a in item["answer"]]
    return found


# ---- $populate: every way of naming the questionnaire and passing data works


@pytest.mark.parametrize(
    ("path", "questionnaire"),
    [
        (POPULATE, None),
        (TYPE_POPULATE, {"name": "questionnaire", "valueCanonical": Q_URL}),
        (TYPE_POPULATE, {"name": "questionnaire", "valueCanonical": f"{Q_URL}|0.1.0"}),
        (TYPE_POPULATE, {"name": "questionnaire", "valueUri": Q_URL}),
        (TYPE_POPULATE, {"name": "questionnaire", "valueString": Q_URL}),
        (
            TYPE_POPULATE,
            {
                "name": "questionnaire",
                "valueReference": {"reference": "Questionnaire/muscle-spasm-assessment"},
            },
        ),
        (TYPE_POPULATE, {"name": "questionnaire", "valueReference": {"reference": Q_URL}}),
        (
            TYPE_POPULATE,
            {
                "name": "questionnaire",
                "resource": {"resourceType": "Questionnaire", "status": "draft", "url": Q_URL},
            },
        ),
        (TYPE_POPULATE, {"name": "canonical", "valueCanonical": Q_URL}),
        (
            TYPE_POPULATE,
            {
                "name": "questionnaireRef",
                "valueReference": {"reference": "Questionnaire/muscle-spasm-assessment"},
            },
        ),
        (f"{TYPE_POPULATE}?url={Q_URL}", None),
        (f"{TYPE_POPULATE}?url={Q_URL}&version=0.1.0", None),
    ],
)
def test_populate_questionnaire_forms(client: TestClient, path: str, questionnaire: Any) -> None:
    body = params(
        SUBJECT, {"name": "data", "resource": BUNDLE}, *([questionnaire] if questionnaire else [])
    )
    assert pain_answer(client.post(path, json=body, headers=FHIR)) == [5]


@pytest.mark.parametrize(
    "data",
    [
        [{"name": "data", "resource": BUNDLE}],
        [{"name": "data", "resource": PAIN}],
        [
            {
                "name": "context",
                "part": [
                    {"name": "name", "valueString": "observations"},
                    {"name": "content", "resource": BUNDLE},
                ],
            }
        ],
        [
            {
                "name": "context",
                "part": [
                    {"name": "name", "valueString": "patient"},
                    {"name": "content", "resource": BUNDLE},
                ],
            }
        ],
        [
            {
                "name": "context",
                "part": [{"name": "content", "resource": {**BUNDLE, "type": "searchset"}}],
            }
        ],
        [
            {
                "name": "context",
                "part": [{"name": "content", "valueReference": {"reference": "Observation/x"}}],
            },
            {"name": "context", "part": [{"name": "content", "resource": BUNDLE}]},
        ],
    ],
)
def test_populate_data_forms(client: TestClient, data: list[dict[str, Any]]) -> None:
    assert pain_answer(client.post(POPULATE, json=params(SUBJECT, *data), headers=FHIR)) == [5]


@pytest.mark.parametrize(
    "subject",
    [
        {"name": "subject", "valueReference": {"reference": "Patient/p1"}},
        {"name": "subject", "valueString": "Patient/p1"},
        {"name": "subject", "valueReference": {"reference": "http://ehr.example/fhir/Patient/p1"}},
    ],
)
def test_populate_subject_forms(client: TestClient, subject: dict[str, Any]) -> None:
    body = params(subject, {"name": "data", "resource": BUNDLE})
    assert pain_answer(client.post(POPULATE, json=body, headers=FHIR)) == [5]


def test_populate_get_forms(client: TestClient) -> None:
    assert pain_answer(client.get(f"{POPULATE}?subject=Patient/p1")) == []
    assert pain_answer(client.get(f"{TYPE_POPULATE}?url={Q_URL}&subject=p1")) == []
    response = client.get(f"{TYPE_POPULATE}?questionnaire={Q_URL}|0.1.0&subject=Patient/p1")
    body = response.json()
    qr_out = body["parameter"][0]["resource"]
    assert qr_out["subject"] == {"reference": "Patient/p1"}
    assert qr_out["questionnaire"] == f"{Q_URL}|0.1.0"
    assert [p["name"] for p in body["parameter"]] == ["response"]  # no issues, no 'issues'


# ---- $populate errors


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", POPULATE, None, 400),  # no subject
        ("POST", POPULATE, params({"name": "data", "resource": BUNDLE}), 400),  # no subject
        ("POST", POPULATE, params({"name": "subject", "valueBoolean": True}), 400),
        ("POST", POPULATE, params(SUBJECT, SUBJECT), 400),  # subject twice
        ("POST", POPULATE, {"resourceType": "Patient"}, 400),
        ("POST", POPULATE, {"resourceType": "Parameters", "parameter": {"name": "x"}}, 400),
        ("POST", POPULATE, params(SUBJECT, {"name": "data", "valueString": "x"}), 400),
        ("POST", POPULATE, params(SUBJECT, {"name": "context", "part": "x"}), 400),
        ("POST", TYPE_POPULATE, params(SUBJECT), 400),  # no questionnaire
        ("GET", f"{TYPE_POPULATE}?subject=Patient/p1", None, 400),
        (
            "POST",
            TYPE_POPULATE,
            params(SUBJECT, {"name": "questionnaire", "valueBoolean": True}),
            400,
        ),
        (
            "POST",
            TYPE_POPULATE,
            params(SUBJECT, {"name": "questionnaire", "resource": {"resourceType": "Patient"}}),
            400,
        ),
        ("GET", "/fhir/Questionnaire/nope/$populate?subject=Patient/p1", None, 404),
        ("POST", "/fhir/Questionnaire/nope/$populate", params(SUBJECT), 404),
        ("GET", f"{TYPE_POPULATE}?url=http://x/Questionnaire/nope&subject=Patient/p1", None, 404),
        ("GET", f"{TYPE_POPULATE}?url={Q_URL}&version=9.9&subject=Patient/p1", None, 404),
        (
            "POST",
            TYPE_POPULATE,
            params(SUBJECT, {"name": "canonical", "valueCanonical": "http://x/Q/nope"}),
            404,
        ),
        (
            "POST",
            TYPE_POPULATE,
            params(
                SUBJECT,
                {"name": "questionnaire", "valueReference": {"reference": "Questionnaire/nope"}},
            ),
            404,
        ),
    ],
)
def test_populate_errors(
    client: TestClient, method: str, path: str, body: Any, status: int
) -> None:
    response = client.request(method, path, json=body, headers=FHIR if body is not None else {})
    issue = outcome(response, status)["issue"][0]
    assert issue["severity"] == "error" and issue.get("diagnostics")


def test_populate_body_errors(client: TestClient) -> None:
    outcome(client.post(POPULATE, content=b"{not json", headers=FHIR), 400, "invalid")
    outcome(client.post(POPULATE, content=b"", headers=FHIR), 400, "invalid")
    outcome(
        client.post(POPULATE, json=params(SUBJECT), headers={"Content-Type": "text/plain"}), 415
    )


def test_populate_too_much_data(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path, max_resources=1)) as small:
        two = {**BUNDLE, "entry": [{"resource": PAIN}, {"resource": {**PAIN, "id": "o2"}}]}
        body = params(SUBJECT, {"name": "data", "resource": two})
        outcome(small.post(POPULATE, json=body, headers=FHIR), 413)


# ---- $extract


def test_extract_forms(client: TestClient) -> None:
    raw = client.post(EXTRACT, json=qr(), headers=FHIR)
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"].startswith("application/fhir+json")
    wrapped = client.post(
        EXTRACT,
        json=params({"name": "questionnaire-response", "resource": qr()}),
        headers={"Content-Type": "application/json"},
    )
    assert wrapped.status_code == 200
    for response in (raw, wrapped):
        bundle = response.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        [entry] = bundle["entry"]
        assert entry["request"] == {"method": "POST", "url": "Observation"}
        assert re.fullmatch(r"urn:uuid:.+", entry["fullUrl"])
        assert entry["resource"]["valueInteger"] == 6
    versioned = client.post(EXTRACT, json=qr(questionnaire=f"{Q_URL}|7.0.0"), headers=FHIR)
    assert versioned.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"resourceType": "Patient", "id": "x"}, 400, "invalid"),
        ([], 400, "invalid"),
        (params({"name": "other", "valueString": "x"}), 400, "invalid"),
        (params({"name": "questionnaire-response", "valueString": "x"}), 400, "invalid"),
        (
            params({"name": "questionnaire-response", "resource": {"resourceType": "Patient"}}),
            400,
            "invalid",
        ),
        ({**qr(), "status": None}, 400, "invalid"),
        ({**qr(), "item": "nope"}, 400, "invalid"),
        (qr(questionnaire="http://example.org/fhir/Questionnaire/other"), 422, "business-rule"),
        ({k: v for k, v in qr().items() if k != "questionnaire"}, 422, "business-rule"),
        (qr(item=[{"linkId": "pain-nrs", "answer": [{"valueString": "six"}]}]), 422, "invalid"),
        (qr(item=[{"linkId": "unknown", "answer": [{"valueString": "?"}]}]), 422, "invalid"),
    ],
)
def test_extract_errors(client: TestClient, body: Any, status: int, code: str) -> None:
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if v is not None}
    outcome(client.post(EXTRACT, json=body, headers=FHIR), status, code)


def test_extract_invalid_answer_is_located(client: TestClient) -> None:
    body = qr(
        item=[
            {
                "linkId": "symptoms",
                "item": [{"linkId": "pain-nrs", "answer": [{"valueInteger": 11}]}],
            }
        ]
    )
    issue = outcome(client.post(EXTRACT, json=body, headers=FHIR), 422)["issue"][0]
    assert issue["expression"] == ["QuestionnaireResponse.item[0].item[0].answer[0]"]


def test_extract_condition_needs_a_subject(client: TestClient) -> None:
    injury = {"valueCoding": {"system": "http://snomed.info/sct", "code": "90460009"}}
    body = {
        k: v
        for k, v in qr(
            item=[
                {"linkId": "pain-nrs", "answer": [{"valueInteger": 6}]},
                {"linkId": "recent-injury", "answer": [injury]},
                *(i for i in RED_FLAGS_NO if i["linkId"] != "recent-injury"),
            ]
        ).items()
        if k != "subject"
    }
    issue = outcome(client.post(EXTRACT, json=body, headers=FHIR), 422, "business-rule")["issue"][0]
    assert "Condition is not valid R4" in issue["diagnostics"]


def test_extract_body_errors(client: TestClient) -> None:
    outcome(client.post(EXTRACT, content=b"<xml/>", headers=FHIR), 400, "invalid")
    outcome(client.post(EXTRACT, json=qr(), headers={"Content-Type": "application/xml"}), 415)
    outcome(client.get(EXTRACT), client.get(EXTRACT).status_code)
    assert client.get(EXTRACT).status_code in (404, 405)


# ---- the form page


def test_form_page(client: TestClient) -> None:
    response = client.get("/forms/muscle-spasm-assessment")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'data-questionnaire-id="muscle-spasm-assessment"' in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/forms/") for s in sources), sources  # no CDN
    assert "/forms/lforms/webcomponent/main.js" in sources
    for name, media in (("form.js", "text/javascript"), ("form.css", "text/css")):
        asset = client.get(f"/forms/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)


@pytest.mark.parametrize(
    "path",
    [
        "/forms/unknown-questionnaire",
        "/forms/static/index.html",
        "/forms/static/package.json",
        "/forms/lforms/missing.js",
        "/forms/lforms/%2e%2e/%2e%2e/package.json",
        "/forms/lforms/..%2f..%2fpackage.json",
    ],
)
def test_form_routes_not_found(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


@pytest.mark.skipif(
    not (LFORMS_DIST / "webcomponent" / "main.js").is_file(),
    reason="lforms is not installed (scripts/browser-deps.sh)",
)
def test_lforms_assets_are_served_locally(client: TestClient) -> None:
    for path in (
        "webcomponent/main.js",
        "webcomponent/styles.css",
        "webcomponent/assets/lib/zone.min.js",
        "fhir/R4/lformsFHIR.min.js",
    ):
        response = client.get(f"/forms/lforms/{path}")
        assert response.status_code == 200, path
        assert len(response.content) > 1000
