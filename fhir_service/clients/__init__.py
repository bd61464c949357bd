"""Outbound clients: FHIR GETs against a CDS client's ``fhirServer`` (cds-hooks.md §1.4-§1.5)."""
