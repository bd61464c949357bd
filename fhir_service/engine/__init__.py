"""The knowledge engine: FHIRPath evaluation, $apply, SDC operations. Knows nothing of HTTP."""
