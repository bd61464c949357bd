"""Security: outbound allowlist (SSRF guard) and CDS client JWT verification.

See README "Settings" and CDS Hooks 2.0 https://cds-hooks.hl7.org/2.0/#trusting-cds-clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class ClientVerifier(Protocol):
    """Checks a CDS client's bearer JWT (``security.jwt.JwtVerifier``)."""

    async def verify(
        self, authorization: str | None, audience: str | Sequence[str]
    ) -> dict[str, Any]:
        """The token's claims; raises ``errors.Unauthorized`` when it is not acceptable."""
