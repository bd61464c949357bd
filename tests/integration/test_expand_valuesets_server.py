"""The expansion command refreshes a SNOMED CT enumeration from a real ``$expand`` over HTTP.

The terminology server is this service under uvicorn on loopback, serving
``tests/fixtures/terminology-server`` (one ValueSet: atrial fibrillation 49436004 and the
descendants ``vs-arrhythmia`` lists). A ValueSet whose include names 49436004 as its
``enumerated-parent`` and lists three of those codes plus one the server does not return is
refreshed page by page (two codes a page): the server's codes are added with their displays,
the extra code is kept and reported, the expansion is recomputed, and the result loads.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_service.knowledge.loader import load_definitions
from fhir_service.tools.expand_valuesets import run
from tests.integration._servers import ROOT, Server, uvicorn_server

SCT = "http://snomed.info/sct"
BASE = "http://example.org/fhir/muscle-spasm"
SERVED = ROOT / "tests" / "fixtures" / "terminology-server"
VER = f"{BASE}/StructureDefinition/verification-status"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with uvicorn_server(
        tmp_path_factory.mktemp("tx-server"), definitions_dir=str(SERVED)
    ) as running:
        yield running


def enumerating_value_set() -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "id": "vs-af",
        "url": f"{BASE}/ValueSet/vs-af",
        "version": "0.1.0",
        "name": "AtrialFibrillation",
        "status": "draft",
        "compose": {
            "include": [
                {
                    "extension": [
                        {
                            "url": f"{BASE}/StructureDefinition/enumerated-parent",
                            "valueCoding": {
                                "system": SCT,
                                "code": "49436004",
                                "display": "Atrial fibrillation",
                            },
                        }
                    ],
                    "system": SCT,
                    "concept": [
                        {
                            "extension": [{"url": VER, "valueCode": "V1"}],
                            "code": "49436004",
                            "display": "Atrial fibrillation (disorder)",
                        },
                        {"code": "282825002", "display": "Paroxysmal atrial fibrillation"},
                        {"code": "440028005", "display": "Permanent atrial fibrillation"},
                        {"code": "698247007", "display": "Cardiac arrhythmia"},
                    ],
                },
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "concept": [{"code": "I48.91"}]},
            ]
        },
    }


def test_refresh_from_a_real_expand(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "ValueSet-vs-af.json"
    path.write_text(json.dumps(enumerating_value_set(), indent=2))
    served = json.loads((SERVED / "ValueSet-sct-isa-49436004.json").read_text())
    server_codes = [c["code"] for c in served["expansion"]["contains"]]
    report = io.StringIO()

    status = run(
        tmp_path,
        server=f"{server.base}/fhir",
        template=f"{BASE}/ValueSet/sct-isa-{{code}}",
        out=report,
        page_size=2,
    )

    assert status == 0, report.getvalue()
    refreshed = json.loads(path.read_text())
    concepts = refreshed["compose"]["include"][0]["concept"]
    listed = [c["code"] for c in concepts]
    # the listed codes first, untouched; then what the server added, in its order
    assert listed[:4] == ["49436004", "282825002", "440028005", "698247007"]
    assert listed[4:] == [c for c in server_codes if c not in listed[:4]]
    assert concepts[0]["display"] == "Atrial fibrillation (disorder)"
    assert concepts[0]["extension"] == [{"url": VER, "valueCode": "V1"}]
    added = {c["code"]: c["display"] for c in concepts[4:]}
    assert added["5370000"] == "Atrial flutter"
    text = report.getvalue()
    assert "added 5370000 Atrial flutter" in text
    assert "698247007 kept, not in the server's expansion" in text
    expanded = [c["code"] for c in refreshed["expansion"]["contains"]]
    assert expanded == [*listed, "I48.91"]
    assert refreshed["expansion"]["total"] == len(expanded)

    # a second refresh finds nothing new to add (the kept code is reported again)
    again = io.StringIO()
    run(
        tmp_path,
        server=f"{server.base}/fhir",
        template=f"{BASE}/ValueSet/sct-isa-{{code}}",
        out=again,
    )
    assert "added" not in again.getvalue()
    assert json.loads(path.read_text())["compose"] == refreshed["compose"]

    # the refreshed ValueSet is one the service loads
    _artifacts, terminology, _compiler = load_definitions(tmp_path)
    assert terminology.member({"system": SCT, "code": "5370000"}, f"{BASE}/ValueSet/vs-af")


def test_a_server_error_fails_the_command_and_writes_nothing(
    server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "ValueSet-vs-af.json"
    path.write_text(json.dumps(enumerating_value_set()))
    before = path.read_text()
    report = io.StringIO()
    # the default template asks for the implicit SNOMED CT value set, which this server lacks
    assert run(tmp_path, server=f"{server.base}/fhir", out=report) == 2
    assert "HTTP 404" in report.getvalue()
    assert (
        "fhir_vs%3Disa%2F49436004" in report.getvalue()
        or "fhir_vs=isa/49436004" in report.getvalue()
    )
    assert path.read_text() == before
