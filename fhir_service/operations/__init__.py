"""Transport-free handlers of the FHIR operations, one module per operation.

Each takes the runtime and a typed request (parsed by its router in ``api/``) and returns FHIR
JSON or raises a :class:`~fhir_service.errors.FhirError`; none sees HTTP. CPU-bound work runs in
a worker thread bounded by ``runtime.limiter``, as for CDS Hooks calls (``cds/invoke.py``).
"""
