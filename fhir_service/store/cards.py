"""Issued cards: what the service answered to a hook call, kept so that feedback can be joined.

CDS Hooks feedback carries no ``hookInstance`` (https://cds-hooks.hl7.org/2.0/#feedback): the
service keeps ``card uuid → (service id, hookInstance, rule)`` when it answers a hook call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from fhir_service.store.database import Database, insert_all_ignoring_conflict
from fhir_service.store.records import IssuedCard
from fhir_service.store.schema import clean, issued_cards, utc


def record_cards(
    db: Database,
    service_id: str,
    hook_instance: str,
    cards: Sequence[IssuedCard],
    issued_at: datetime,
) -> None:
    """Remember the cards of one hook answer; a card already recorded keeps its first record.

    Raises:
        StoreUnavailable: The database cannot be reached or written.
    """
    if not cards:
        return
    service = clean(service_id)
    rows: dict[str, dict[str, Any]] = {}
    for card in cards:
        uuid = clean(card.card_uuid)
        rows.setdefault(
            uuid,
            {
                "service_id": service,
                "card_uuid": uuid,
                "hook_instance": clean(hook_instance),
                "rule_id": clean(card.rule_id),
                "indicator": clean(card.indicator),
                "suggestion_uuids": json.dumps([clean(s) for s in card.suggestion_uuids]),
                "issued_at": utc(issued_at),
            },
        )
    # one statement: on SQLite it holds the write lock only while it runs
    with db.single_statements("record cards") as conn:
        insert_all_ignoring_conflict(conn, issued_cards, list(rows.values()))


def issued(conn: Connection, service_id: str, cards: set[str]) -> dict[str, tuple[str, str]]:
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
