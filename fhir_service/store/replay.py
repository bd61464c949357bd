"""The JWT ``jti`` replay cache (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients).

A ``jti`` is accepted once: a ``jti`` not seen before, kept for the token's lifetime. The cache
lives in the database so that every replica sees the same ``jti`` values.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, update

from fhir_service.store.database import Database, insert_ignoring_conflict
from fhir_service.store.schema import clean, digest, jti_cache

# Seconds between opportunistic purges of expired replay-cache rows (per cache).
_PURGE_INTERVAL_SECONDS = 60.0
# Bound for ``exp`` so that a far-future value still fits a signed 64-bit column.
_MAX_EXP = 2**62


class ReplayCache:
    """``(iss, jti)`` pairs seen until ``exp`` + ``leeway_seconds`` by the wall ``clock``."""

    def __init__(self, db: Database, *, leeway_seconds: int, clock: Callable[[], float]) -> None:
        self._db = db
        self._leeway = leeway_seconds
        self._clock = clock
        self._last_purge = float("-inf")

    def seen(self, iss: str, jti: str, exp: int) -> bool:
        """Record a token's ``jti``; True when it was already used; see :meth:`SqlStore.jti_seen`.

        Raises:
            StoreUnavailable: The database cannot be reached or written.
        """
        now = int(self._clock())
        cutoff = now - self._leeway
        exp = max(-_MAX_EXP, min(_MAX_EXP, int(exp)))
        key = digest([iss, jti])
        row = {"digest": key, "iss": clean(iss), "jti": clean(jti), "exp": exp}
        purge = now - self._last_purge >= _PURGE_INTERVAL_SECONDS
        if purge:
            self._last_purge = now
        # A new jti (nearly every call) is one statement, each correct on its own.
        with self._db.single_statements("jti check") as conn:
            fresh = insert_ignoring_conflict(conn, jti_cache, row)
            if purge:
                conn.execute(
                    delete(jti_cache).where(jti_cache.c.exp < cutoff, jti_cache.c.digest != key)
                )
        if fresh:
            return False
        # Seen before: taken over only if its row expired, in one transaction.
        with self._db.transaction("jti check", write=True) as conn:
            if insert_ignoring_conflict(conn, jti_cache, row):
                return False
            taken_over = conn.execute(
                update(jti_cache)
                .where(jti_cache.c.digest == key, jti_cache.c.exp < cutoff)
                .values(iss=row["iss"], jti=row["jti"], exp=exp)
            )
            return taken_over.rowcount == 0
