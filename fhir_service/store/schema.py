"""The store's tables (SQLAlchemy Core) and how client text and instants are made storable.

Three tables: ``cds_issued_card`` (the cards of each hook answer, so that feedback can be joined
to its invocation), ``cds_feedback`` (one row per distinct feedback item) and ``jwt_replay``
(the ``jti`` replay cache). Timestamps are stored in UTC. Spec: CDS Hooks 2.0
https://cds-hooks.hl7.org/2.0/#feedback and https://cds-hooks.hl7.org/2.0/#trusting-cds-clients
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator


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
    # sha256 of the item's identity (see store.feedback.identity): one row per distinct item.
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


def clean(text: str) -> str:
    """Make client text storable everywhere: no NUL (PostgreSQL), no lone surrogates (UTF-8)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def opt_clean(text: str | None) -> str | None:
    """:func:`clean` for an optional value."""
    return None if text is None else clean(text)


def digest(payload: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``payload``."""
    canonical = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def utc(instant: datetime) -> datetime:
    """``instant`` in UTC; a naive value is taken to be UTC already."""
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)
