"""Shared fixtures: an app with pinned clock and ids, no auth, a temp SQLite store."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fhir_service.knowledge.repository import KnowledgeBase
from fhir_service.main import create_app
from fhir_service.runtime import build_runtime, load_knowledge
from fhir_service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite expected.json files of golden scenarios from the actual responses",
    )


def counter_ids(prefix: str = "id") -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


_KNOWLEDGE: dict[Path, KnowledgeBase] = {}


def shared_knowledge(config: Settings) -> KnowledgeBase:
    """Load each definitions folder once per test session (loading validates and compiles)."""
    folder = config.definitions_dir.resolve()
    if folder not in _KNOWLEDGE:
        _KNOWLEDGE[folder] = load_knowledge(config)
    return _KNOWLEDGE[folder]


def make_app(
    tmp_path: Path,
    *,
    now: datetime = DEFAULT_NOW,
    transport: httpx.AsyncBaseTransport | None = None,
    **settings: Any,
) -> FastAPI:
    """An app on the real definitions with a pinned clock, counter ids and a temp database."""
    values: dict[str, Any] = {
        "auth": "off",
        "database_url": f"sqlite:///{tmp_path / 'test.db'}",
        "fhir_server_allowlist": ("http://ehr.test",),
    }
    values.update(settings)
    config = Settings(**values)
    runtime = build_runtime(
        config,
        clock=lambda: now,
        new_id=counter_ids(),
        transport=transport,
        resolver=lambda _host: ["93.184.216.34"],
        knowledge=shared_knowledge(config),
    )
    return create_app(config, runtime)


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return make_app(tmp_path)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client
