"""SqlStore on SQLite files (CDS Hooks 2.0 feedback and jti replay; idempotent feedback).

``StoreContract`` holds the behaviour every database must show; ``tests/postgres`` runs the same
class against a real PostgreSQL server. The SQLite-only tests below it cover the file handling,
WAL mode and the "database locked / unwritable" paths that must surface as StoreUnavailable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from fhir_service.cds.feedback import FeedbackItem, parse_feedback
from fhir_service.errors import ServiceUnavailable
from fhir_service.store import FeedbackResult, IssuedCard, SqlStore, StoreUnavailable
from fhir_service.store.sql import feedback_rows, issued_cards, jti_cache

SERVICE = "muscle-spasm-order-sign"
OTHER_SERVICE = "muscle-spasm-patient-view"
ISSUED_AT = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
RECEIVED_AT = datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
STORE_LOGGER = "fhir_service.store"  # every store module logs under it

MakeStore = Callable[..., SqlStore]


def accepted(card: str, *suggestions: str, ts: str = "2026-03-01T10:01:00Z") -> FeedbackItem:
    return FeedbackItem(
        card=card,
        outcome="accepted",
        outcome_timestamp=ts,
        accepted_suggestions=suggestions or ("s-1",),
        override_reason_code=None,
        override_reason_system=None,
        override_comment=None,
    )


def overridden(
    card: str,
    code: str | None = None,
    system: str | None = "http://example.org/override",
    comment: str | None = None,
    ts: str = "2026-03-01T10:02:00Z",
) -> FeedbackItem:
    return FeedbackItem(
        card=card,
        outcome="overridden",
        outcome_timestamp=ts,
        accepted_suggestions=(),
        override_reason_code=code,
        override_reason_system=system if code else None,
        override_comment=comment,
    )


def card(uuid: str, rule: str = "MS-01", *suggestions: str) -> IssuedCard:
    return IssuedCard(
        card_uuid=uuid, rule_id=rule, indicator="warning", suggestion_uuids=suggestions
    )


def rows(store: SqlStore, table: Any = feedback_rows) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table)).mappings()]


def count(store: SqlStore, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@contextlib.contextmanager
def statements(store: SqlStore) -> Iterator[list[str]]:
    """The SQL text of every statement ``store`` sends meanwhile (BEGIN and COMMIT included
    on SQLite, which sends them as statements)."""
    sent: list[str] = []

    def seen(*args: Any) -> None:
        sent.append(args[2])

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)


def rule_entry(store: SqlStore, service: str, rule: str) -> dict[str, Any]:
    [entry] = [r for r in store.analytics(service)["rules"] if r["rule"] == rule]
    return entry


class StoreContract:
    """Behaviour every backend must show. Subclasses provide ``make_store``.

    ``make_store(**kwargs)`` returns a new SqlStore on this test's (fresh) database; calling it
    twice gives two instances on the same database, as two replicas would have.
    """

    # -- feedback round trip ------------------------------------------------------------------

    def test_feedback_round_trip_joins_issued_card(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(SERVICE, "hook-1", [card("c-1", "MS-01", "s-1", "s-2")], ISSUED_AT)
        items = [
            accepted("c-1", "s-2", ts="2026-03-01T12:01:00+02:00"),
            overridden("c-1", "declined", comment="free text that must not be stored"),
        ]
        result = store.record_feedback(SERVICE, items, RECEIVED_AT)
        assert result == FeedbackResult(stored=2, duplicates=0, unmatched=0)

        by_outcome = {r["outcome"]: r for r in rows(store)}
        acc = by_outcome["accepted"]
        assert acc["service_id"] == SERVICE
        assert acc["card_uuid"] == "c-1"
        assert acc["hook_instance"] == "hook-1"
        assert acc["rule_id"] == "MS-01"
        assert acc["matched"] is True
        assert acc["outcome_timestamp"] == datetime(2026, 3, 1, 10, 1, tzinfo=UTC)
        assert acc["received_at"] == RECEIVED_AT
        assert json.loads(acc["accepted_suggestions"]) == ["s-2"]
        assert acc["override_reason_code"] is None and acc["has_override_comment"] is False
        ovr = by_outcome["overridden"]
        assert ovr["override_reason_code"] == "declined"
        assert ovr["override_reason_system"] == "http://example.org/override"
        assert ovr["has_override_comment"] is True
        assert "free text" not in json.dumps([str(v) for r in rows(store) for v in r.values()])

        [issued] = rows(store, issued_cards)
        assert issued["issued_at"] == ISSUED_AT
        assert json.loads(issued["suggestion_uuids"]) == ["s-1", "s-2"]
        assert issued["indicator"] == "warning"

    def test_timestamps_are_stored_in_utc(self, make_store: MakeStore) -> None:
        store = make_store()
        plus_five = timezone(timedelta(hours=5))
        store.record_cards(
            SERVICE, "h", [card("c-1")], datetime(2026, 3, 1, 15, 0, tzinfo=plus_five)
        )
        store.record_feedback(
            SERVICE,
            [accepted("c-1", ts="2026-03-01T05:01:00-05:00")],
            datetime(2026, 3, 1, 10, 5),  # naive means UTC
        )
        [row] = rows(store)
        assert row["outcome_timestamp"] == datetime(2026, 3, 1, 10, 1, tzinfo=UTC)
        assert row["outcome_timestamp"].utcoffset() == timedelta(0)
        assert row["received_at"] == datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
        assert rows(store, issued_cards)[0]["issued_at"] == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)

    def test_parsed_sandbox_bodies_are_recorded(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(SERVICE, "h", [card("c-1", "RF-03", "s-1")], ISSUED_AT)
        body = {
            "feedback": [
                {
                    "card": "c-1",
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": "s-1"}],
                    "outcomeTimestamp": "2026-03-01T10:01:00Z",
                },
                {
                    "card": "c-1",
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-03-01T10:02:00Z",
                    "overrideReason": {"reason": {"code": "x", "system": "y"}},
                },
            ]
        }
        result = store.record_feedback(SERVICE, parse_feedback(body), RECEIVED_AT)
        assert result == FeedbackResult(stored=2, duplicates=0, unmatched=0)

    def test_empty_feedback_stores_nothing(self, make_store: MakeStore) -> None:
        store = make_store()
        assert store.record_feedback(SERVICE, [], RECEIVED_AT) == FeedbackResult(0, 0, 0)
        assert count(store, feedback_rows) == 0

    # -- idempotency --------------------------------------------------------------------------

    def test_replayed_identical_items_are_stored_once(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
        items = [accepted("c-1"), overridden("c-1", "declined")]
        assert store.record_feedback(SERVICE, items, RECEIVED_AT) == FeedbackResult(2, 0, 0)
        later = RECEIVED_AT + timedelta(minutes=1)
        assert store.record_feedback(SERVICE, items, later) == FeedbackResult(0, 2, 0)
        assert count(store, feedback_rows) == 2
        # the first arrival is kept
        assert {r["received_at"] for r in rows(store)} == {RECEIVED_AT}

    def test_repeats_inside_one_request_are_duplicates(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
        item = overridden("c-1", "declined")
        assert store.record_feedback(SERVICE, [item, item, item], RECEIVED_AT) == (
            FeedbackResult(stored=1, duplicates=2, unmatched=0)
        )
        assert count(store, feedback_rows) == 1

    def test_identity_uses_the_instant_and_the_suggestion_set(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(SERVICE, "h", [card("c-1", "MS-01", "a", "b")], ISSUED_AT)
        first = accepted("c-1", "a", "b", ts="2026-03-01T10:01:00Z")
        same = [
            accepted("c-1", "b", "a", ts="2026-03-01T10:01:00+00:00"),
            accepted("c-1", "a", "b", ts="2026-03-01T11:01:00.000+01:00"),
            accepted("c-1", "a", "b", "a", ts="2026-03-01t10:01:00z"),
        ]
        assert store.record_feedback(SERVICE, [first], RECEIVED_AT).stored == 1
        assert store.record_feedback(SERVICE, same, RECEIVED_AT) == FeedbackResult(0, 3, 0)

    def test_items_differing_in_identity_are_all_stored(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
        items = [
            overridden("c-1"),
            overridden("c-1", ts="2026-03-01T10:02:00.5Z"),
            overridden("c-1", "declined"),
            overridden("c-1", "declined", system="http://other"),
            overridden("c-1", "other-code"),
            overridden("c-1", comment="a"),
            overridden("c-1", comment="b"),
            accepted("c-1", "s-1"),
            accepted("c-1", "s-2"),
        ]
        assert store.record_feedback(SERVICE, items, RECEIVED_AT) == FeedbackResult(9, 0, 0)
        # the same items sent to another service are other items
        assert store.record_feedback(OTHER_SERVICE, items, RECEIVED_AT).stored == 9

    def test_record_cards_is_idempotent_first_record_wins(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(
            SERVICE, "hook-1", [card("c-1", "MS-01"), card("c-2", "RF-03")], ISSUED_AT
        )
        store.record_cards(SERVICE, "hook-1", [card("c-1", "MS-01")], ISSUED_AT)
        store.record_cards(SERVICE, "hook-2", [card("c-1", "MS-01"), card("c-1")], ISSUED_AT)
        store.record_cards(SERVICE, "hook-3", [], ISSUED_AT)
        assert count(store, issued_cards) == 2
        assert {r["card_uuid"]: r["hook_instance"] for r in rows(store, issued_cards)} == {
            "c-1": "hook-1",
            "c-2": "hook-1",
        }

    def test_record_cards_writes_a_mixed_batch_in_one_statement(
        self, make_store: MakeStore
    ) -> None:
        """New cards beside already-recorded ones: one INSERT per answer, first record kept."""
        store = make_store()
        store.record_cards(SERVICE, "hook-1", [card("c-1", "MS-01")], ISSUED_AT)
        batch = [card("c-1", "RF-03"), card("c-2", "RF-03"), card("c-3", "MS-01", "s-1")]
        with statements(store) as sent:
            store.record_cards(SERVICE, "hook-2", batch, ISSUED_AT)
        assert [s.split()[0].upper() for s in sent if "cds_issued_card" in s] == ["INSERT"]
        recorded = {r["card_uuid"]: r for r in rows(store, issued_cards)}
        assert {uuid: r["hook_instance"] for uuid, r in recorded.items()} == {
            "c-1": "hook-1",
            "c-2": "hook-2",
            "c-3": "hook-2",
        }
        assert recorded["c-1"]["rule_id"] == "MS-01"
        assert recorded["c-3"]["issued_at"] == ISSUED_AT
        assert json.loads(recorded["c-3"]["suggestion_uuids"]) == ["s-1"]

    def test_record_cards_beyond_one_statement_records_every_card(
        self, make_store: MakeStore
    ) -> None:
        store = make_store()
        store.record_cards(SERVICE, "h", [card(f"c-{i}") for i in range(1, 1002, 2)], ISSUED_AT)
        store.record_cards(SERVICE, "h", [card(f"c-{i}") for i in range(1002)], ISSUED_AT)
        assert count(store, issued_cards) == 1002

    # -- unmatched ----------------------------------------------------------------------------

    def test_unknown_card_is_stored_counted_and_logged(
        self, make_store: MakeStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = make_store()
        store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
        items = [accepted("c-1"), overridden("never-issued", "declined", comment="PHI-ish note")]
        with caplog.at_level(logging.INFO, logger=STORE_LOGGER):
            result = store.record_feedback(SERVICE, items, RECEIVED_AT)
        assert result == FeedbackResult(stored=2, duplicates=0, unmatched=1)
        unmatched = [r for r in caplog.records if "unmatched" in r.getMessage()]
        assert len(unmatched) == 1
        assert unmatched[0].levelno == logging.INFO
        assert "never-issued" in unmatched[0].getMessage()
        assert "PHI-ish" not in caplog.text
        row = next(r for r in rows(store) if r["card_uuid"] == "never-issued")
        assert row["matched"] is False
        assert row["rule_id"] is None and row["hook_instance"] is None
        # a replay of the unmatched item is a duplicate, still unmatched
        again = store.record_feedback(SERVICE, items[1:], RECEIVED_AT)
        assert again == FeedbackResult(stored=0, duplicates=1, unmatched=1)

    def test_card_issued_by_another_service_is_unmatched(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(OTHER_SERVICE, "h", [card("c-1")], ISSUED_AT)
        result = store.record_feedback(SERVICE, [accepted("c-1")], RECEIVED_AT)
        assert result == FeedbackResult(stored=1, duplicates=0, unmatched=1)

    def test_hostile_text_is_stored_without_error(self, make_store: MakeStore) -> None:
        store = make_store()
        weird = ["nul\x00card", "lone\ud800surrogate", "x" * 5000, "emoji \U0001f600 ü"]
        items = [overridden(w, code=w, comment=w) for w in weird]
        items += [accepted(w, w) for w in weird]
        result = store.record_feedback(SERVICE, items, RECEIVED_AT)
        assert result == FeedbackResult(stored=8, duplicates=0, unmatched=8)
        assert store.record_feedback(SERVICE, items, RECEIVED_AT).duplicates == 8
        store.record_cards(SERVICE, "h\x00ook", [card("c\x00", "MS-01", "\ud800")], ISSUED_AT)
        assert store.analytics(SERVICE)["rules"][0]["issued"] == 1

    # -- analytics ----------------------------------------------------------------------------

    def test_analytics_counts_per_rule(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(
            SERVICE,
            "h-1",
            [card("a1", "MS-01"), card("a2", "MS-01"), card("a3", "MS-01"), card("r1", "RF-03")],
            ISSUED_AT,
        )
        store.record_cards(SERVICE, "h-2", [card("t1", "TY-HEAT-X")], ISSUED_AT)
        store.record_cards(OTHER_SERVICE, "h-3", [card("o1", "MS-01")], ISSUED_AT)
        items = [
            accepted("a1"),
            accepted("a1", ts="2026-03-01T10:09:00Z"),  # same card twice: counted once
            overridden("a2", "declined"),
            overridden("a3", "declined"),
            overridden("a3", "declined", ts="2026-03-01T10:03:00Z"),
            overridden("r1", "allergy", system="http://s2"),
            overridden("r1", comment="comment only"),
            overridden("unknown", "declined"),  # unmatched: no rule
        ]
        store.record_feedback(SERVICE, items, RECEIVED_AT)
        store.record_feedback(OTHER_SERVICE, [overridden("o1", "declined")], RECEIVED_AT)

        assert store.analytics(SERVICE) == {
            "service": SERVICE,
            "rules": [
                {
                    "rule": "MS-01",
                    "issued": 3,
                    "accepted": 1,
                    "overridden": 2,
                    "overrideReasons": [
                        {"code": "declined", "system": "http://example.org/override", "count": 2}
                    ],
                },
                {
                    "rule": "RF-03",
                    "issued": 1,
                    "accepted": 0,
                    "overridden": 1,
                    "overrideReasons": [{"code": "allergy", "system": "http://s2", "count": 1}],
                },
                {
                    "rule": "TY-HEAT-X",
                    "issued": 1,
                    "accepted": 0,
                    "overridden": 0,
                    "overrideReasons": [],
                },
            ],
        }
        other = store.analytics(OTHER_SERVICE)["rules"]
        assert other == [
            {
                "rule": "MS-01",
                "issued": 1,
                "accepted": 0,
                "overridden": 1,
                "overrideReasons": [
                    {"code": "declined", "system": "http://example.org/override", "count": 1}
                ],
            }
        ]

    def test_analytics_orders_reasons_by_count(self, make_store: MakeStore) -> None:
        store = make_store()
        store.record_cards(SERVICE, "h", [card(f"c{i}", "MS-01") for i in range(4)], ISSUED_AT)
        items = [
            overridden("c0", "b-code"),
            overridden("c1", "z-code"),
            overridden("c2", "z-code"),
            overridden("c3", "a-code"),
        ]
        store.record_feedback(SERVICE, items, RECEIVED_AT)
        reasons = rule_entry(store, SERVICE, "MS-01")["overrideReasons"]
        assert [(r["code"], r["count"]) for r in reasons] == [
            ("z-code", 2),
            ("a-code", 1),
            ("b-code", 1),
        ]

    def test_analytics_of_a_quiet_service_is_empty(self, make_store: MakeStore) -> None:
        store = make_store()
        assert store.analytics("muscle-spasm-encounter-start") == {
            "service": "muscle-spasm-encounter-start",
            "rules": [],
        }

    # -- JWT replay cache ---------------------------------------------------------------------

    def test_jti_is_accepted_once(self, make_store: MakeStore) -> None:
        store = make_store()
        exp = int(time.time()) + 300
        assert store.jti_seen("https://sandbox.cds-hooks.org", "jti-1", exp) is False
        assert store.jti_seen("https://sandbox.cds-hooks.org", "jti-1", exp) is True
        assert store.jti_seen("https://sandbox.cds-hooks.org", "jti-1", exp + 60) is True
        assert store.jti_seen("https://sandbox.cds-hooks.org", "jti-2", exp) is False
        assert store.jti_seen("https://other.example", "jti-1", exp) is False
        # (iss, jti) is a pair, not a concatenation
        assert store.jti_seen("a", "bc", exp) is False
        assert store.jti_seen("ab", "c", exp) is False

    def test_jti_expiry_honours_the_leeway(self, make_store: MakeStore) -> None:
        now = [1_800_000_000.0]
        store = make_store(clock=lambda: now[0])
        exp = int(now[0]) + 300
        assert store.jti_seen("iss", "j", exp) is False
        now[0] = exp + 30  # past exp but inside the 60 s leeway: still a replay
        assert store.jti_seen("iss", "j", exp) is True
        now[0] = exp + 61  # expired: a new token with the same jti takes the row over
        new_exp = int(now[0]) + 300
        assert store.jti_seen("iss", "j", new_exp) is False
        assert store.jti_seen("iss", "j", new_exp) is True
        assert count(store, jti_cache) == 1

    def test_jti_already_expired_on_arrival_is_not_a_replay(self, make_store: MakeStore) -> None:
        store = make_store()
        long_ago = int(time.time()) - 3600
        assert store.jti_seen("iss", "old", long_ago) is False
        assert store.jti_seen("iss", "old", long_ago) is False

    def test_expired_jti_rows_are_purged(self, make_store: MakeStore) -> None:
        now = [1_800_000_000.0]
        store = make_store(clock=lambda: now[0])
        for i in range(5):
            store.jti_seen("iss", f"j{i}", int(now[0]) + 10)
        store.jti_seen("iss", "long-lived", int(now[0]) + 10_000)
        assert count(store, jti_cache) == 6
        now[0] += 3600
        assert store.jti_seen("iss", "fresh", int(now[0]) + 300) is False
        assert {r["jti"] for r in rows(store, jti_cache)} == {"long-lived", "fresh"}
        assert store.jti_seen("iss", "long-lived", int(now[0]) + 300) is True

    def test_huge_exp_is_accepted(self, make_store: MakeStore) -> None:
        store = make_store()
        assert store.jti_seen("iss", "big", 10**30) is False
        assert store.jti_seen("iss", "big", 10**30) is True

    # -- replicas -----------------------------------------------------------------------------

    def test_two_stores_on_one_database_agree(self, make_store: MakeStore) -> None:
        a, b = make_store(), make_store()
        a.record_cards(SERVICE, "h", [card("c-1", "MS-01")], ISSUED_AT)
        assert b.record_feedback(SERVICE, [accepted("c-1")], RECEIVED_AT) == FeedbackResult(1, 0, 0)
        assert a.record_feedback(SERVICE, [accepted("c-1")], RECEIVED_AT) == FeedbackResult(0, 1, 0)
        assert a.analytics(SERVICE) == b.analytics(SERVICE)
        assert rule_entry(b, SERVICE, "MS-01")["accepted"] == 1
        exp = int(time.time()) + 300
        assert a.jti_seen("iss", "shared", exp) is False
        assert b.jti_seen("iss", "shared", exp) is True

    def test_concurrent_replicas_accept_a_jti_exactly_once(self, make_store: MakeStore) -> None:
        stores = [make_store(), make_store()]
        exp = int(time.time()) + 300
        results: list[bool] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def attempt(i: int) -> None:
            try:
                barrier.wait()
                results.append(stores[i % 2].jti_seen("iss", "race", exp))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(results) == [False] + [True] * 7

    def test_concurrent_replicas_store_a_feedback_item_once(self, make_store: MakeStore) -> None:
        stores = [make_store(), make_store()]
        stores[0].record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
        results: list[FeedbackResult] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(6)
        items = [overridden("c-1", "declined"), accepted("c-1")]

        def attempt(i: int) -> None:
            try:
                barrier.wait()
                results.append(stores[i % 2].record_feedback(SERVICE, items, RECEIVED_AT))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sum(r.stored for r in results) == 2
        assert sum(r.duplicates for r in results) == 10
        assert count(stores[1], feedback_rows) == 2

    def test_replicas_starting_together_create_the_schema_once(self, make_store: MakeStore) -> None:
        stores: list[SqlStore] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def start() -> None:
            try:
                barrier.wait()
                stores.append(make_store())
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(stores) == 4
        for i, store in enumerate(stores):
            store.record_cards(SERVICE, "h", [card(f"c-{i}")], ISSUED_AT)
        assert rule_entry(stores[0], SERVICE, "MS-01")["issued"] == 4

    def test_ping_and_close(self, make_store: MakeStore) -> None:
        store = make_store()
        store.ping()
        store.close()


# ----------------------------------------------------------------------------------------------
# SQLite
# ----------------------------------------------------------------------------------------------


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[MakeStore]:
        url = f"sqlite:///{tmp_path / 'var' / 'store.db'}"
        made: list[SqlStore] = []

        def make(**kwargs: Any) -> SqlStore:
            store = SqlStore(url, **kwargs)
            made.append(store)
            return store

        yield make
        for store in made:
            store.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "fhir_service.db"


def test_sqlite_creates_parent_directory_and_uses_wal(db_path: Path) -> None:
    with SqlStore(f"sqlite:///{db_path}") as store:
        assert db_path.is_file()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 5000


def test_sqlite_relative_url_like_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with SqlStore("sqlite:///./var/fhir_service.db") as store:
        store.ping()
    assert (tmp_path / "var" / "fhir_service.db").is_file()


def test_sqlite_data_survives_a_restart(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    with SqlStore(url) as store:
        store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
        store.record_feedback(SERVICE, [accepted("c-1")], RECEIVED_AT)
        assert store.jti_seen("iss", "j", int(time.time()) + 300) is False
    with SqlStore(url) as store:
        assert rule_entry(store, SERVICE, "MS-01")["accepted"] == 1
        assert store.jti_seen("iss", "j", int(time.time()) + 300) is True


def test_sqlite_cards_and_a_new_jti_take_the_write_lock_in_one_statement(db_path: Path) -> None:
    """No BEGIN: the write lock is held only while the one statement runs in SQLite, never
    while the writing thread waits for the GIL (Database.single_statements)."""
    exp = int(time.time()) + 300
    with SqlStore(f"sqlite:///{db_path}") as store:
        store.jti_seen("iss", "first", exp)  # the first check also purges expired rows
        with statements(store) as sent:
            store.record_cards(SERVICE, "h", [card("c-1"), card("c-2")], ISSUED_AT)
            assert store.jti_seen("iss", "new", exp) is False
        assert [s.split()[0].upper() for s in sent] == ["INSERT", "INSERT"]
        with statements(store) as sent:  # a replay is checked in a transaction
            assert store.jti_seen("iss", "new", exp) is True
        assert sent[0].upper().startswith("INSERT") and "BEGIN IMMEDIATE" in sent
        assert count(store, issued_cards) == 2


def test_sqlite_in_memory_database_is_shared_across_threads() -> None:
    with SqlStore("sqlite://") as store:
        store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
        out: list[FeedbackResult] = []
        worker = threading.Thread(
            target=lambda: out.append(
                store.record_feedback(SERVICE, [accepted("c-1")], RECEIVED_AT)
            )
        )
        worker.start()
        worker.join()
        assert out == [FeedbackResult(stored=1, duplicates=0, unmatched=0)]


# -- StoreUnavailable ---------------------------------------------------------------------------


def assert_unavailable(call: Callable[[], object]) -> StoreUnavailable:
    with pytest.raises(StoreUnavailable) as caught:
        call()
    error = caught.value
    assert isinstance(error, ServiceUnavailable)
    assert error.status_code == 503
    outcome = error.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    return error


def all_operations(store: SqlStore) -> list[Callable[[], object]]:
    exp = int(time.time()) + 300
    return [
        lambda: store.record_cards(SERVICE, "h", [card("c-9")], ISSUED_AT),
        lambda: store.record_feedback(SERVICE, [accepted("c-9")], RECEIVED_AT),
        lambda: store.jti_seen("iss", "j-9", exp),
    ]


def test_held_exclusive_lock_gives_store_unavailable_then_recovers(db_path: Path) -> None:
    store = SqlStore(f"sqlite:///{db_path}", timeout_seconds=0.2)
    store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
    holder = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        for operation in all_operations(store):
            started = time.monotonic()
            error = assert_unavailable(operation)
            elapsed = time.monotonic() - started
            assert 0.15 <= elapsed < 3, elapsed
            assert str(db_path) not in str(error.outcome())
        # WAL readers are not blocked by the writer
        assert rule_entry(store, SERVICE, "MS-01")["issued"] == 1
    finally:
        holder.rollback()
        holder.close()
    for operation in all_operations(store):
        operation()
    store.close()


def test_parent_path_that_is_a_file_gives_store_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "var"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker / 'fhir_service.db'}"
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        store = SqlStore(url)  # the service still starts
    assert "unavailable at start" in caplog.text
    assert_unavailable(store.ping)
    for operation in all_operations(store):
        assert_unavailable(operation)
    assert_unavailable(lambda: store.analytics(SERVICE))
    # once the path is usable the same store creates its tables and works
    blocker.unlink()
    store.ping()
    store.record_cards(SERVICE, "h", [card("c-1")], ISSUED_AT)
    assert store.record_feedback(SERVICE, [accepted("c-1")], RECEIVED_AT).stored == 1
    store.close()


def test_read_only_database_gives_store_unavailable(db_path: Path) -> None:
    SqlStore(f"sqlite:///{db_path}").close()
    store = SqlStore(f"sqlite:///file:{db_path}?mode=ro&uri=true")
    store.ping()
    assert store.analytics(SERVICE)["rules"] == []
    for operation in all_operations(store):
        assert_unavailable(operation)
    store.close()


def test_file_that_is_not_a_database_gives_store_unavailable(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not an SQLite file, just bytes " * 100)
    store = SqlStore(f"sqlite:///{db_path}")
    assert_unavailable(store.ping)
    store.close()


def test_store_unavailable_hides_the_location(tmp_path: Path) -> None:
    blocker = tmp_path / "secret-location"
    blocker.write_text("x")
    store = SqlStore(f"sqlite:///{blocker / 'db.sqlite'}")
    error = assert_unavailable(store.ping)
    assert "secret-location" not in json.dumps(error.outcome())
    assert error.headers.get("Retry-After")
    store.close()


def test_malformed_url_raises_at_construction() -> None:
    with pytest.raises(Exception, match="parse"):
        SqlStore("not a url")
