"""SqlStore against a real PostgreSQL server (the session fixture in ``conftest.py``).

``TestPostgresStore`` runs every test of ``StoreContract`` (``tests/unit/test_store.py``) on a
fresh database per test; the functions below cover what only a server can show: the server going
down and coming back, a lock held beyond ``lock_timeout``, an unreachable host at start.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import PgServer
from sqlalchemy.engine import make_url
from test_store import (
    ISSUED_AT,
    RECEIVED_AT,
    SERVICE,
    MakeStore,
    StoreContract,
    accepted,
    all_operations,
    assert_unavailable,
    card,
    rule_entry,
)

from fhir_service.store import FeedbackResult, SqlStore

pytestmark = pytest.mark.slow


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def make_store(self, pg_database: str) -> Iterator[MakeStore]:
        made: list[SqlStore] = []

        def make(**kwargs: Any) -> SqlStore:
            store = SqlStore(pg_database, **kwargs)
            made.append(store)
            return store

        yield make
        for store in made:
            store.close()


def test_schema_uses_timestamptz_and_unique_identity(pg_database: str) -> None:
    with SqlStore(pg_database) as store, store.engine.connect() as conn:
        types = dict(
            conn.exec_driver_sql(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'cds_feedback'"
            ).all()
        )
        assert types["outcome_timestamp"] == "timestamp with time zone"
        assert types["received_at"] == "timestamp with time zone"
        unique = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'cds_feedback' "
            "AND indexdef LIKE 'CREATE UNIQUE INDEX%%(identity)'"
        ).scalar_one()
        assert unique == 1


def test_store_sessions_carry_lock_and_statement_timeouts(pg_database: str) -> None:
    with SqlStore(pg_database, timeout_seconds=0.3) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW lock_timeout").scalar_one() == "300ms"
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "900ms"


def test_server_down_gives_store_unavailable_and_the_store_recovers(
    pg_server: PgServer, pg_database: str
) -> None:
    store = SqlStore(pg_database)
    store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
    pg_server.stop()
    try:
        for operation in [
            store.ping,
            lambda: store.analytics(SERVICE),
            *all_operations(store),
        ]:
            started = time.monotonic()
            error = assert_unavailable(operation)
            assert time.monotonic() - started < 3
            assert str(pg_server.socket_dir) not in str(error.outcome())
    finally:
        pg_server.start()
    # pooled connections died with the server; pre-ping replaces them transparently
    store.ping()
    assert store.record_feedback(SERVICE, [accepted("c-1")], RECEIVED_AT) == FeedbackResult(
        stored=1, duplicates=0, unmatched=0
    )
    assert rule_entry(store, SERVICE, "MS-01")["accepted"] == 1
    store.close()


def test_table_locked_beyond_lock_timeout_gives_store_unavailable(
    pg_server: PgServer, pg_database: str
) -> None:
    store = SqlStore(pg_database, timeout_seconds=0.3)
    store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
    dbname = make_url(pg_database).database
    holder = psycopg.connect(host=str(pg_server.socket_dir), user="postgres", dbname=dbname)
    try:
        holder.execute(
            "LOCK TABLE cds_issued_card, cds_feedback, jwt_replay IN ACCESS EXCLUSIVE MODE"
        )
        for operation in all_operations(store):
            started = time.monotonic()
            assert_unavailable(operation)
            assert 0.25 <= time.monotonic() - started < 3
    finally:
        holder.rollback()
        holder.close()
    for operation in all_operations(store):
        operation()
    store.close()


def test_unreachable_socket_at_start_does_not_raise(pg_server: PgServer) -> None:
    url = f"postgresql+psycopg://postgres@/postgres?host={pg_server.root / 'no-such-dir'}"
    store = SqlStore(url)
    assert_unavailable(store.ping)
    for operation in all_operations(store):
        assert_unavailable(operation)
    store.close()


def test_refused_tcp_port_gives_store_unavailable() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = SqlStore(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
    started = time.monotonic()
    assert_unavailable(store.ping)
    assert time.monotonic() - started < 3
    store.close()


def test_replicas_share_state_under_load(pg_database: str) -> None:
    """Two replicas answering feedback and JWT checks at the same time agree on every count."""
    a, b = SqlStore(pg_database), SqlStore(pg_database)
    a.record_cards(SERVICE, "h", [card(f"c-{i}") for i in range(10)], ISSUED_AT)
    exp = int(time.time()) + 300
    fresh: list[bool] = []
    stored: list[int] = []
    errors: list[BaseException] = []

    def replica(store: SqlStore) -> None:
        try:
            for i in range(10):
                fresh.append(not store.jti_seen("iss", f"jti-{i}", exp))
                stored.append(
                    store.record_feedback(SERVICE, [accepted(f"c-{i}")], RECEIVED_AT).stored
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(fresh) == 10  # each jti accepted exactly once across replicas
    assert sum(stored) == 10  # each item stored exactly once
    assert a.analytics(SERVICE) == b.analytics(SERVICE)
    assert rule_entry(b, SERVICE, "MS-01") == {
        "rule": "MS-01",
        "issued": 10,
        "accepted": 10,
        "overridden": 0,
        "overrideReasons": [],
    }
    a.close()
    b.close()
