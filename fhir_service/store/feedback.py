"""CDS Hooks feedback items, each stored once (https://cds-hooks.hl7.org/2.0/#feedback).

Feedback is answered 200 for unknown card uuids (stored, counted and logged as *unmatched*) and
for repeated items, which are idempotent: the identity of an item is (service id, card, outcome,
outcomeTimestamp, accepted suggestion ids, override reason) and a unique key on its digest keeps
it stored once. A free-text ``userComment`` is reduced to a flag.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime

from fhir_service.store.cards import issued
from fhir_service.store.database import Database, insert_ignoring_conflict
from fhir_service.store.records import FeedbackEntry, FeedbackResult, RecordedFeedback
from fhir_service.store.schema import clean, digest, feedback_rows, opt_clean, utc

log = logging.getLogger(__name__)

# Longest card text echoed in a log line.
_LOG_CARD_CHARS = 80


def identity(service_id: str, item: FeedbackEntry, instant: datetime) -> str:
    """Digest of what makes a feedback item the same item (its identity, not its arrival)."""
    return digest(
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


def record_feedback(
    db: Database, service_id: str, items: Sequence[FeedbackEntry], received_at: datetime
) -> FeedbackResult:
    """Store validated feedback items once each; see :meth:`SqlStore.record_feedback`.

    Raises:
        StoreUnavailable: The database cannot be reached or written.
    """
    if not items:
        return FeedbackResult(stored=0, duplicates=0, unmatched=0)
    service = clean(service_id)
    received = utc(received_at)
    stored = duplicates = unmatched = 0
    recorded: list[RecordedFeedback] = []
    logged: set[str] = set()
    with db.transaction("record feedback", write=True) as conn:
        known_cards = issued(conn, service, {clean(item.card) for item in items})
        for item in items:
            card = clean(item.card)
            instant = item.outcome_instant
            known = known_cards.get(card)
            rule_id: str | None = known[1] if known else None
            row = {
                "identity": identity(service_id, item, instant),
                "service_id": service,
                "card_uuid": card,
                "matched": known is not None,
                "hook_instance": known[0] if known else None,
                "rule_id": rule_id,
                "outcome": item.outcome,
                "outcome_timestamp": instant,
                "accepted_suggestions": json.dumps([clean(s) for s in item.accepted_suggestions]),
                "override_reason_system": opt_clean(item.override_reason_system),
                "override_reason_code": opt_clean(item.override_reason_code),
                "has_override_comment": bool(item.override_comment),
                "received_at": received,
            }
            if insert_ignoring_conflict(conn, feedback_rows, row):
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
