"""The Revision 2 cases against a real FHIR R4 server (SEKMET on loopback).

Each golden scenario marked ``"fallback": true`` (tests/scenarios, docs/terminology.md) is loaded
into SEKMET as a patient of its own (a transaction Bundle built from the scenario's prefetch), and
the service, given only ``fhirServer`` (no prefetch), must fetch it over HTTP and return the cards
of the scenario's ``expected.json`` (rule, indicator, summary): a descendant ICD-10-CM code, a
SNOMED CT code, an ingredient-only RxNorm code, a dotless / lower-case code or a medication end
date from a dispense reaches the same card through a real server as through prefetch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_app
from tests.integration._servers import load_transaction
from tests.integration.conftest import Ehr
from tests.scenarios.test_fallback_parity import FALLBACK

pytestmark = pytest.mark.slow

DEFAULT_PATIENT = {"resourceType": "Patient", "gender": "female", "birthDate": "1978-04-12"}


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def patient_bundle(prefetch: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A transaction creating the scenario's patient and every resource of its prefetch; the
    references between them (``Patient/p1``, ``MedicationRequest/rx-1`` …) follow the new ids."""
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    patient = copy.deepcopy(prefetch.get("patient") or DEFAULT_PATIENT)
    patient.pop("id", None)
    urns = {"Patient/p1": patient_urn}
    resources = []
    for key, value in prefetch.items():
        if key == "patient" or not value:
            continue
        for entry in value.get("entry", []):
            resource = copy.deepcopy(entry["resource"])
            urn = f"urn:uuid:{uuid.uuid4()}"
            urns[f"{resource['resourceType']}/{resource.pop('id')}"] = urn
            resources.append((urn, resource))
    entries = [
        {
            "fullUrl": patient_urn,
            "resource": patient,
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for urn, resource in resources:
        text = json.dumps(resource)
        for reference, target in urns.items():
            text = text.replace(json.dumps(reference), json.dumps(target))
        entries.append(
            {
                "fullUrl": urn,
                "resource": json.loads(text),
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return bundle, patient_urn


class _ByNow(dict[str, TestClient]):
    """A client per clock, made by ``factory`` the first time that clock is asked for."""

    def __init__(self, factory: Callable[[str], TestClient]) -> None:
        super().__init__()
        self._factory = factory

    def __missing__(self, now: str) -> TestClient:
        self[now] = self._factory(now)
        return self[now]


def cards(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted(
        (c["source"]["topic"]["code"], c["indicator"], c["summary"]) for c in body["cards"]
    )


@pytest.fixture(scope="module")
def clients(ehr: Ehr, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """One in-process app per scenario clock (``scenario.json`` ``now``), made on first use;
    its FHIR calls go to SEKMET over loopback."""
    with contextlib.ExitStack() as stack:

        def make(now: str) -> TestClient:
            app = make_app(
                tmp_path_factory.mktemp("app"),
                now=datetime.fromisoformat(now.replace("Z", "+00:00")),
                fhir_server_allowlist=(ehr.origin,),
            )
            return stack.enter_context(TestClient(app))

        yield _ByNow(make)


@pytest.mark.parametrize("folder", FALLBACK, ids=[f"{p.parent.name}/{p.name}" for p in FALLBACK])
def test_case_through_a_real_fhir_server(
    folder: Path, ehr: Ehr, clients: dict[str, TestClient]
) -> None:
    client = clients[_load(folder / "scenario.json")["now"]]
    request = _load(folder / "request.json")
    bundle, patient_urn = patient_bundle(request.pop("prefetch"))
    patient_id = load_transaction(ehr.base, bundle)[patient_urn].split("/", 1)[1]
    request = json.loads(json.dumps(request).replace('"Patient/p1"', f'"Patient/{patient_id}"'))
    request["context"]["patientId"] = patient_id
    request["fhirServer"] = ehr.base

    response = client.post(f"/cds-services/{folder.parent.name}", json=request)

    assert response.status_code == 200, response.text
    assert cards(response.json()) == cards(_load(folder / "expected.json"))
