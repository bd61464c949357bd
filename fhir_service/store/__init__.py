"""Persistence: issued cards, CDS Hooks feedback and the JWT replay cache.

``store.records`` holds the records and the :class:`Store` boundary; ``store.sql`` the SQLAlchemy
implementation (:class:`SqlStore`), a facade over ``schema``, ``database``, ``cards``,
``feedback``, ``analytics`` and ``replay``.
"""

from fhir_service.store.records import FeedbackEntry, FeedbackResult, IssuedCard, Store
from fhir_service.store.sql import SqlStore, StoreUnavailable

__all__ = [
    "FeedbackEntry",
    "FeedbackResult",
    "IssuedCard",
    "SqlStore",
    "Store",
    "StoreUnavailable",
]
