"""Outbound clients: FHIR GETs against a CDS client's ``fhirServer`` (CDS Hooks 2.0 "Prefetch",
https://cds-hooks.hl7.org/2.0/#prefetch-template, and "FHIR Resource Access")."""

from __future__ import annotations

from typing import Any, Protocol


class FhirFetcher(Protocol):
    """The outbound FHIR client the prefetch uses (``clients.fhir_client.FhirClient``)."""

    async def fetch(self, base: str, relative: str, *, token: str | None) -> dict[str, Any] | None:
        """GET a read or search relative to ``base`` (paging merged); raise on failure."""
