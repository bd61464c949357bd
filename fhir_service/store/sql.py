"""Durable store for issued cards, feedback and the JWT replay cache (SQLAlchemy, sync).

Why it exists (CDS Hooks 2.0 https://cds-hooks.hl7.org/2.0/#feedback and #trusting-cds-clients):

* Feedback carries no ``hookInstance``: to join an outcome back to the invocation the service
  keeps ``card uuid → (service id, hookInstance, rule)`` when it answers a hook call
  (:meth:`SqlStore.record_cards`).
* Feedback is answered 200 for unknown card uuids (stored, counted and logged as *unmatched*) and
  for repeated items, which are idempotent: the identity of an item is (service id, card,
  outcome, outcomeTimestamp, accepted suggestion ids, override reason) and a unique key on its
  digest keeps it stored once.
* A ``jti`` is accepted once (CDS Hooks 2.0: a ``jti`` not seen before, kept for the token's
  lifetime); the cache lives in the database so that every replica sees the same ``jti`` values.
* When the database cannot be reached or written (server down, SQLite file locked beyond the busy
  timeout, unwritable path) every operation raises :class:`StoreUnavailable`, a 503
  :class:`~fhir_service.errors.ServiceUnavailable`, so the API answers 503 + OperationOutcome.

The location comes from ``FHIR_SERVICE_DATABASE_URL`` (default ``sqlite:///./var/fhir_service.db``).
SQLite runs in WAL mode with a busy timeout and takes its write lock at ``BEGIN IMMEDIATE`` so that
concurrent writers wait instead of failing; PostgreSQL gets ``connect_timeout`` and
``lock_timeout``. Nothing stores tokens or patient data: only card/suggestion uuids, rule ids,
hook instances, outcome codes and timestamps (a free-text ``userComment`` is reduced to a flag).
Timestamps are stored in UTC.

The methods are blocking; the API calls them through a thread pool. One :class:`SqlStore` is safe
to share between threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    distinct,
    event,
    func,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from fhir_service.errors import ServiceUnavailable
from fhir_service.store.records import (
    FeedbackEntry,
    FeedbackResult,
    IssuedCard,
    RecordedFeedback,
)

log = logging.getLogger(__name__)

# Execution option read by the SQLite ``begin`` hook: the BEGIN flavour of a transaction.
_SQLITE_BEGIN = "fhir_service_sqlite_begin"
# Seconds between opportunistic purges of expired replay-cache rows (per SqlStore).
_PURGE_INTERVAL_SECONDS = 60.0
# Bound for ``exp`` so that a far-future value still fits a signed 64-bit column.
_MAX_EXP = 2**62
# Longest card text echoed in a log line.
_LOG_CARD_CHARS = 80


class StoreUnavailable(ServiceUnavailable):
    """The store cannot be reached or written; the API answers 503 + OperationOutcome.

    A subclass of :class:`~fhir_service.errors.ServiceUnavailable` (503, issue code
    ``transient``) whose diagnostics never carry the database URL or the driver message.
    """

    def __init__(self, operation: str) -> None:
        super().__init__(
            "The feedback store is temporarily unavailable; retry later.",
            headers={"Retry-After": "5"},
        )
        self.operation = operation


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back as an aware UTC ``datetime``.

    PostgreSQL gets ``timestamptz``; SQLite, which has no time zones, gets the naive UTC value.
    A naive input is taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 (the TypeDecorator signature)
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

issued_cards = Table(
    "cds_issued_card",
    metadata,
    Column("service_id", String(200), primary_key=True),
    Column("card_uuid", String(200), primary_key=True),
    Column("hook_instance", Text, nullable=False),
    Column("rule_id", String(100), nullable=False),
    Column("indicator", String(20), nullable=False),
    Column("suggestion_uuids", Text, nullable=False),  # JSON array of strings
    Column("issued_at", UtcDateTime, nullable=False),
    Index("ix_cds_issued_card_rule", "service_id", "rule_id"),
)

feedback_rows = Table(
    "cds_feedback",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # sha256 of the item's identity (see _identity): one row per distinct feedback item.
    Column("identity", String(64), nullable=False, unique=True),
    Column("service_id", Text, nullable=False),
    Column("card_uuid", Text, nullable=False),
    Column("matched", Boolean, nullable=False),
    Column("hook_instance", Text, nullable=True),
    Column("rule_id", String(100), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", UtcDateTime, nullable=False),
    Column("accepted_suggestions", Text, nullable=False),  # JSON array of strings
    Column("override_reason_system", Text, nullable=True),
    Column("override_reason_code", Text, nullable=True),
    Column("has_override_comment", Boolean, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Index("ix_cds_feedback_rule", "service_id", "rule_id"),
)

jti_cache = Table(
    "jwt_replay",
    metadata,
    Column("digest", String(64), primary_key=True),  # sha256 of [iss, jti]
    Column("iss", Text, nullable=False),
    Column("jti", Text, nullable=False),
    Column("exp", BigInteger, nullable=False),
    Index("ix_jwt_replay_exp", "exp"),
)


def _clean(text: str) -> str:
    """Make client text storable everywhere: no NUL (PostgreSQL), no lone surrogates (UTF-8)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _digest(payload: Any) -> str:
    canonical = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _identity(service_id: str, item: FeedbackEntry, instant: datetime) -> str:
    """Digest of what makes a feedback item the same item (its identity, not its arrival)."""
    return _digest(
        [
            service_id,
            item.card,
            item.outcome,
            instant.isoformat(timespec="microseconds"),
            sorted(set(item.accepted_suggestions)),
            item.override_reason_system,
            item.override_reason_code,
            item.override_comment,
        ]
    )


def _utc(instant: datetime) -> datetime:
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory and ``file:`` URI databases."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    return database.startswith("file:") and "mode=memory" in database


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
        self._url = make_url(url)
        self._timeout = timeout_seconds
        self._leeway = jti_leeway_seconds
        self._clock = clock
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._last_purge = float("-inf")
        self._engine = self._create_engine()
        try:
            self._ensure_schema()
        except StoreUnavailable:
            log.warning(
                "store %s unavailable at start; the schema is created on first use",
                self._url.render_as_string(hide_password=True),
            )

    # -- engine -----------------------------------------------------------------------------

    def _create_engine(self) -> Engine:
        backend = self._url.get_backend_name()
        if backend == "sqlite":
            return self._create_sqlite_engine()
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": self._timeout}
        if backend == "postgresql":
            query = self._url.query
            connect_args: dict[str, Any] = {}
            if "connect_timeout" not in query:
                connect_args["connect_timeout"] = max(2, round(self._timeout))
            if "options" not in query:
                lock_ms = max(1, int(self._timeout * 1000))
                connect_args["options"] = (
                    f"-c lock_timeout={lock_ms} -c statement_timeout={lock_ms * 3}"
                )
            kwargs["connect_args"] = connect_args
        return create_engine(self._url, **kwargs)

    def _create_sqlite_engine(self) -> Engine:
        memory = _is_sqlite_memory(self._url)
        connect_args: dict[str, Any] = {"timeout": self._timeout}
        kwargs: dict[str, Any] = {}
        if memory:
            # One shared connection, or every pooled connection would see its own database.
            connect_args["check_same_thread"] = False
            kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_timeout"] = self._timeout
        engine = create_engine(self._url, connect_args=connect_args, **kwargs)
        busy_ms = max(0, int(self._timeout * 1000))

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy emits BEGIN itself (below); sqlite3 must not (SQLAlchemy SQLite docs,
            # "Serializable isolation / Savepoints / Transactional DDL").
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                if not memory:
                    cursor.execute("PRAGMA journal_mode = WAL")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so a
            # read-then-write transaction never fails on a lock upgrade.
            mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and maintenance; the tables are module-level)."""
        return self._engine

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        """Map "the database is not there" failures to :class:`StoreUnavailable`."""
        try:
            yield
        except (
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.DisconnectionError,
            sa_exc.TimeoutError,
        ) as exc:
            self._unavailable(operation, exc)
        except sa_exc.DBAPIError as exc:
            # A plain DatabaseError is e.g. SQLite's "file is not a database"; anything more
            # specific (IntegrityError, ProgrammingError, DataError) is a bug and propagates.
            if exc.connection_invalidated or type(exc) is sa_exc.DatabaseError:
                self._unavailable(operation, exc)
            raise

    def _unavailable(self, operation: str, exc: Exception) -> NoReturn:
        orig = getattr(exc, "orig", None) or exc
        first_line = (str(orig).splitlines() or [""])[0][:200]
        log.warning("store %s failed: %s: %s", operation, type(orig).__name__, first_line)
        raise StoreUnavailable(operation) from exc

    def _make_parent_directory(self) -> None:
        if self._url.get_backend_name() != "sqlite":
            return
        path = _sqlite_file(self._url)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._unavailable("create directory", exc)

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            self._make_parent_directory()
            for attempt in range(3):
                try:
                    with self._guard("create schema"), self._begin(write=True) as conn:
                        metadata.create_all(conn)
                    break
                except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
                    # Another replica created the same tables concurrently; check again.
                    if attempt == 2:
                        raise
            self._schema_ready = True

    @contextmanager
    def _begin(self, *, write: bool) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if write:
                conn = conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
            with conn.begin():
                yield conn

    @contextmanager
    def _transaction(self, operation: str, *, write: bool) -> Iterator[Connection]:
        self._ensure_schema()
        with self._guard(operation), self._begin(write=write) as conn:
            yield conn

    @staticmethod
    def _insert_ignoring_conflict(conn: Connection, table: Table, row: Mapping[str, Any]) -> bool:
        """Insert ``row`` unless it breaks a unique key; True when a row was inserted."""
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = sqlite_insert if dialect == "sqlite" else pg_insert
            key = next(iter(table.primary_key.columns))
            # RETURNING gives the inserted row only (INSERT's rowcount is not reliable here).
            stmt = insert(table).values(row).on_conflict_do_nothing().returning(key)
            return conn.execute(stmt).first() is not None
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(row))
        except sa_exc.IntegrityError:
            return False
        return True

    # -- public API -------------------------------------------------------------------------

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
        if not cards:
            return
        service = _clean(service_id)
        rows: dict[str, dict[str, Any]] = {}
        for card in cards:
            uuid = _clean(card.card_uuid)
            rows.setdefault(
                uuid,
                {
                    "service_id": service,
                    "card_uuid": uuid,
                    "hook_instance": _clean(hook_instance),
                    "rule_id": _clean(card.rule_id),
                    "indicator": _clean(card.indicator),
                    "suggestion_uuids": json.dumps([_clean(s) for s in card.suggestion_uuids]),
                    "issued_at": _utc(issued_at),
                },
            )
        with self._transaction("record cards", write=True) as conn:
            for row in rows.values():
                self._insert_ignoring_conflict(conn, issued_cards, row)

    def _issued(
        self, conn: Connection, service_id: str, cards: set[str]
    ) -> dict[str, tuple[str, str]]:
        """Card uuid → (hook instance, rule id) for the given cards issued by ``service_id``."""
        found: dict[str, tuple[str, str]] = {}
        ordered = sorted(cards)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            query = select(
                issued_cards.c.card_uuid, issued_cards.c.hook_instance, issued_cards.c.rule_id
            ).where(issued_cards.c.service_id == service_id, issued_cards.c.card_uuid.in_(chunk))
            for card_uuid, hook_instance, rule_id in conn.execute(query):
                found[card_uuid] = (hook_instance, rule_id)
        return found

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
        if not items:
            return FeedbackResult(stored=0, duplicates=0, unmatched=0)
        service = _clean(service_id)
        received = _utc(received_at)
        stored = duplicates = unmatched = 0
        recorded: list[RecordedFeedback] = []
        logged: set[str] = set()
        with self._transaction("record feedback", write=True) as conn:
            issued = self._issued(conn, service, {_clean(item.card) for item in items})
            for item in items:
                card = _clean(item.card)
                instant = item.outcome_instant
                known = issued.get(card)
                rule_id: str | None = known[1] if known else None
                row = {
                    "identity": _identity(service_id, item, instant),
                    "service_id": service,
                    "card_uuid": card,
                    "matched": known is not None,
                    "hook_instance": known[0] if known else None,
                    "rule_id": rule_id,
                    "outcome": item.outcome,
                    "outcome_timestamp": instant,
                    "accepted_suggestions": json.dumps(
                        [_clean(s) for s in item.accepted_suggestions]
                    ),
                    "override_reason_system": _opt_clean(item.override_reason_system),
                    "override_reason_code": _opt_clean(item.override_reason_code),
                    "has_override_comment": bool(item.override_comment),
                    "received_at": received,
                }
                if self._insert_ignoring_conflict(conn, feedback_rows, row):
                    stored += 1
                    recorded.append(
                        RecordedFeedback(
                            rule_id,
                            item.outcome,
                            item.override_reason_system,
                            item.override_reason_code,
                        )
                    )
                else:
                    duplicates += 1
                if known is None:
                    unmatched += 1
                    if card not in logged:
                        logged.add(card)
                        log.info(
                            "feedback for unmatched card %r on service %s",
                            card[:_LOG_CARD_CHARS],
                            service,
                        )
        log.debug(
            "feedback on %s: %d stored, %d duplicate(s), %d unmatched",
            service,
            stored,
            duplicates,
            unmatched,
        )
        return FeedbackResult(stored, duplicates, unmatched, tuple(recorded))

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
        service = _clean(service_id)
        issued_q = (
            select(issued_cards.c.rule_id, func.count())
            .where(issued_cards.c.service_id == service)
            .group_by(issued_cards.c.rule_id)
        )
        fb = feedback_rows.c
        outcome_q = (
            select(fb.rule_id, fb.outcome, func.count(distinct(fb.card_uuid)))
            .where(fb.service_id == service, fb.rule_id.is_not(None))
            .group_by(fb.rule_id, fb.outcome)
        )
        reason_q = (
            select(
                fb.rule_id,
                fb.override_reason_system,
                fb.override_reason_code,
                func.count(distinct(fb.card_uuid)),
            )
            .where(
                fb.service_id == service,
                fb.rule_id.is_not(None),
                fb.outcome == "overridden",
                fb.override_reason_code.is_not(None),
            )
            .group_by(fb.rule_id, fb.override_reason_system, fb.override_reason_code)
        )
        rules: dict[str, dict[str, Any]] = {}

        def entry(rule: str) -> dict[str, Any]:
            return rules.setdefault(
                rule,
                {"rule": rule, "issued": 0, "accepted": 0, "overridden": 0, "overrideReasons": []},
            )

        with self._transaction("analytics", write=False) as conn:
            for rule, count in conn.execute(issued_q):
                entry(rule)["issued"] = int(count)
            for rule, outcome, count in conn.execute(outcome_q):
                if outcome in ("accepted", "overridden"):
                    entry(rule)[outcome] = int(count)
            for rule, system, code, count in conn.execute(reason_q):
                entry(rule)["overrideReasons"].append(
                    {"code": code, "system": system, "count": int(count)}
                )
        for value in rules.values():
            value["overrideReasons"].sort(key=lambda r: (-r["count"], r["system"] or "", r["code"]))
        return {"service": service_id, "rules": [rules[k] for k in sorted(rules)]}

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
        now = int(self._clock())
        cutoff = now - self._leeway
        exp = max(-_MAX_EXP, min(_MAX_EXP, int(exp)))
        digest = _digest([iss, jti])
        row = {"digest": digest, "iss": _clean(iss), "jti": _clean(jti), "exp": exp}
        with self._transaction("jti check", write=True) as conn:
            if self._insert_ignoring_conflict(conn, jti_cache, row):
                seen = False
            else:
                taken_over = conn.execute(
                    update(jti_cache)
                    .where(jti_cache.c.digest == digest, jti_cache.c.exp < cutoff)
                    .values(iss=row["iss"], jti=row["jti"], exp=exp)
                )
                seen = taken_over.rowcount == 0
            if now - self._last_purge >= _PURGE_INTERVAL_SECONDS:
                self._last_purge = now
                conn.execute(
                    delete(jti_cache).where(jti_cache.c.exp < cutoff, jti_cache.c.digest != digest)
                )
        return seen

    def ping(self) -> None:
        """Check that the database answers (and that the schema exists).

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        with self._transaction("ping", write=False) as conn:
            conn.execute(select(1)).scalar_one()

    def close(self) -> None:
        """Release every pooled connection; the store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _opt_clean(text: str | None) -> str | None:
    return None if text is None else _clean(text)
