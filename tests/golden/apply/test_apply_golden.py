"""Golden ``$apply`` cases: each folder holds ``request.json`` and the ``expected.json`` answer.

``request.json``: ``{"description", "now"?, "method", "path", "body"?}``; ``expected.json``:
``{"status", "body"}``. The app runs on the real definitions with the clock pinned to ``now``
(default ``2026-12-01T12:00:00Z``) and counter ids reset for every case. Every 200 answer of a
``PlanDefinition/$apply`` must validate as an R4 CarePlan (R4B model). ``pytest
--update-golden`` rewrites the expected files from the actual answers: read the diff against
the contract ("FHIR R4 REST") before committing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.careplan import CarePlan

from fhir_service.fhir import validate_resource
from fhir_service.main import create_app
from fhir_service.runtime import build_runtime
from fhir_service.settings import Settings

HERE = Path(__file__).resolve().parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "request.json").is_file())
DEFAULT_NOW = "2026-12-01T12:00:00Z"


class Pinned:
    """The clock and counter ids of the shared app, reset for every case."""

    def __init__(self) -> None:
        self.now = datetime.fromisoformat(DEFAULT_NOW.replace("Z", "+00:00"))
        self.counter = itertools.count(1)

    def reset(self, now: str) -> None:
        self.now = datetime.fromisoformat(now.replace("Z", "+00:00"))
        self.counter = itertools.count(1)

    def clock(self) -> datetime:
        return self.now

    def new_id(self) -> str:
        return f"apply-{next(self.counter)}"


@pytest.fixture(scope="module")
def golden_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Pinned]]:
    pinned = Pinned()
    db = tmp_path_factory.mktemp("golden-apply") / "golden.db"
    settings = Settings(auth="off", database_url=f"sqlite:///{db}")
    runtime = build_runtime(settings, clock=pinned.clock, new_id=pinned.new_id)
    with TestClient(create_app(settings, runtime)) as client:
        yield client, pinned


def run_case(request: dict[str, Any], app: tuple[TestClient, Pinned]) -> tuple[int, Any]:
    client, pinned = app
    pinned.reset(request.get("now", DEFAULT_NOW))
    response = client.request(
        request["method"],
        request["path"],
        content=json.dumps(request["body"]) if "body" in request else None,
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
    )
    assert response.headers["content-type"].startswith("application/fhir+json")
    return response.status_code, response.json()


@pytest.mark.parametrize("case", CASES)
def test_golden(
    case: str, golden_app: tuple[TestClient, Pinned], request: pytest.FixtureRequest
) -> None:
    folder = HERE / case
    call = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    status, body = run_case(call, golden_app)
    if status == 200:
        if body["resourceType"] == "CarePlan":
            CarePlan.model_validate(body)
        validate_resource(body)
    actual = {"status": status, "body": body}
    expected_file = folder / "expected.json"
    if request.config.getoption("--update-golden"):
        text = json.dumps(actual, indent=2, ensure_ascii=False) + "\n"
        expected_file.write_text(text, encoding="utf-8")
    expected = json.loads(expected_file.read_text(encoding="utf-8"))
    assert actual == expected


def test_every_case_is_described() -> None:
    assert len(CASES) >= 6
    for case in CASES:
        call = json.loads((HERE / case / "request.json").read_text(encoding="utf-8"))
        assert call.get("description"), case
        assert (HERE / case / "expected.json").is_file(), case
