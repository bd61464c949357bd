"""``ValueSet/$expand`` and ``ValueSet/$validate-code`` over HTTP (contract "Additions of 2026-12").

The MS-04 arrhythmia set states ICD-10-CM ``I48`` intensionally; its stored expansion lists
every descendant, so ``$expand`` shows ``I48.91`` with its display and ``$validate-code``
accepts it with or without the dot and in any case. Paging, POST bodies, 404s and 400s are
covered for both operations; both are declared in the CapabilityStatement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_service.fhir import validate_resource
from tests.conftest import make_app

FHIR_JSON = "application/fhir+json"
BASE = "http://example.org/fhir/muscle-spasm/ValueSet"
MS04 = f"{BASE}/vs-arrhythmia"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
AF_DISPLAY = "Unspecified atrial fibrillation"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path_factory.mktemp("tx"))) as test_client:
        yield test_client


def params(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(parts)}


def post(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path, json=body, headers={"Content-Type": FHIR_JSON})


def out(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters → {name: value}."""
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in parameters["parameter"]
    }


def codes(expanded: dict[str, Any]) -> list[str]:
    return [c["code"] for c in expanded["expansion"].get("contains", [])]


# --- $expand ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(client: TestClient) -> dict[str, Any]:
    response = client.get("/fhir/ValueSet/vs-arrhythmia/$expand")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = response.json()
    return body


def test_expand_lists_every_descendant_with_its_display(full: dict[str, Any]) -> None:
    validate_resource(full)  # a valid R4 ValueSet
    assert full["resourceType"] == "ValueSet" and full["url"] == MS04
    contains = full["expansion"]["contains"]
    assert full["expansion"]["total"] == len(contains) > 10
    af = [c for c in contains if c["code"] == "I48.91"]
    assert af == [{**af[0], "system": ICD, "code": "I48.91", "display": AF_DISPLAY}]
    assert {"I48", "I48.0", "I48.11", "I48.92"} <= set(codes(full))  # category, leaves
    assert any(c["system"] == SCT and c["code"] == "49436004" for c in contains)
    assert all(isinstance(c.get("display"), str) for c in contains)
    assert "compose" not in full  # includeDefinition defaults to false


def test_expand_by_url_get_and_post_agree(client: TestClient, full: dict[str, Any]) -> None:
    by_url = client.get("/fhir/ValueSet/$expand", params={"url": MS04})
    assert by_url.status_code == 200
    posted = post(client, "/fhir/ValueSet/$expand", params({"name": "url", "valueUri": MS04}))
    assert posted.status_code == 200
    assert by_url.json() == posted.json() == full


def test_expand_includes_the_definition_on_request(client: TestClient) -> None:
    response = client.get(
        "/fhir/ValueSet/vs-arrhythmia/$expand", params={"includeDefinition": "true"}
    )
    filters = [
        f["value"]
        for include in response.json()["compose"]["include"]
        for f in include.get("filter", [])
    ]
    assert "I48" in filters


def test_expand_pages_with_count_and_offset(client: TestClient, full: dict[str, Any]) -> None:
    everything = codes(full)
    pages = []
    for offset in range(0, len(everything), 40):
        response = client.get(
            "/fhir/ValueSet/vs-arrhythmia/$expand", params={"count": 40, "offset": offset}
        )
        assert response.status_code == 200
        expansion = response.json()["expansion"]
        assert expansion["total"] == len(everything)
        assert expansion["offset"] == offset
        assert {"name": "count", "valueInteger": 40} in expansion["parameter"]
        pages += codes(response.json())
    assert pages == everything


def test_expand_pages_by_post(client: TestClient, full: dict[str, Any]) -> None:
    body = params(
        {"name": "url", "valueUri": MS04},
        {"name": "count", "valueInteger": 3},
        {"name": "offset", "valueInteger": 5},
    )
    response = post(client, "/fhir/ValueSet/$expand", body)
    assert response.status_code == 200
    assert codes(response.json()) == codes(full)[5:8]


@pytest.mark.parametrize(("query", "size"), [({"count": 0}, 0), ({"offset": 100000}, 0)])
def test_expand_empty_pages_keep_the_total(
    client: TestClient, full: dict[str, Any], query: dict[str, int], size: int
) -> None:
    response = client.get("/fhir/ValueSet/vs-arrhythmia/$expand", params=query)
    assert response.status_code == 200
    assert len(codes(response.json())) == size
    assert response.json()["expansion"]["total"] == full["expansion"]["total"]


def test_expand_filter_narrows_by_text(client: TestClient) -> None:
    response = client.get(
        "/fhir/ValueSet/vs-arrhythmia/$expand", params={"filter": "atrial FIBRILLATION"}
    )
    contains = response.json()["expansion"]["contains"]
    assert "I48.91" in [c["code"] for c in contains]
    assert all("atrial fibrillation" in c["display"].lower() for c in contains)
    assert response.json()["expansion"]["total"] == len(contains)


def test_expand_of_a_set_without_filters(client: TestClient) -> None:
    response = client.get("/fhir/ValueSet/vs-pain-score/$expand")
    assert response.status_code == 200
    assert set(codes(response.json())) == {"72514-3", "38208-5"}


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/fhir/ValueSet/vs-nope/$expand", {}),
        ("/fhir/ValueSet/$expand", {"url": f"{BASE}/vs-nope"}),
        ("/fhir/ValueSet/$expand", {"url": MS04, "valueSetVersion": "9.9.9"}),
        ("/fhir/ValueSet/vs-arrhythmia/$expand", {"valueSetVersion": "9.9.9"}),
        ("/fhir/ValueSet/vs-nope/$validate-code", {"system": ICD, "code": "I48.91"}),
        ("/fhir/ValueSet/$validate-code", {"url": f"{BASE}/x", "system": ICD, "code": "I48.91"}),
    ],
)
def test_unknown_value_set_is_404(client: TestClient, path: str, query: dict[str, str]) -> None:
    response = client.get(path, params=query)
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["code"] == "not-found"


def test_unknown_value_set_is_404_on_post(client: TestClient) -> None:
    body = params({"name": "url", "valueUri": f"{BASE}/vs-nope"})
    assert post(client, "/fhir/ValueSet/$expand", body).status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        {},  # no url on the type-level operation
        {"url": MS04, "count": "-1"},
        {"url": MS04, "count": "ten"},
        {"url": MS04, "offset": "1.5"},
        {"url": MS04, "includeDefinition": "maybe"},
        {"url": MS04, "valueSet": "{}"},
        {"url": ""},
    ],
)
def test_bad_expand_query_is_400(client: TestClient, query: dict[str, str]) -> None:
    response = client.get("/fhir/ValueSet/$expand", params=query)
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_a_repeated_query_parameter_is_400(client: TestClient) -> None:
    response = client.get("/fhir/ValueSet/vs-arrhythmia/$expand?count=1&count=2")
    assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Bundle"},
        [],
        params({"name": "url", "valueUri": MS04}, {"name": "count", "valueString": "3"}),
        params({"name": "url", "valueUri": MS04}, {"name": "count", "valueInteger": -3}),
        params({"name": "url", "valueUri": MS04}, {"name": "offset", "valueInteger": True}),
        params({"name": "url", "valueUri": MS04}, {"name": "url", "valueUri": MS04}),
        params({"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "draft"}}),
        params({"name": "url", "valueBoolean": True}),
    ],
)
def test_bad_expand_body_is_400(client: TestClient, body: Any) -> None:
    response = post(client, "/fhir/ValueSet/$expand", body)
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_expand_body_that_is_not_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/fhir/ValueSet/$expand", content=b"{", headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code == 400


# --- $validate-code --------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["I48.91", "I4891", "i48.91", "i4891"])
@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/fhir/ValueSet/vs-arrhythmia/$validate-code", {}),
        ("/fhir/ValueSet/$validate-code", {"url": MS04}),
    ],
)
def test_validate_code_accepts_any_spelling(
    client: TestClient, path: str, extra: dict[str, str], code: str
) -> None:
    response = client.get(path, params={**extra, "system": ICD, "code": code})
    assert response.status_code == 200, response.text
    validate_resource(response.json())
    assert out(response.json()) == {
        "result": True,
        "code": "I48.91",
        "system": ICD,
        "display": AF_DISPLAY,
    }


def test_validate_code_false_for_a_code_outside_the_set(client: TestClient) -> None:
    response = client.get(
        "/fhir/ValueSet/vs-arrhythmia/$validate-code", params={"system": ICD, "code": "Z00.00"}
    )
    assert response.status_code == 200
    answer = out(response.json())
    assert answer["result"] is False
    assert "display" not in answer
    assert "Z00.00" in answer["message"] and MS04 in answer["message"]


def test_validate_code_checks_the_system(client: TestClient) -> None:
    response = client.get(
        "/fhir/ValueSet/vs-arrhythmia/$validate-code", params={"system": SCT, "code": "I48.91"}
    )
    assert out(response.json())["result"] is False


def test_validate_code_post_coding(client: TestClient) -> None:
    body = params(
        {"name": "url", "valueUri": MS04},
        {"name": "coding", "valueCoding": {"system": SCT, "code": "49436004"}},
    )
    answer = out(post(client, "/fhir/ValueSet/$validate-code", body).json())
    assert answer["result"] is True and answer["code"] == "49436004"
    assert isinstance(answer["display"], str)


def test_validate_code_post_codeable_concept_any_coding(client: TestClient) -> None:
    concept = {
        "coding": [{"system": ICD, "code": "Z00.00"}, {"system": ICD, "code": "i4891"}],
        "text": "AF",
    }
    body = params({"name": "codeableConcept", "valueCodeableConcept": concept})
    response = post(client, "/fhir/ValueSet/vs-arrhythmia/$validate-code", body)
    assert out(response.json())["display"] == AF_DISPLAY


def test_validate_code_post_code_and_system(client: TestClient) -> None:
    body = params(
        {"name": "url", "valueUri": MS04},
        {"name": "system", "valueUri": ICD},
        {"name": "code", "valueCode": "Z00.00"},
    )
    assert out(post(client, "/fhir/ValueSet/$validate-code", body).json())["result"] is False


def test_validate_code_reports_a_different_display(client: TestClient) -> None:
    response = client.get(
        "/fhir/ValueSet/vs-arrhythmia/$validate-code",
        params={"system": ICD, "code": "I48.91", "display": "Heart flutter"},
    )
    answer = out(response.json())
    assert answer["result"] is True
    assert "Heart flutter" in answer["message"]
    same = client.get(
        "/fhir/ValueSet/vs-arrhythmia/$validate-code",
        params={"system": ICD, "code": "I48.91", "display": AF_DISPLAY.upper()},
    )
    assert "message" not in out(same.json())


@pytest.mark.parametrize(
    "query",
    [
        {"code": "I48.91"},  # no system
        {"system": ICD},  # no code
        {},
        {"system": ICD, "code": ""},
        {"coding": f"{ICD}|I48.91"},  # a POST parameter
    ],
)
def test_bad_validate_code_query_is_400(client: TestClient, query: dict[str, str]) -> None:
    response = client.get("/fhir/ValueSet/vs-arrhythmia/$validate-code", params=query)
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "parts",
    [
        [
            {"name": "code", "valueCode": "I48.91"},
            {"name": "system", "valueUri": ICD},
            {"name": "coding", "valueCoding": {"system": ICD, "code": "I48.91"}},
        ],
        [{"name": "coding", "valueCoding": {"system": ICD}}],
        [{"name": "coding", "valueCoding": "I48.91"}],
        [{"name": "coding", "valueCoding": {"system": ICD, "code": "I48.91", "display": 3}}],
        [{"name": "codeableConcept", "valueCodeableConcept": {"text": "AF"}}],
        [{"name": "codeableConcept", "valueCodeableConcept": []}],
        [{"name": "code", "valueInteger": 4891}, {"name": "system", "valueUri": ICD}],
        [{"name": "context", "valueUri": "Condition.code"}],
    ],
)
def test_bad_validate_code_body_is_400(client: TestClient, parts: list[dict[str, Any]]) -> None:
    response = post(client, "/fhir/ValueSet/vs-arrhythmia/$validate-code", params(*parts))
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


# --- declared, and not in the way of read ----------------------------------------------------


def test_capability_statement_declares_both_operations(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    value_set = next(r for r in rest["resource"] if r["type"] == "ValueSet")
    expected = [
        {"name": "expand", "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"},
        {
            "name": "validate-code",
            "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
        },
    ]
    assert value_set["operation"] == expected
    assert all(op in rest["operation"] for op in expected)


def test_read_still_serves_the_stored_value_set(client: TestClient) -> None:
    response = client.get("/fhir/ValueSet/vs-arrhythmia")
    assert response.status_code == 200
    assert "compose" in response.json() and "expansion" in response.json()
