"""FHIR R4 clinical guideline service: muscle spasms (knowledge as data, CDS Hooks 2.0, SDC)."""

__version__ = "0.1.0"
