"""Security: outbound allowlist (SSRF guard) and CDS client JWT verification.

See ``shared/contract.md`` (Settings) and ``shared/spec/cds-hooks.md`` §1.9.
"""
