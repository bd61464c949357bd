"""Apps for the hardening suites (faults, fuzz, security) on one shared knowledge base.

Loading and compiling ``definitions/`` costs seconds; these suites build many apps with
different settings, so the knowledge is loaded once per test process (one consistent snapshot
even while ``definitions/`` is being edited) and handed to ``build_runtime(knowledge=...)``.
Defaults match ``tests.conftest.make_app``: auth off, pinned clock, counter ids, temp SQLite.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from fhir_service.knowledge.repository import KnowledgeBase
from fhir_service.main import create_app
from fhir_service.runtime import build_runtime, load_knowledge
from fhir_service.security.allowlist import Resolver
from fhir_service.settings import Settings
from tests.conftest import DEFAULT_NOW, counter_ids


@functools.cache
def shared_knowledge(definitions: Path | None = None) -> KnowledgeBase:
    settings = Settings() if definitions is None else Settings(definitions_dir=definitions)
    return load_knowledge(settings)


def public_resolver(_host: str) -> list[str]:
    return ["93.184.216.34"]


def build_app(
    tmp_path: Path,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver = public_resolver,
    store: Any = None,
    knowledge: KnowledgeBase | None = None,
    **settings: Any,
) -> FastAPI:
    values: dict[str, Any] = {
        "auth": "off",
        "database_url": f"sqlite:///{tmp_path / 'test.db'}",
        "fhir_server_allowlist": ("http://ehr.test",),
    }
    values.update(settings)
    config = Settings(**values)
    runtime = build_runtime(
        config,
        clock=lambda: DEFAULT_NOW,
        new_id=counter_ids(),
        transport=transport,
        resolver=resolver,
        store=store,
        knowledge=knowledge or shared_knowledge(),
    )
    return create_app(config, runtime)
