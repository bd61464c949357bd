"""Everything a request handler needs, built once per app (no module-level mutable state).

Tests build a ``Runtime`` with their own clock, id factory, HTTP transport and store.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from http.cookiejar import DefaultCookiePolicy

import anyio
import httpx
import orjson

from fhir_service.cds.smart_link import assessment_questionnaires
from fhir_service.clients import FhirFetcher
from fhir_service.clients.fhir_client import FhirClient
from fhir_service.clock import Clock, IdFactory, fixed_clock, system_clock, uuid4_factory
from fhir_service.engine.apply.plan_definition import PlanEngine
from fhir_service.knowledge.loader import load_definitions
from fhir_service.knowledge.repository import KnowledgeBase
from fhir_service.knowledge.services import CdsService, build_services
from fhir_service.security import ClientVerifier
from fhir_service.security.allowlist import Allowlist, Resolver
from fhir_service.settings import Settings
from fhir_service.store.records import Store

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    knowledge: KnowledgeBase
    engine: PlanEngine
    services: dict[str, CdsService]
    clock: Clock
    new_id: IdFactory
    http: httpx.AsyncClient
    allowlist: Allowlist
    fetcher: FhirFetcher
    limiter: anyio.CapacityLimiter
    store: Store
    verifier: ClientVerifier | None = None
    #: rule url → (Questionnaire canonical, title) the SMART app opens (cds/smart_link.py)
    assessments: dict[str, tuple[str, str]] = field(default_factory=dict)

    @functools.cached_property
    def discovery_json(self) -> bytes:
        """The CDS Hooks discovery document (https://cds-hooks.hl7.org/2.0/#discovery), one
        entry per service in id order, serialised once: the services never change after
        start-up, and discovery must stay fast while rule evaluation holds the CPU."""
        services = [s.discovery() for s in sorted(self.services.values(), key=lambda s: s.id)]
        return orjson.dumps({"services": services})

    @property
    def fhir_base(self) -> str:
        return f"{self.settings.public_base_url}/fhir"

    def now(self) -> datetime:
        return self.clock()

    async def aclose(self) -> None:
        await self.http.aclose()
        self.store.close()


class _StoreReplayCache:
    """JWT ``jti`` replay cache kept in the shared database, so replicas agree."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def seen(self, iss: str, jti: str, exp: int) -> bool:
        return self.store.jti_seen(iss, jti, exp)


def load_knowledge(settings: Settings) -> KnowledgeBase:
    artifacts, terminology, compiler = load_definitions(settings.definitions_dir)
    return KnowledgeBase(artifacts, terminology, compiler)


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    new_id: IdFactory | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver | None = None,
    store: Store | None = None,
    knowledge: KnowledgeBase | None = None,
) -> Runtime:
    """Load and validate the knowledge, then wire the collaborators (raises on bad knowledge)."""
    knowledge = knowledge or load_knowledge(settings)
    engine = PlanEngine(knowledge)
    http = httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,  # proxy variables must not reroute calls to an EHR
        timeout=httpx.Timeout(settings.prefetch_deadline_seconds, connect=3.0),
    )
    http.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # never keep cookies
    allowlist = Allowlist(settings.fhir_server_allowlist, resolver)
    fetcher = FhirClient(
        http,
        allowlist,
        max_bytes=settings.upstream_max_bytes,
        max_pages=settings.upstream_max_pages,
    )
    if store is None:
        from fhir_service.store.sql import SqlStore

        store = SqlStore(settings.database_url)
    verifier = None
    if settings.auth == "jwt":
        from fhir_service.security.jwt import JwtVerifier

        verifier = JwtVerifier(
            settings.load_trusted_issuers(), allowlist, http, _StoreReplayCache(store)
        )
    if clock is None:
        clock = fixed_clock(settings.now) if settings.now else system_clock
    return Runtime(
        settings=settings,
        knowledge=knowledge,
        engine=engine,
        services=build_services(knowledge),
        clock=clock,
        new_id=new_id or uuid4_factory,
        http=http,
        allowlist=allowlist,
        fetcher=fetcher,
        limiter=anyio.CapacityLimiter(settings.evaluation_concurrency),
        store=store,
        verifier=verifier,
        assessments=assessment_questionnaires(knowledge),
    )
