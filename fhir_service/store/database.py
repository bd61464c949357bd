"""The SQL database behind the store: engine, schema creation, transactions, failure mapping.

The location comes from ``FHIR_SERVICE_DATABASE_URL`` (default ``sqlite:///./var/fhir_service.db``).
SQLite runs in WAL mode with a busy timeout and takes its write lock at ``BEGIN IMMEDIATE`` so that
concurrent writers wait instead of failing; PostgreSQL gets ``connect_timeout`` and
``lock_timeout``. When the database cannot be reached or written (server down, SQLite file locked
beyond the busy timeout, unwritable path) every operation raises :class:`StoreUnavailable`, a 503
:class:`~fhir_service.errors.ServiceUnavailable`, so the API answers 503 + OperationOutcome.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import Connection, Engine, Executable, Table, create_engine, event, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.pool import StaticPool

from fhir_service.errors import ServiceUnavailable
from fhir_service.store.schema import metadata

log = logging.getLogger(__name__)

# Execution option read by the SQLite ``begin`` hook: the BEGIN flavour of a transaction.
_SQLITE_BEGIN = "fhir_service_sqlite_begin"


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


class Database:
    """One SQLAlchemy engine, the schema created on first use, and guarded transactions.

    Args:
        url: The parsed SQLAlchemy URL.
        timeout_seconds: How long an operation waits for a lock or a connection before it gives
            up with :class:`StoreUnavailable`.

    Safe to share between threads.
    """

    def __init__(self, url: URL, *, timeout_seconds: float) -> None:
        self.url = url
        self._timeout = timeout_seconds
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self.engine = self._create_engine()

    # -- engine -----------------------------------------------------------------------------

    def _create_engine(self) -> Engine:
        backend = self.url.get_backend_name()
        if backend == "sqlite":
            return self._create_sqlite_engine()
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": self._timeout}
        if backend == "postgresql":
            query = self.url.query
            connect_args: dict[str, Any] = {}
            if "connect_timeout" not in query:
                connect_args["connect_timeout"] = max(2, round(self._timeout))
            if "options" not in query:
                lock_ms = max(1, int(self._timeout * 1000))
                connect_args["options"] = (
                    f"-c lock_timeout={lock_ms} -c statement_timeout={lock_ms * 3}"
                )
            kwargs["connect_args"] = connect_args
        return create_engine(self.url, **kwargs)

    def _create_sqlite_engine(self) -> Engine:
        memory = _is_sqlite_memory(self.url)
        connect_args: dict[str, Any] = {"timeout": self._timeout}
        kwargs: dict[str, Any] = {}
        if memory:
            # One shared connection, or every pooled connection would see its own database.
            connect_args["check_same_thread"] = False
            kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_timeout"] = self._timeout
        engine = create_engine(self.url, connect_args=connect_args, **kwargs)
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
        if self.url.get_backend_name() != "sqlite":
            return
        path = _sqlite_file(self.url)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._unavailable("create directory", exc)

    def ensure_schema(self) -> None:
        """Create the tables if missing (``create_all``), once; for SQLite, the directory too.

        Raises:
            StoreUnavailable: The database cannot be reached or written.
        """
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
        with self.engine.connect() as conn:
            if write:
                conn = conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
            with conn.begin():
                yield conn

    @contextmanager
    def transaction(self, operation: str, *, write: bool) -> Iterator[Connection]:
        """One transaction (a write one takes the SQLite write lock up front).

        Raises:
            StoreUnavailable: The database cannot be reached or written.
        """
        self.ensure_schema()
        with self._guard(operation), self._begin(write=write) as conn:
            yield conn

    def ping(self) -> None:
        """Check that the database answers (and that the schema exists).

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        with self.transaction("ping", write=False) as conn:
            conn.execute(select(1)).scalar_one()

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()


@functools.cache
def _insert_or_ignore(dialect: str, table: Table, *, returning: bool) -> Executable | None:
    """``INSERT .. ON CONFLICT DO NOTHING`` for ``table``, built once per dialect and table.

    The statement names no values: each execution binds its rows as parameters, so SQLAlchemy
    compiles it once (its compiled cache) instead of coercing every value of every row into a
    new statement. ``returning`` adds ``RETURNING`` of the first primary-key column. None for a
    dialect without ``ON CONFLICT`` (SQLite and PostgreSQL have it).
    """
    if dialect not in ("sqlite", "postgresql"):
        return None
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    stmt = insert(table).on_conflict_do_nothing()
    if returning:
        return stmt.returning(next(iter(table.primary_key.columns)))
    return stmt


def insert_ignoring_conflict(conn: Connection, table: Table, row: Mapping[str, Any]) -> bool:
    """Insert ``row`` unless it breaks a unique key; True when a row was inserted."""
    stmt = _insert_or_ignore(conn.dialect.name, table, returning=True)
    if stmt is not None:
        # RETURNING gives the inserted row only (INSERT's rowcount is not reliable here).
        return conn.execute(stmt, dict(row)).first() is not None
    try:
        with conn.begin_nested():
            conn.execute(table.insert(), dict(row))
    except sa_exc.IntegrityError:
        return False
    return True


def insert_all_ignoring_conflict(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert each of ``rows`` that breaks no unique key, in one ``executemany`` of one statement
    (rows with the same key as an existing row, or as an earlier row, are left out)."""
    if not rows:
        return
    stmt = _insert_or_ignore(conn.dialect.name, table, returning=False)
    if stmt is None:
        for row in rows:
            insert_ignoring_conflict(conn, table, row)
        return
    conn.execute(stmt, [dict(row) for row in rows])
