"""What the store keeps, and the :class:`Store` boundary the API and the JWT verifier use.

No database code here: :class:`~fhir_service.store.sql.SqlStore` implements :class:`Store`, and a
test may pass any object with these methods. Feedback items arrive as :class:`FeedbackEntry`
(structurally: ``cds.feedback.FeedbackItem``), so the store does not depend on the CDS layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol


@dataclass(frozen=True)
class IssuedCard:
    """A card the service returned, remembered so that feedback can be joined to it.

    Attributes:
        card_uuid: ``card.uuid`` as sent to the client.
        rule_id: The rule that made the card (``card.source.topic.code``, e.g. ``MS-01``).
        indicator: ``card.indicator`` (``info``, ``warning`` or ``critical``).
        suggestion_uuids: ``card.suggestions[].uuid``, in card order.
    """

    card_uuid: str
    rule_id: str
    indicator: str
    suggestion_uuids: tuple[str, ...]


class RecordedFeedback(NamedTuple):
    """One newly stored feedback item, as metrics count it (no free text)."""

    rule_id: str | None
    outcome: str
    reason_system: str | None
    reason_code: str | None


@dataclass(frozen=True)
class FeedbackResult:
    """What :meth:`Store.record_feedback` did with one request's items.

    Attributes:
        stored: Items newly stored.
        duplicates: Items already stored (an earlier request, or earlier in the same one).
            ``stored + duplicates`` is the number of items.
        unmatched: Items, stored or duplicate, whose card uuid this service never issued.
        recorded: Each item newly stored, by rule (metrics; not part of equality).
    """

    stored: int
    duplicates: int
    unmatched: int
    recorded: tuple[RecordedFeedback, ...] = field(default=(), compare=False)


class FeedbackEntry(Protocol):
    """One validated CDS Hooks feedback item (https://cds-hooks.hl7.org/2.0/#feedback)."""

    @property
    def card(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def accepted_suggestions(self) -> tuple[str, ...]: ...
    @property
    def override_reason_code(self) -> str | None: ...
    @property
    def override_reason_system(self) -> str | None: ...
    @property
    def override_comment(self) -> str | None: ...
    @property
    def outcome_instant(self) -> datetime: ...


class Store(Protocol):
    """Issued cards, feedback, analytics and the JWT ``jti`` replay cache (blocking calls)."""

    def record_cards(
        self,
        service_id: str,
        hook_instance: str,
        cards: Sequence[IssuedCard],
        issued_at: datetime,
    ) -> None: ...

    def record_feedback(
        self, service_id: str, items: Sequence[FeedbackEntry], received_at: datetime
    ) -> FeedbackResult: ...

    def analytics(self, service_id: str) -> dict[str, Any]: ...

    def jti_seen(self, iss: str, jti: str, exp: int) -> bool: ...

    def close(self) -> None: ...
