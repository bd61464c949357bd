"""Persistence: issued cards, CDS Hooks feedback and the JWT replay cache (``store.sql``)."""

from fhir_service.store.sql import FeedbackResult, IssuedCard, SqlStore, StoreUnavailable

__all__ = ["FeedbackResult", "IssuedCard", "SqlStore", "StoreUnavailable"]
