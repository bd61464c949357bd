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


def public_resolver(_host: str) -> list[str]:
    """DNS stand-in: every host is public (tests use no network unless they say so)."""
    return ["93.184.216.34"]


def make_app(
    tmp_path: Path,
    *,
    now: datetime = DEFAULT_NOW,
    transport: httpx.AsyncBaseTransport | None = None,
    resolver: Callable[[str], list[str]] = public_resolver,
    store: Any = None,
    knowledge: KnowledgeBase | None = None,
    **settings: Any,
) -> FastAPI:
    """An app with a pinned clock, counter ids and a temp database.

    The knowledge base of ``definitions_dir`` (the real ``definitions/`` by default) is loaded
    once per test session.
    """
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
        resolver=resolver,
        store=store,
        knowledge=knowledge or shared_knowledge(config),
    )
    return create_app(config, runtime)


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return make_app(tmp_path)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client
