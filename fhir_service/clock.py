"""Injected clock and id factory (tests pin both; ``FHIR_SERVICE_NOW`` pins the rule clock)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
IdFactory = Callable[[], str]


def system_clock() -> datetime:
    return datetime.now(UTC)


def fixed_clock(instant: datetime) -> Clock:
    def clock() -> datetime:
        return instant

    return clock


def uuid4_factory() -> str:
    return str(uuid.uuid4())
