"""Golden scenarios answered from ``fhirServer`` instead of prefetch (CDS Hooks 2.0 Prefetch).

A scenario whose ``scenario.json`` says ``"fallback": true`` is replayed here without its
``prefetch``: every prefetch key becomes the EHR's answer to that key's template (as the service
advertises it in its discovery document), the request carries ``fhirServer`` and
``fhirAuthorization``, and the response must equal the scenario's ``expected.json``: the
Revision 2 terminology cases (docs/terminology.md) give the same cards whichever way the data
arrives. Prefetch-side coverage is ``test_scenarios.py``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_app
from tests.scenarios.test_scenarios import EHR_BASE, ehr_transport

HERE = Path(__file__).resolve().parent
FALLBACK = sorted(
    p.parent
    for p in HERE.glob("*/*/scenario.json")
    if json.loads(p.read_text(encoding="utf-8")).get("fallback") is True
)
TOKEN = {
    "access_token": "fallback-parity-token",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/*.read",
    "subject": "muscle-spasm-cds",
    "patient": "p1",
}


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _fill(template: str, context: dict[str, Any]) -> str:
    """A prefetch template with its ``{{context.x}}`` tokens replaced (only plain tokens here)."""
    return re.sub(r"\{\{\s*context\.(\w+)\s*\}\}", lambda m: str(context[m.group(1)]), template)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Each service's prefetch templates, as its discovery document advertises them."""
    app = make_app(tmp_path_factory.mktemp("discovery"))
    with TestClient(app) as client:
        services = client.get("/cds-services").json()["services"]
    return {s["id"]: s["prefetch"] for s in services}


def test_every_fallback_scenario_has_prefetch() -> None:
    assert len(FALLBACK) >= 30
    for folder in FALLBACK:
        assert "prefetch" in _load(folder / "request.json"), folder.name


@pytest.mark.parametrize("folder", FALLBACK, ids=[f"{p.parent.name}/{p.name}" for p in FALLBACK])
def test_fhir_server_fallback_gives_the_golden_answer(
    folder: Path, tmp_path: Path, templates: dict[str, dict[str, str]]
) -> None:
    meta = _load(folder / "scenario.json")
    now = datetime.fromisoformat(meta["now"].replace("Z", "+00:00"))
    request = _load(folder / "request.json")
    prefetch = request.pop("prefetch")
    request["fhirServer"] = EHR_BASE
    request["fhirAuthorization"] = TOKEN
    service_id = folder.parent.name
    calls: list[str] = []
    routes: dict[str, Any] = {}
    for key, template in templates[service_id].items():
        routes[_fill(template, request["context"])] = prefetch[key]

    app = make_app(tmp_path, now=now, transport=ehr_transport(routes, calls))
    with TestClient(app) as client:
        response = client.post(f"/cds-services/{service_id}", json=request)

    assert response.status_code == 200, response.text
    assert response.json() == _load(folder / "expected.json")
    assert any(call.startswith("Condition?") for call in calls), calls
