"""FHIR R4 REST face: metadata, read, search-type, ``$package`` (contract "FHIR R4 REST").

Expectations are computed from the artifacts the app loaded, so the tests hold while rules are
being added to ``definitions/``. Every searchset Bundle is validated with the R4B model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from fhir_service.knowledge.loader import KNOWLEDGE_TYPES, Artifact
from tests.conftest import make_app

FHIR_JSON = "application/fhir+json"
BASE = "http://127.0.0.1:8000/fhir"
CANONICAL = "http://example.org/fhir/muscle-spasm"
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
MINI = Path(__file__).resolve().parent.parent / "fixtures" / "definitions-mini"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = make_app(tmp_path_factory.mktemp("rest"))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = make_app(tmp_path_factory.mktemp("rest-mini"), definitions_dir=MINI)
    with TestClient(app) as test_client:
        yield test_client


def artifacts(client: TestClient, rtype: str) -> list[Artifact]:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    found: list[Artifact] = runtime.knowledge.of_type(rtype)
    return sorted(found, key=lambda a: a.id)


def fhir_json(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = response.json()
    return body


def outcome(response: Any, status: int) -> dict[str, Any]:
    body = fhir_json(response, status)
    assert body["resourceType"] == "OperationOutcome"
    OperationOutcome.model_validate(body)
    assert body["issue"][0]["severity"] in ("error", "fatal")
    return body


def search(client: TestClient, path: str, **headers: str) -> dict[str, Any]:
    body = fhir_json(client.get(path, headers=headers))
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "searchset"
    Bundle.model_validate(body)
    return body


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def local(url: str) -> str:
    """A link of the Bundle as a path the test client can follow."""
    parts = urlsplit(url)
    assert url.startswith(BASE)
    return parts.path + ("?" + parts.query if parts.query else "")


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((li["url"] for li in bundle["link"] if li["relation"] == relation), None)


# --- metadata -----------------------------------------------------------------------------


def test_metadata_is_a_valid_r4_capability_statement(client: TestClient) -> None:
    body = fhir_json(client.get("/fhir/metadata"))
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.0.1"
    assert body["kind"] == "instance"
    assert "application/fhir+json" in body["format"]
    rest = body["rest"][0]
    assert rest["mode"] == "server"
    resources = {r["type"]: r for r in rest["resource"]}
    for rtype in KNOWLEDGE_TYPES:
        codes = {i["code"] for i in resources[rtype]["interaction"]}
        assert {"read", "search-type"} <= codes, rtype
        params = {p["name"] for p in resources[rtype]["searchParam"]}
        assert {"_id", "url", "version", "name", "title", "status"} <= params
    declared = {op["name"] for op in rest.get("operation", [])}
    for res in rest["resource"]:
        declared |= {op["name"] for op in res.get("operation", [])}
    assert {"apply", "populate", "extract", "package"} <= declared
    plan_ops = {op["name"] for op in resources["PlanDefinition"]["operation"]}
    assert {"apply", "package"} <= plan_ops
    assert "apply" in {op["name"] for op in resources["ActivityDefinition"]["operation"]}


def test_metadata_format_negotiation(client: TestClient) -> None:
    fhir_json(client.get("/fhir/metadata?_format=json"))
    fhir_json(client.get("/fhir/metadata?_format=" + quote("application/fhir+json")))
    # an unencoded '+' arrives as a space; still JSON
    fhir_json(client.get("/fhir/metadata?_format=application/fhir+json"))
    outcome(client.get("/fhir/metadata?_format=xml"), 406)
    outcome(client.get("/fhir/metadata?_format=" + quote("application/fhir+xml")), 406)
    outcome(client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"}), 406)
    fhir_json(client.get("/fhir/metadata", headers={"Accept": "application/fhir+json"}))
    fhir_json(client.get("/fhir/metadata", headers={"Accept": "text/html, */*;q=0.8"}))


# --- read ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", KNOWLEDGE_TYPES)
def test_read_each_type_returns_the_file(client: TestClient, rtype: str) -> None:
    found = artifacts(client, rtype)
    assert found, f"no {rtype} in definitions/"
    for art in found[:3]:
        body = fhir_json(client.get(f"/fhir/{rtype}/{art.id}"))
        on_disk = json.loads(
            Path(client.app.state.runtime.settings.definitions_dir, art.source).read_text()
        )  # type: ignore[attr-defined]
        assert body == on_disk


def test_read_unknown_id_is_404(client: TestClient) -> None:
    body = outcome(client.get("/fhir/PlanDefinition/no-such-rule"), 404)
    assert body["issue"][0]["code"] == "not-found"


@pytest.mark.parametrize("path", ["/fhir/Patient", "/fhir/Patient/p1", "/fhir/Observation?_id=1"])
def test_unknown_type_is_404(client: TestClient, path: str) -> None:
    outcome(client.get(path), 404)


def test_read_honours_summary_and_elements(client: TestClient) -> None:
    vs = artifacts(client, "ValueSet")[0]
    summary = fhir_json(client.get(f"/fhir/ValueSet/{vs.id}?_summary=true"))
    assert SUBSETTED in summary["meta"]["tag"]
    assert "compose" not in summary and summary["url"] == vs.url
    elements = fhir_json(client.get(f"/fhir/ValueSet/{vs.id}?_elements=name"))
    assert set(elements) == {"resourceType", "id", "meta", "name", "status"}


# --- search -------------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", KNOWLEDGE_TYPES)
def test_search_all_of_a_type(client: TestClient, rtype: str) -> None:
    bundle = search(client, f"/fhir/{rtype}?_count=500")
    expected = [a.id for a in artifacts(client, rtype)]
    assert bundle["total"] == len(expected)
    assert ids(bundle) == expected
    for entry in bundle["entry"]:
        rid = entry["resource"]["id"]
        assert entry["fullUrl"] == f"{BASE}/{rtype}/{rid}"
        assert entry["search"] == {"mode": "match"}


def test_search_by_id_and_comma_or(client: TestClient) -> None:
    first, second = (a.id for a in artifacts(client, "ValueSet")[:2])
    assert ids(search(client, f"/fhir/ValueSet?_id={first}")) == [first]
    assert ids(search(client, f"/fhir/ValueSet?_id={second},{first}")) == sorted([first, second])
    assert search(client, "/fhir/ValueSet?_id=nope")["total"] == 0
    assert "entry" not in search(client, "/fhir/ValueSet?_id=nope")


def test_search_by_url_and_version(client: TestClient) -> None:
    plan = next(a for a in artifacts(client, "PlanDefinition") if a.id == "rf-01")
    assert ids(search(client, f"/fhir/PlanDefinition?url={quote(str(plan.url))}")) == ["rf-01"]
    assert search(client, f"/fhir/PlanDefinition?url={quote(str(plan.url))}x")["total"] == 0
    every = len(artifacts(client, "PlanDefinition"))
    assert search(client, f"/fhir/PlanDefinition?version={plan.version}")["total"] == every
    assert search(client, "/fhir/PlanDefinition?version=9.9.9")["total"] == 0


def test_search_by_name_prefix_exact_and_contains(client: TestClient) -> None:
    value_sets = artifacts(client, "ValueSet")
    name = str(value_sets[0].resource["name"])
    prefix = name[:4].lower()
    expected = [a.id for a in value_sets if str(a.resource["name"]).lower().startswith(prefix)]
    assert ids(search(client, f"/fhir/ValueSet?name={prefix}")) == expected
    assert ids(search(client, f"/fhir/ValueSet?name:exact={name}")) == [value_sets[0].id]
    assert search(client, f"/fhir/ValueSet?name:exact={name.lower()}")["total"] == (
        1 if name == name.lower() else 0
    )
    middle = name[2:6]
    contains = [a.id for a in value_sets if middle.lower() in str(a.resource["name"]).lower()]
    assert ids(search(client, f"/fhir/ValueSet?name:contains={middle.upper()}")) == contains
    # a prefix search is not a contains search
    if not name.lower().startswith(middle.lower()):
        assert value_sets[0].id not in ids(search(client, f"/fhir/ValueSet?name={middle}"))


def test_search_by_title_and_status(client: TestClient) -> None:
    plan = next(a for a in artifacts(client, "PlanDefinition") if a.id == "rf-01")
    title = str(plan.resource["title"])
    assert "rf-01" in ids(search(client, f"/fhir/PlanDefinition?title={quote(title[:6])}"))
    assert ids(search(client, f"/fhir/PlanDefinition?title:exact={quote(title)}")) == ["rf-01"]
    every = len(artifacts(client, "Library"))
    assert search(client, "/fhir/Library?status=active")["total"] == every
    assert search(client, "/fhir/Library?status=retired")["total"] == 0
    assert search(client, "/fhir/Library?status=retired,active")["total"] == every


def test_search_parameters_are_anded(client: TestClient) -> None:
    first, second = artifacts(client, "ValueSet")[:2]
    both = f"_id={first.id},{second.id}"
    assert ids(search(client, f"/fhir/ValueSet?{both}&name:exact={first.resource['name']}")) == [
        first.id
    ]
    assert search(client, f"/fhir/ValueSet?{both}&status=retired")["total"] == 0
    # the same parameter twice: both must hold
    name = str(first.resource["name"])
    assert first.id in ids(search(client, f"/fhir/ValueSet?name={name[:3]}&name={name[:5]}"))
    assert search(client, f"/fhir/ValueSet?name={name}&name=zzz")["total"] == 0


def test_empty_parameter_value_is_ignored(client: TestClient) -> None:
    every = len(artifacts(client, "ValueSet"))
    assert search(client, "/fhir/ValueSet?name=&_count=500")["total"] == every


def test_paging_links_work_when_followed(client: TestClient) -> None:
    expected = [a.id for a in artifacts(client, "ValueSet")]
    assert len(expected) > 5
    page = search(client, "/fhir/ValueSet?_count=4&status=active")
    assert link(page, "previous") is None
    seen: list[str] = []
    pages = [page]
    while True:
        assert page["total"] == len(expected)
        assert len(ids(page)) <= 4
        seen += ids(page)
        assert link(page, "self") is not None
        following = link(page, "next")
        if following is None:
            break
        assert "status=active" in following
        page = search(client, local(following))
        pages.append(page)
    assert seen == expected
    # previous of the second page is the first page
    previous = link(pages[1], "previous")
    assert previous is not None
    assert ids(search(client, local(previous))) == ids(pages[0])
    # self reproduces the page
    self_link = link(pages[-1], "self")
    assert self_link is not None
    assert ids(search(client, local(self_link))) == ids(pages[-1])


def test_offset_past_the_end(client: TestClient) -> None:
    total = len(artifacts(client, "ValueSet"))
    bundle = search(client, f"/fhir/ValueSet?_offset={total + 10}&_count=5")
    assert bundle["total"] == total
    assert "entry" not in bundle
    assert link(bundle, "next") is None
    assert link(bundle, "previous") is not None


def test_summary_count_has_no_entries(client: TestClient) -> None:
    bundle = search(client, "/fhir/ValueSet?_summary=count")
    assert bundle["total"] == len(artifacts(client, "ValueSet"))
    assert "entry" not in bundle
    assert link(bundle, "next") is None


def test_count_zero_gives_the_total_only(client: TestClient) -> None:
    bundle = search(client, "/fhir/ValueSet?_count=0")
    assert bundle["total"] == len(artifacts(client, "ValueSet"))
    assert "entry" not in bundle
    assert link(bundle, "next") is None


@pytest.mark.parametrize("rtype", KNOWLEDGE_TYPES)
def test_summary_true_is_tagged_subsetted_and_valid(client: TestClient, rtype: str) -> None:
    bundle = search(client, f"/fhir/{rtype}?_summary=true&_count=500")
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert SUBSETTED in resource["meta"]["tag"]
        assert {"resourceType", "id", "status"} <= set(resource)
        assert "action" not in resource and "item" not in resource
        assert "compose" not in resource and "concept" not in resource


def test_summary_text_and_data(client: TestClient) -> None:
    text = search(client, "/fhir/CodeSystem?_summary=text")
    for entry in text["entry"]:
        assert set(entry["resource"]) <= {"resourceType", "id", "meta", "text", "status", "content"}
        assert {"status", "content"} <= set(entry["resource"])
    data = search(client, "/fhir/PlanDefinition?_summary=data&_id=rf-01")
    resource = data["entry"][0]["resource"]
    assert "text" not in resource and "action" in resource
    assert SUBSETTED in resource["meta"]["tag"]


@pytest.mark.parametrize("rtype", KNOWLEDGE_TYPES)
def test_elements_keeps_mandatory_elements(client: TestClient, rtype: str) -> None:
    bundle = search(client, f"/fhir/{rtype}?_elements=name,title&_count=500")
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert SUBSETTED in resource["meta"]["tag"]
        assert set(resource) <= {
            "resourceType",
            "id",
            "meta",
            "name",
            "title",
            "status",
            "type",
            "content",
        }
        assert "status" in resource
    # the links carry _elements on
    assert "_elements=name%2Ctitle" in str(link(bundle, "self"))


def test_loaded_artifacts_are_not_modified_by_shaping(client: TestClient) -> None:
    search(client, "/fhir/Library?_summary=true")
    search(client, "/fhir/Library?_elements=name")
    for art in artifacts(client, "Library"):
        assert "meta" not in art.resource or SUBSETTED not in art.resource["meta"].get("tag", [])


def test_format_parameter_on_search(client: TestClient) -> None:
    search(client, "/fhir/ValueSet?_format=json")
    search(client, "/fhir/ValueSet?_format=" + quote("application/fhir+json"))
    outcome(client.get("/fhir/ValueSet?_format=xml"), 406)
    outcome(client.get("/fhir/ValueSet/vs-spasm-family?_format=xml"), 406)


def test_unknown_parameter_is_ignored_unless_strict(client: TestClient) -> None:
    every = len(artifacts(client, "ValueSet"))
    assert search(client, "/fhir/ValueSet?colour=blue&_count=500")["total"] == every
    lenient = search(client, "/fhir/ValueSet?colour=blue", Prefer="handling=lenient")
    assert lenient["total"] == every
    assert "colour" not in str(link(lenient, "self"))
    body = outcome(
        client.get("/fhir/ValueSet?colour=blue", headers={"Prefer": "handling=strict"}), 400
    )
    assert "colour" in body["issue"][0]["diagnostics"]
    # known parameters pass under strict handling
    search(client, "/fhir/ValueSet?status=active&_count=3", Prefer="handling=strict")


@pytest.mark.parametrize(
    "query",
    [
        "_count=abc",
        "_count=-1",
        "_count=1.5",
        "_offset=x",
        "_summary=maybe",
        "url:below=http://example.org",
        "name:fuzzy=spasm",
        "status:contains=act",
    ],
)
def test_bad_control_parameters_are_400(client: TestClient, query: str) -> None:
    outcome(client.get(f"/fhir/ValueSet?{query}"), 400)


def test_count_is_capped(client: TestClient) -> None:
    bundle = search(client, "/fhir/ValueSet?_count=100000")
    assert len(ids(bundle)) == min(500, len(artifacts(client, "ValueSet")))


# --- $package -----------------------------------------------------------------------------


def package(client: TestClient, rid: str) -> dict[str, Any]:
    body = fhir_json(client.get(f"/fhir/PlanDefinition/{rid}/$package"))
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "transaction"
    Bundle.model_validate(body)
    for entry in body["entry"]:
        resource = entry["resource"]
        path = f"{resource['resourceType']}/{resource['id']}"
        assert entry["request"] == {"method": "PUT", "url": path}
        assert entry["fullUrl"] == f"{BASE}/{path}"
    return body


def test_package_of_a_rule_holds_its_dependencies(mini: TestClient) -> None:
    body = package(mini, "mini-rule")
    got = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in body["entry"]]
    assert got[0] == "PlanDefinition/mini-rule"
    assert set(got) == {
        "PlanDefinition/mini-rule",
        "PlanDefinition/mini-nested",
        "Library/mini-common",
        "ActivityDefinition/mini-referral",
        "ActivityDefinition/mini-education",
        "ValueSet/vs-mini-spasm",
        "ValueSet/vs-mini-drug",
        "CodeSystem/mini-override",  # the override reasons its warning card offers
    }
    assert len(got) == len(set(got))


def test_package_of_rf01_holds_library_and_value_sets(client: TestClient) -> None:
    body = package(client, "rf-01")
    got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]}
    assert ("PlanDefinition", "rf-01") in got
    assert ("Library", "muscle-spasm-common") in got
    value_sets = {rid for rtype, rid in got if rtype == "ValueSet"}
    assert {"vs-spasm-family", "vs-injury-head-neck-back"} <= value_sets
    # every canonical the package's artifacts name is in the package
    text = json.dumps([e["resource"] for e in body["entry"]])
    for rtype, rid in got:
        assert f"{CANONICAL}/{rtype}/{rid}" in text


def test_package_of_unknown_plan_is_404(client: TestClient) -> None:
    outcome(client.get("/fhir/PlanDefinition/nope/$package"), 404)


def _plan_ids() -> list[str]:
    definitions = Path(__file__).resolve().parent.parent.parent / "definitions"
    return sorted(
        p.stem.removeprefix("PlanDefinition-") for p in definitions.glob("PlanDefinition-*.json")
    )


@pytest.mark.parametrize("rid", _plan_ids())
def test_package_of_every_plan_is_closed(client: TestClient, rid: str) -> None:
    """The package holds every artifact its artifacts name by canonical (library,
    definitionCanonical targets, memberOf()/ingredients() ValueSets)."""
    body = package(client, rid)
    held = {
        f"{CANONICAL}/{e['resource']['resourceType']}/{e['resource']['id']}" for e in body["entry"]
    }
    plan = body["entry"][0]["resource"]
    assert (plan["resourceType"], plan["id"]) == ("PlanDefinition", rid)
    text = json.dumps([e["resource"] for e in body["entry"]])
    named = set(
        re.findall(
            re.escape(CANONICAL)
            + r"/(?:PlanDefinition|ActivityDefinition|Library|ValueSet)/[A-Za-z0-9\-.]+",
            text,
        )
    )
    known = {
        f"{CANONICAL}/{a.resource_type}/{a.id}"
        for t in KNOWLEDGE_TYPES
        for a in artifacts(client, t)
    }
    assert named & known <= held
    for library in plan.get("library", []):
        assert library in held


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/fhir/PlanDefinition", 405),
        ("PUT", "/fhir/PlanDefinition/rf-01", 405),
        ("DELETE", "/fhir/PlanDefinition/rf-01", 405),
        ("DELETE", "/fhir/PlanDefinition/rf-01/$apply", 405),
        ("GET", "/fhir/PlanDefinition/rf-01/_history/1", 404),
        ("GET", "/fhir", 404),
    ],
)
def test_interactions_not_served_are_operation_outcomes(
    client: TestClient, method: str, path: str, status: int
) -> None:
    outcome(client.request(method, path), status)
