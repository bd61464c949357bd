"""``examples/cds-hooks/``: every request file works against the app as documented in
``examples/README.md`` (``curl -X POST -H 'Content-Type: application/json' --data @file``).

``<service-id>/*.json`` are hook calls (200; a file named after a rule, e.g. ``rf-01-*.json``,
must make that rule's card), ``<service-id>/feedback/*.json`` are feedback bodies (200). The
clock is pinned to the date the examples were written for (2026-12-01T12:00Z).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.test_cds_hooks_support import SERVICES, cds_app, empty_values, rule_codes
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples" / "cds-hooks"
CALLS = sorted(p for p in EXAMPLES.glob("*/*.json"))
FEEDBACK = sorted(p for p in EXAMPLES.glob("*/feedback/*.json"))
RULE_PREFIX = re.compile(r"^((?:rf|ms|as|lab|ty)-[0-9a-z]+(?:-x)?)-", re.IGNORECASE)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(cds_app(tmp_path_factory.mktemp("examples"))) as test_client:
        yield test_client


def test_every_service_has_an_example() -> None:
    assert {p.parent.name for p in CALLS} == set(SERVICES)
    assert FEEDBACK


@pytest.mark.parametrize("path", CALLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_call_is_200(client: TestClient, path: Path) -> None:
    service_id = path.parent.name
    raw = path.read_bytes()
    body = json.loads(raw)
    assert body["hook"] == SERVICES[service_id]
    response = client.post(
        f"/cds-services/{service_id}", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert empty_values(answer) == []
    match = RULE_PREFIX.match(path.name)
    if match:
        assert match.group(1).upper() in rule_codes(answer), rule_codes(answer)


@pytest.mark.parametrize("path", FEEDBACK, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_example_feedback_is_200(client: TestClient, path: Path) -> None:
    service_id = path.parent.parent.name
    response = client.post(
        f"/cds-services/{service_id}/feedback",
        content=path.read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text


def test_readme_documents_the_examples() -> None:
    readme = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    assert "CDS Hooks" in readme
    for path in CALLS + FEEDBACK:
        assert path.name in readme, path.name
