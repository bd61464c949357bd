"""Apps for the hardening suites (faults, fuzz, security): ``tests.conftest.make_app``.

The knowledge base is loaded once per test process (``conftest.shared_knowledge``) and shared
by every app these suites build with their different settings; the defaults are conftest's:
auth off, pinned clock, counter ids, temp SQLite, a public DNS stand-in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fhir_service.knowledge.repository import KnowledgeBase
from fhir_service.settings import Settings
from tests.conftest import make_app
from tests.conftest import shared_knowledge as _conftest_knowledge


def shared_knowledge(definitions: Path | None = None) -> KnowledgeBase:
    """The knowledge of ``definitions`` (default: ``definitions/``), loaded once."""
    settings = Settings() if definitions is None else Settings(definitions_dir=definitions)
    return _conftest_knowledge(settings)


def build_app(tmp_path: Path, **kwargs: Any) -> FastAPI:
    """``make_app`` (accepts ``transport``, ``resolver``, ``store``, ``knowledge``, settings)."""
    return make_app(tmp_path, **kwargs)
