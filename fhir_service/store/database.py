"""The SQL database behind the store: engine, schema creation, transactions, failure mapping.

The location comes from ``FHIR_SERVICE_DATABASE_URL`` (default ``sqlite:///./var/fhir_service.db``).
SQLite runs in WAL mode with a busy timeout; a write transaction takes its write lock at
``BEGIN IMMEDIATE`` so that concurrent writers wait instead of failing, and a write that is one
statement (a new ``jti``, an answer's cards) runs without ``BEGIN`` so that it holds the lock only
inside SQLite (:meth:`Database.single_statements`); PostgreSQL gets ``connect_timeout`` and
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

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Executable,
    Insert,
    Table,
    bindparam,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.pool import StaticPool

from fhir_service.errors import ServiceUnavailable
from fhir_service.store.schema import metadata

log = logging.getLogger(__name__)

# Execution option read by the SQLite ``begin`` hook: the BEGIN flavour of a transaction, or
# ``_AUTOCOMMIT`` for none (each statement is then its own transaction).
_SQLITE_BEGIN = "fhir_service_sqlite_begin"
_AUTOCOMMIT = "AUTOCOMMIT"


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
            if mode != _AUTOCOMMIT:
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
    def _begin(self, *, write: bool, autocommit: bool = False) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if write:
                mode = _AUTOCOMMIT if autocommit else "IMMEDIATE"
                conn = conn.execution_options(**{_SQLITE_BEGIN: mode})
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

    @contextmanager
    def single_statements(self, operation: str) -> Iterator[Connection]:
        """Writes that are each correct on their own: on SQLite each statement is its own
        transaction (no ``BEGIN``), elsewhere they share one transaction.

        A SQLite ``BEGIN IMMEDIATE`` holds the database's one write lock from ``BEGIN`` to
        ``COMMIT``, across every Python step in between; a thread that waits for the GIL there
        (while rule evaluation holds it) keeps every other writer of every worker process
        waiting, and SQLite's busy handler makes them sleep in growing steps. A statement
        alone takes and releases the lock inside the SQLite library, where the GIL is released
        (https://www.sqlite.org/lang_transaction.html, "Transactions": autocommit). So a
        statement here must not ``RETURNING`` rows (the transaction would stay open until
        they are fetched): read ``rowcount`` instead.

        Raises:
            StoreUnavailable: The database cannot be reached or written.
        """
        self.ensure_schema()
        with self._guard(operation), self._begin(write=True, autocommit=True) as conn:
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


def _on_conflict_do_nothing(dialect: str, table: Table) -> Insert | None:
    """``INSERT .. ON CONFLICT DO NOTHING`` for ``table``; None for a dialect without it."""
    if dialect == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return None


@functools.cache
def _insert_one_or_ignore(dialect: str, table: Table) -> Executable | None:
    """The statement of :func:`insert_ignoring_conflict`, built once per dialect and table.

    It names no values: each execution binds its row as parameters, so SQLAlchemy compiles it
    once (its compiled cache) instead of coercing every value into a new statement. SQLite
    counts the row through ``rowcount`` (its ``sqlite3_changes()``), so that the statement
    stands alone (:meth:`Database.single_statements`); PostgreSQL through ``RETURNING`` of the
    first primary-key column.
    """
    stmt = _on_conflict_do_nothing(dialect, table)
    if stmt is None or dialect == "sqlite":
        return stmt
    return stmt.returning(next(iter(table.primary_key.columns)))


# Most rows in one multi-row INSERT (SQLite allows 32,766 parameters per statement).
_ROWS_PER_STATEMENT = 500


@functools.lru_cache(maxsize=64)
def _insert_rows_or_ignore(
    dialect: Dialect, table: Table, columns: tuple[str, ...], count: int
) -> Executable | None:
    """One ``INSERT .. VALUES (..), (..) ON CONFLICT DO NOTHING`` of ``count`` rows, whose
    values are parameters ``<column>_<row>`` typed like their columns (so that e.g.
    ``UtcDateTime`` still converts them).

    Written as text because SQLAlchemy compiles a multi-row ``Insert.values()`` anew at every
    execution (it is kept out of its compiled cache); the text is built once per row count,
    with names quoted by the dialect. SQLite and PostgreSQL share this syntax.
    """
    if dialect.name not in ("sqlite", "postgresql"):
        return None
    quote = dialect.identifier_preparer.quote
    rows = ", ".join("(" + ", ".join(f":{c}_{n}" for c in columns) + ")" for n in range(count))
    sql = (
        f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
        f"({', '.join(quote(c) for c in columns)}) VALUES {rows} ON CONFLICT DO NOTHING"
    )
    params = [bindparam(f"{c}_{n}", type_=table.c[c].type) for n in range(count) for c in columns]
    return text(sql).bindparams(*params)


def insert_ignoring_conflict(conn: Connection, table: Table, row: Mapping[str, Any]) -> bool:
    """Insert ``row`` unless it breaks a unique key; True when a row was inserted."""
    dialect = conn.dialect.name
    stmt = _insert_one_or_ignore(dialect, table)
    if stmt is None:
        try:
            with conn.begin_nested():
                conn.execute(table.insert(), dict(row))
        except sa_exc.IntegrityError:
            return False
        return True
    result = conn.execute(stmt, dict(row))
    if dialect == "sqlite":
        return result.rowcount == 1
    return result.first() is not None


def insert_all_ignoring_conflict(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert each of ``rows`` (all with the same keys) that breaks no unique key, in one
    multi-row statement (per 500 rows); a row with the key of an existing row, or of an
    earlier row, is left out."""
    if not rows:
        return
    columns = tuple(rows[0])
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        stmt = _insert_rows_or_ignore(conn.dialect, table, columns, len(chunk))
        if stmt is None:
            for row in chunk:
                insert_ignoring_conflict(conn, table, row)
            continue
        params = {f"{c}_{n}": row[c] for n, row in enumerate(chunk) for c in columns}
        conn.execute(stmt, params)
