"""Faults inside the service: a rule that raises at run time (R13), and a feedback store that is
locked or unreachable (503 + OperationOutcome, never a hang or a 500)."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bench.generator import build_hook_request
from fhir_service.knowledge.repository import KnowledgeBase
from fhir_service.runtime import load_knowledge
from fhir_service.settings import Settings
from fhir_service.store.sql import SqlStore
from tests.conftest import ROOT
from tests.faults.apps import build_app as _build_app
from tests.faults.apps import shared_knowledge

PV = "muscle-spasm-patient-view"
FEEDBACK = {
    "feedback": [
        {
            "card": "9f1c1f9e-0000-4000-8000-000000000001",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-12-01T12:00:00Z",
        }
    ]
}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of ``definitions/`` for the module (others edit it concurrently)."""
    target = tmp_path_factory.mktemp("defs") / "definitions"
    shutil.copytree(ROOT / "definitions", target)
    return target


@pytest.fixture(scope="module")
def knowledge() -> KnowledgeBase:
    return shared_knowledge()


def build_app(tmp_path: Path, knowledge: KnowledgeBase, store: SqlStore | None = None) -> FastAPI:
    return _build_app(tmp_path, store=store, knowledge=knowledge, fhir_server_allowlist=())


def cards_of(client: TestClient, body: dict[str, Any]) -> tuple[int, list[str]]:
    response = client.post(f"/cds-services/{PV}", json=body)
    if response.status_code != 200:
        return response.status_code, []
    return 200, sorted(c["source"]["topic"]["code"] for c in response.json()["cards"])


def _raising_rule(definitions: Path) -> None:
    """Add a patient-view rule whose applicability raises inside fhirpathpy (TypeError)."""
    source = definitions / "PlanDefinition-rf-01.json"
    if not source.exists():
        pytest.skip("PlanDefinition rf-01 is gone; pick another template rule")
    plan = json.loads(source.read_text(encoding="utf-8"))
    plan["id"] = "rf-01x"
    plan["url"] = plan["url"].replace("/rf-01", "/rf-01x")
    plan["name"] = "RF01XRaises"
    plan["action"][0]["id"] = "rf-01x"
    plan["action"][0]["condition"] = [
        {
            "kind": "applicability",
            "expression": {
                "language": "text/fhirpath",
                # fhirpathpy 2.2.4: max() over path values raises TypeError (RSP §0 item 8).
                "expression": "%Condition.onset.ofType(dateTime).max() > @2020-01-01",
            },
        }
    ]
    (definitions / "PlanDefinition-rf-01x.json").write_text(json.dumps(plan), encoding="utf-8")


def test_rule_that_raises_at_run_time_leaves_the_other_cards(
    tmp_path: Path, snapshot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken_defs = tmp_path / "broken"
    shutil.copytree(snapshot, broken_defs)
    _raising_rule(broken_defs)

    baseline = load_knowledge(Settings(definitions_dir=snapshot))
    with TestClient(build_app(tmp_path, baseline)) as client:
        service = {s["id"]: s for s in client.get("/cds-services").json()["services"]}[PV]
        body = build_hook_request(service, 40, seed=7).body
        status, expected = cards_of(client, body)
    assert status == 200 and expected, "the synthetic record should fire some rule"

    broken = build_app(tmp_path, load_knowledge(Settings(definitions_dir=broken_defs)))
    caplog.set_level(logging.WARNING)
    with TestClient(broken, raise_server_exceptions=False) as client:
        status, got = cards_of(client, body)
    assert status == 200
    assert got == expected
    failures = [r for r in caplog.records if "rf-01x" in json.dumps(vars(r), default=str)]
    assert failures, "the failing rule's id is not in any log record"


def _feedback(client: TestClient) -> tuple[Any, float]:
    start = time.monotonic()
    response = client.post(f"/cds-services/{PV}/feedback", json=FEEDBACK)
    return response, time.monotonic() - start


def _assert_503(response: Any) -> None:
    assert response.status_code == 503, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] in ("error", "fatal")


def test_feedback_store_locked_gives_503(tmp_path: Path, knowledge: KnowledgeBase) -> None:
    path = tmp_path / "locked.db"
    store = SqlStore(f"sqlite:///{path}", timeout_seconds=0.5)
    app = build_app(tmp_path, knowledge, store)
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with TestClient(app, raise_server_exceptions=False) as client:
            response, elapsed = _feedback(client)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _assert_503(response)
    assert elapsed < 0.5 + 1.0
    with TestClient(app) as client:
        response, _ = _feedback(client)
    assert response.status_code == 200, "the store did not recover once the lock was released"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_feedback_store_unreachable_gives_503(
    tmp_path: Path, knowledge: KnowledgeBase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg://fhir:s3cr3t-pw@127.0.0.1:{_closed_port()}/fhir"
    app = build_app(tmp_path, knowledge, SqlStore(url, timeout_seconds=1.0))
    with TestClient(app, raise_server_exceptions=False) as client:
        response, elapsed = _feedback(client)
    _assert_503(response)
    assert elapsed < 1.0 + 2.5  # psycopg's connect_timeout is at least 2 s
    assert "s3cr3t-pw" not in response.text
    assert "s3cr3t-pw" not in caplog.text


def test_hook_call_still_answers_when_the_store_is_unreachable(
    tmp_path: Path, knowledge: KnowledgeBase
) -> None:
    url = f"postgresql+psycopg://fhir:pw@127.0.0.1:{_closed_port()}/fhir"
    app = build_app(tmp_path, knowledge, SqlStore(url, timeout_seconds=1.0))
    with TestClient(app, raise_server_exceptions=False) as client:
        service = {s["id"]: s for s in client.get("/cds-services").json()["services"]}[PV]
        status, cards = cards_of(client, build_hook_request(service, 40, seed=7).body)
    assert status == 200 and cards
