"""Card and suggestion uuids: unique per hookInstance, stable when a client retries it (R11)."""

from __future__ import annotations

import uuid

from fhir_service.cds.invoke import call_uuids


def test_same_hook_instance_gives_the_same_sequence() -> None:
    first = call_uuids("svc", "hook-1")
    second = call_uuids("svc", "hook-1")
    a = [first() for _ in range(3)]
    assert a == [second() for _ in range(3)]
    assert len(set(a)) == 3
    assert all(uuid.UUID(u).version == 5 for u in a)


def test_other_hook_instance_or_service_gives_other_uuids() -> None:
    base = call_uuids("svc", "hook-1")()
    assert call_uuids("svc", "hook-2")() != base
    assert call_uuids("other", "hook-1")() != base
