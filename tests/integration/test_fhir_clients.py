"""Real FHIR client libraries against our FHIR face, served by uvicorn on a loopback port.

* ``fhirclient`` 4.4.0 (the SMART on FHIR Python client): its models are generated from FHIR
  4.0.1 and refuse unknown or mistyped elements, so parsing our CapabilityStatement, Questionnaire
  and PlanDefinitions with them is a strict structural check.
* ``fhirpy`` 2.3.1: searches by ``url`` and reads by reference, as a CDS author's script would.

Then the knowledge is shown portable: ``PlanDefinition/{id}/$package`` from our server is
POSTed as a transaction into SEKMET and every resource reads back unchanged (SEKMET validates
inbound resources strictly, with the fhir.resources models).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration._servers import Server, http_json, sekmet_server, uvicorn_server

pytestmark = pytest.mark.slow

fhirclient_client = pytest.importorskip("fhirclient.client", reason="fhirclient not installed")
fhirpy = pytest.importorskip("fhirpy", reason="fhirpy not installed")

from fhirclient.models.capabilitystatement import CapabilityStatement  # noqa: E402
from fhirclient.models.plandefinition import PlanDefinition  # noqa: E402
from fhirclient.models.questionnaire import Questionnaire  # noqa: E402

CANONICAL = "http://example.org/fhir/muscle-spasm"
Q_ID = "muscle-spasm-assessment"
Q_URL = f"{CANONICAL}/Questionnaire/{Q_ID}"
RF01_URL = f"{CANONICAL}/PlanDefinition/rf-01"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with uvicorn_server(tmp_path_factory.mktemp("uvicorn-clients")) as server:
        yield server


@pytest.fixture(scope="module")
def fhir_base(service: Server) -> str:
    return f"{service.base}/fhir"


@pytest.fixture(scope="module")
def smart(fhir_base: str) -> Any:
    return fhirclient_client.FHIRClient(
        settings={"app_id": "integration-test", "api_base": fhir_base}
    )


def without_primitive_extensions(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_primitive_extensions(v) for k, v in value.items() if k[0] != "_"}
    if isinstance(value, list):
        return [without_primitive_extensions(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# fhirclient (SMART)


def test_fhirclient_metadata(smart: Any) -> None:
    capability = CapabilityStatement.read_from("metadata", smart.server)
    assert capability.fhirVersion == "4.0.1"
    rest = capability.rest[0]
    types = {r.type: r for r in rest.resource}
    for rtype in ("PlanDefinition", "ActivityDefinition", "Questionnaire", "Library", "ValueSet"):
        codes = {i.code for i in types[rtype].interaction}
        assert {"read", "search-type"} <= codes, rtype
    operations = {op.name for op in rest.operation or []}
    operations |= {op.name for r in rest.resource for op in (r.operation or [])}
    assert {"apply", "populate", "extract"} <= operations


def test_fhirclient_questionnaire(smart: Any) -> None:
    questionnaire = Questionnaire.read(Q_ID, smart.server)
    assert questionnaire.url == Q_URL
    link_ids: set[str] = set()

    def walk(items: list[Any] | None) -> None:
        for item in items or []:
            link_ids.add(item.linkId)
            walk(item.item)

    walk(questionnaire.item)
    assert {"pain-nrs", "pregnancy", "recent-injury", "injury-date"} <= link_ids
    # The model round-trips to the same JSON, except primitive extensions (``_onsetDateTime``
    # in the extraction template), which fhirclient 4.4.0 does not model and drops silently.
    status, raw = http_json("GET", f"{smart.server.base_uri}Questionnaire/{Q_ID}")
    assert status == 200
    assert questionnaire.as_json() == without_primitive_extensions(raw)


def test_fhirclient_plandefinition_search_and_read(smart: Any) -> None:
    bundles = list(PlanDefinition.where(struct={"url": RF01_URL}).perform_iter(smart.server))
    assert [b.type for b in bundles] == ["searchset"]
    assert [e.resource.id for e in bundles[0].entry] == ["rf-01"]
    plan = PlanDefinition.read("rf-01", smart.server)
    assert plan.url == RF01_URL
    assert plan.action[0].code[0].coding[0].code == "RF-01"
    # small pages: the client follows our ``next`` links; every PlanDefinition parses with
    # the strict 4.0.1 models
    search = PlanDefinition.where(struct={"_count": "2"})
    everything = list(search.perform_resources_iter(smart.server))
    assert all(isinstance(found, PlanDefinition) for found in everything)
    ids = [p.id for p in everything]
    assert "rf-01" in ids and len(ids) == len(set(ids))
    status, total = http_json("GET", f"{smart.server.base_uri}PlanDefinition?_summary=count")
    assert status == 200 and total["total"] == len(ids)


def test_fhirclient_bearer_token_is_harmless(smart: Any) -> None:
    """The FHIR face needs no auth; a token a SMART app adds anyway does not break it."""
    smart.server.session.headers["Authorization"] = "Bearer not-checked-here"
    try:
        assert Questionnaire.read(Q_ID, smart.server).id == Q_ID
    finally:
        del smart.server.session.headers["Authorization"]


# --------------------------------------------------------------------------------------------
# fhirpy


def test_fhirpy_search_and_read(fhir_base: str) -> None:
    client = fhirpy.SyncFHIRClient(fhir_base)
    plan = client.resources("PlanDefinition").search(url=RF01_URL).first()
    assert plan is not None and plan["id"] == "rf-01"
    questionnaire = client.reference("Questionnaire", Q_ID).to_resource()
    assert questionnaire["url"] == Q_URL
    assert questionnaire.get_by_path(["item", 0, "linkId"])
    names = {p["id"] for p in client.resources("PlanDefinition").fetch_all()}
    assert "rf-01" in names
    metadata = client.execute("metadata", method="get")
    assert metadata["fhirVersion"] == "4.0.1"


# --------------------------------------------------------------------------------------------
# $package into a real FHIR server


@pytest.fixture(scope="module")
def sekmet(sekmet_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sekmet_server(tmp_path_factory.mktemp("sekmet-package"), sekmet_bin) as server:
        yield server


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "text")}


def rule_plan_ids(fhir_base: str) -> list[str]:
    status, bundle = http_json("GET", f"{fhir_base}/PlanDefinition?_count=500")
    assert status == 200
    ids = []
    for entry in bundle.get("entry", []):
        plan = entry["resource"]
        codes = [c.get("code") for c in plan.get("type", {}).get("coding", [])]
        if "eca-rule" in codes:
            ids.append(plan["id"])
    assert "rf-01" in ids
    return sorted(ids)


def test_package_loads_into_sekmet(fhir_base: str, sekmet: Server) -> None:
    """Every rule's ``$package`` is a transaction SEKMET accepts; all reads back unchanged."""
    for plan_id in rule_plan_ids(fhir_base):
        status, package = http_json("GET", f"{fhir_base}/PlanDefinition/{plan_id}/$package")
        assert status == 200 and package["type"] == "transaction", plan_id
        assert package["entry"][0]["request"] == {
            "method": "PUT",
            "url": f"PlanDefinition/{plan_id}",
        }
        status, result = http_json("POST", sekmet.base, package)
        assert status == 200, f"{plan_id}: {result}"
        assert result["type"] == "transaction-response"
        for sent, got in zip(package["entry"], result["entry"], strict=True):
            assert got["response"]["status"].startswith(("200", "201")), (plan_id, got)
            status, back = http_json("GET", f"{sekmet.base}/{sent['request']['url']}")
            assert status == 200, sent["request"]["url"]
            assert without_meta(back) == without_meta(sent["resource"]), sent["request"]["url"]
    # and a client library reads the copy from SEKMET with the strict R4 models
    smart = fhirclient_client.FHIRClient(settings={"app_id": "t", "api_base": sekmet.base})
    assert PlanDefinition.read("rf-01", smart.server).url == RF01_URL
    assert Questionnaire.read(Q_ID, smart.server).url == Q_URL
