"""Durable store for issued cards, feedback and the JWT replay cache (SQLAlchemy, sync).

:class:`SqlStore` is the one object the service holds (it implements
:class:`~fhir_service.store.records.Store`); each concern lives in its own module:

* ``store.schema``: the tables, UTC timestamps, storable text;
* ``store.database``: engine, schema creation, transactions, :class:`StoreUnavailable` (503);
* ``store.cards``: the cards of each hook answer, so that feedback can be joined
  (CDS Hooks 2.0 https://cds-hooks.hl7.org/2.0/#feedback: feedback carries no ``hookInstance``);
* ``store.feedback``: feedback items stored once each, unknown cards counted *unmatched*;
* ``store.analytics``: per-rule counts of cards and outcomes;
* ``store.replay``: the ``jti`` replay cache shared by every replica
  (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients).

Nothing stores tokens or patient data: only card/suggestion uuids, rule ids, hook instances,
outcome codes and timestamps. The methods are blocking; the API calls them through a thread pool.
One :class:`SqlStore` is safe to share between threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from fhir_service.store import analytics as _analytics
from fhir_service.store import cards as _cards
from fhir_service.store import feedback as _feedback
from fhir_service.store.database import Database, StoreUnavailable
from fhir_service.store.records import FeedbackEntry, FeedbackResult, IssuedCard
from fhir_service.store.replay import ReplayCache
from fhir_service.store.schema import (
    UtcDateTime,
    feedback_rows,
    issued_cards,
    jti_cache,
    metadata,
)

__all__ = [
    "SqlStore",
    "StoreUnavailable",
    "UtcDateTime",
    "feedback_rows",
    "issued_cards",
    "jti_cache",
    "metadata",
]

log = logging.getLogger(__name__)


class SqlStore:
    """Issued cards, feedback, analytics and the JWT replay cache in one SQL database.

    Args:
        url: SQLAlchemy URL (``FHIR_SERVICE_DATABASE_URL``), e.g. ``sqlite:///./var/x.db``
            or ``postgresql+psycopg://user@host/db``.
        timeout_seconds: How long an operation waits for a lock (SQLite busy timeout,
            PostgreSQL ``lock_timeout``), a connection (pool and ``connect_timeout``) before it
            gives up with :class:`StoreUnavailable`.
        jti_leeway_seconds: How long after ``exp`` a ``jti`` is still remembered; the JWT check
            accepts tokens up to 60 s after ``exp`` (README "Settings"), so the cache must
            keep them at least that long.
        clock: Wall clock in epoch seconds for the replay cache (never ``FHIR_SERVICE_NOW``).

    The engine is created and the tables are created if missing (``create_all``); for a SQLite
    file the parent directory is created. When the database is unreachable at that moment the
    constructor logs a warning and does not raise: every later operation retries the schema
    and raises :class:`StoreUnavailable` while the database stays unreachable, so the service
    can start and answer 503 on feedback only. A malformed URL or a missing driver raises.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 5.0,
        jti_leeway_seconds: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = Database(make_url(url), timeout_seconds=timeout_seconds)
        self._replay = ReplayCache(self._db, leeway_seconds=jti_leeway_seconds, clock=clock)
        try:
            self._db.ensure_schema()
        except StoreUnavailable:
            log.warning(
                "store %s unavailable at start; the schema is created on first use",
                self._db.url.render_as_string(hide_password=True),
            )

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and maintenance; the tables are module-level)."""
        return self._db.engine

    def record_cards(
        self,
        service_id: str,
        hook_instance: str,
        cards: Sequence[IssuedCard],
        issued_at: datetime,
    ) -> None:
        """Remember the cards of one hook answer so that their feedback can be joined.

        Idempotent: a card already recorded for ``service_id`` keeps its first record (a
        repeated ``hookInstance`` yields the same card uuids, see ``cds.invoke.call_uuids``).

        Args:
            service_id: The CDS service that answered.
            hook_instance: The request's ``hookInstance``.
            cards: The cards returned.
            issued_at: When they were returned (stored in UTC; naive means UTC).

        Raises:
            StoreUnavailable: The database cannot be reached or written.
        """
        _cards.record_cards(self._db, service_id, hook_instance, cards, issued_at)

    def record_feedback(
        self, service_id: str, items: Sequence[FeedbackEntry], received_at: datetime
    ) -> FeedbackResult:
        """Store validated feedback items once each (https://cds-hooks.hl7.org/2.0/#feedback).

        An item's identity is (service id, card, outcome, outcomeTimestamp as an instant,
        accepted suggestion ids as a set, override reason code/system and comment); an item
        already stored is counted as a duplicate and not stored again. An item whose card this
        service never issued is stored too, counted ``unmatched`` and logged at INFO with its
        card uuid only. A known card contributes its hook instance and rule id to the row.

        Args:
            service_id: The service named in the URL.
            items: Output of :func:`fhir_service.cds.feedback.parse_feedback`.
            received_at: Arrival time (stored in UTC; naive means UTC).

        Returns:
            The counts; an empty ``items`` touches nothing and returns zeros.

        Raises:
            StoreUnavailable: The database cannot be reached or written.
        """
        return _feedback.record_feedback(self._db, service_id, items, received_at)

    def analytics(self, service_id: str) -> dict[str, Any]:
        """Per-rule counts of issued cards and their outcomes for one service.

        ``accepted`` and ``overridden`` count distinct cards with at least one such feedback
        item; ``overrideReasons`` counts distinct overridden cards per coded reason (sorted by
        count, then system and code). Unmatched feedback belongs to no rule and is left out.

        Args:
            service_id: The CDS service id.

        Returns:
            ``{"service": id, "rules": [{"rule", "issued", "accepted", "overridden",
            "overrideReasons": [{"code", "system", "count"}]}]}``, rules sorted by id.

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        return _analytics.analytics(self._db, service_id)

    def jti_seen(self, iss: str, jti: str, exp: int) -> bool:
        """Record a token's ``jti`` and tell whether it was already used (replay cache).

        The cache is shared by every replica on the same database. A ``(iss, jti)`` pair is
        *seen* while its row has not expired, i.e. until ``exp`` + ``jti_leeway_seconds`` by the
        wall clock; an expired row is taken over by the new token. Expired rows are purged
        opportunistically, at most once a minute per store.

        Args:
            iss: The token's ``iss``.
            jti: The token's ``jti``.
            exp: The token's ``exp`` (epoch seconds).

        Returns:
            True when the pair is already present and not expired (a replay: refuse the
            token); False when it was recorded now.

        Raises:
            StoreUnavailable: The database cannot be reached or written.
        """
        return self._replay.seen(iss, jti, exp)

    def ping(self) -> None:
        """Check that the database answers (and that the schema exists).

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        self._db.ping()

    def close(self) -> None:
        """Release every pooled connection; the store must not be used afterwards."""
        self._db.close()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
