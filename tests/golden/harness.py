"""The harness shared by the golden operation suites (``apply/``, ``sdc/``).

Each case folder holds ``request.json`` (``{"description", "now"?, "method", "path", "body"?}``)
and ``expected.json`` (``{"status", "body"}``). One app per suite runs on the real definitions
with the clock pinned to the case's ``now`` (default ``2026-12-01T12:00:00Z``) and counter ids
reset for every case. ``pytest --update-golden`` rewrites the expected files from the actual
answers: review the diff before committing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_service.main import create_app
from fhir_service.runtime import build_runtime
from fhir_service.settings import Settings

DEFAULT_NOW = "2026-12-01T12:00:00Z"


def cases(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if (p / "request.json").is_file())


class Pinned:
    """The clock and counter ids of a suite's app, reset for every case."""

    def __init__(self, id_format: Callable[[int], str]) -> None:
        self.id_format = id_format
        self.reset(DEFAULT_NOW)

    def reset(self, now: str) -> None:
        self.now = datetime.fromisoformat(now.replace("Z", "+00:00"))
        self.counter = itertools.count(1)

    def clock(self) -> datetime:
        return self.now

    def new_id(self) -> str:
        return self.id_format(next(self.counter))


GoldenApp = tuple[TestClient, Pinned]


def golden_app(
    tmp_path_factory: pytest.TempPathFactory, name: str, id_format: Callable[[int], str]
) -> Iterator[GoldenApp]:
    """The body of a suite's module-scoped app fixture."""
    pinned = Pinned(id_format)
    db = tmp_path_factory.mktemp(name) / "golden.db"
    settings = Settings(auth="off", database_url=f"sqlite:///{db}")
    runtime = build_runtime(settings, clock=pinned.clock, new_id=pinned.new_id)
    with TestClient(create_app(settings, runtime)) as client:
        yield client, pinned


def run_case(request: dict[str, Any], app: GoldenApp) -> tuple[int, Any]:
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


def load_call(folder: Path) -> dict[str, Any]:
    call: dict[str, Any] = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    return call


def compare(folder: Path, status: int, body: Any, request: pytest.FixtureRequest) -> None:
    """Assert the answer equals ``expected.json`` (or rewrite it with ``--update-golden``)."""
    actual = {"status": status, "body": body}
    expected_file = folder / "expected.json"
    if request.config.getoption("--update-golden"):
        text = json.dumps(actual, indent=2, ensure_ascii=False) + "\n"
        expected_file.write_text(text, encoding="utf-8")
    expected = json.loads(expected_file.read_text(encoding="utf-8"))
    assert actual == expected


def check_described(folder: Path, minimum: int) -> None:
    names = cases(folder)
    assert len(names) >= minimum
    for case in names:
        assert load_call(folder / case).get("description"), case
        assert (folder / case / "expected.json").is_file(), case
