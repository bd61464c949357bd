"""Golden CDS Hooks scenarios: ``tests/scenarios/<service-id>/<scenario>/``.

Each folder holds ``request.json`` (the hook call), optionally ``fhir-server.json`` (the EHR's
FHIR server: ``{"<relative url>": <JSON body> | {"status": <code>, "body": ...}}``, served
by ``httpx.MockTransport`` at ``http://ehr.test/fhir``), optionally ``scenario.json``
(``{"now": "<instant>", "status": <expected HTTP status>}``), and ``expected.json``: the whole
response body, compared exactly (ids come from a counter, the clock is pinned). Run pytest
with ``--update-golden`` to rewrite ``expected.json`` after a reviewed change.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import DEFAULT_NOW, make_app

HERE = Path(__file__).resolve().parent
SCENARIOS = sorted(p.parent for p in HERE.glob("*/*/request.json"))
EHR_BASE = "http://ehr.test/fhir"


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def ehr_transport(routes: dict[str, Any], calls: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        relative = url[len(EHR_BASE) + 1 :] if url.startswith(EHR_BASE + "/") else url
        relative = httpx.URL(relative).copy_with().path.lstrip("/") + (
            "?" + request.url.query.decode() if request.url.query else ""
        )
        calls.append(relative)
        for key, value in routes.items():
            if httpx.URL("/" + key).path == httpx.URL("/" + relative).path and _same_query(
                key, relative
            ):
                if isinstance(value, dict) and "status" in value and "resourceType" not in value:
                    return httpx.Response(value["status"], json=value.get("body"))
                return httpx.Response(
                    200, json=value, headers={"content-type": "application/fhir+json"}
                )
        return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})

    return httpx.MockTransport(handler)


def _same_query(a: str, b: str) -> bool:
    return sorted(httpx.URL("/" + a).params.multi_items()) == sorted(
        httpx.URL("/" + b).params.multi_items()
    )


@pytest.mark.parametrize("folder", SCENARIOS, ids=[f"{p.parent.name}/{p.name}" for p in SCENARIOS])
def test_scenario(folder: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    meta = _load(folder / "scenario.json") if (folder / "scenario.json").exists() else {}
    now = (
        datetime.fromisoformat(meta["now"].replace("Z", "+00:00")) if "now" in meta else DEFAULT_NOW
    )
    routes = _load(folder / "fhir-server.json") if (folder / "fhir-server.json").exists() else {}
    calls: list[str] = []
    app = make_app(tmp_path, now=now, transport=ehr_transport(routes, calls))
    service_id = folder.parent.name
    with TestClient(app) as client:
        response = client.post(f"/cds-services/{service_id}", json=_load(folder / "request.json"))
    assert response.status_code == meta.get("status", 200), response.text
    body = response.json()
    expected_path = folder / "expected.json"
    if request.config.getoption("--update-golden") or not expected_path.exists():
        expected_path.write_text(
            json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if not request.config.getoption("--update-golden"):
            pytest.fail(f"{expected_path} was missing and has been written: review it")
    assert body == _load(expected_path)
    if "fetched" in meta:
        assert sorted(calls) == sorted(meta["fetched"])
