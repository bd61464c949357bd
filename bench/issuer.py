"""A test CDS client issuer: an ES384 key, its trusted-issuers file, and fresh tokens.

The trusted-issuers file binds the issuer to an inline JWK Set, so the service never fetches
anything. Tokens are minted ahead of the timed loop (one per request, each with its own
``jti``), so signing costs the load generator nothing while it measures.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://bench-ehr.example.org"
KID = "bench-es384"


class Issuer:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwk: dict[str, Any] = {**public, "kid": KID, "alg": "ES384", "use": "sig"}

    def write_trusted_issuers(self, path: Path) -> Path:
        path.write_text(json.dumps({ISSUER: {"jwks": {"keys": [self.jwk]}}}), encoding="utf-8")
        return path

    def token(self, audience: str, lifetime: int = 300) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "bench-client",
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})

    def tokens(self, audience: str, count: int) -> Iterator[dict[str, str]]:
        """``count`` Authorization headers for ``audience``, then empty headers (an error)."""
        minted = [f"Bearer {self.token(audience)}" for _ in range(count)]
        for value in minted:
            yield {"authorization": value}
        while True:
            yield {}
