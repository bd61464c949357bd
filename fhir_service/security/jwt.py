"""CDS client JWT verification.

Implements CDS Hooks 2.0 "Trusting CDS Clients"
(https://cds-hooks.hl7.org/2.0/#trusting-cds-clients) with the settings of README "Settings"
("Trusted issuers", "Public base URL", "Auth"); the attacks it stops are pinned by
``tests/unit/test_jwt.py`` and ``tests/api/test_cds_hooks_jwt.py``.

Order of checks: bearer syntax; header (``typ`` JWT, ``kid``, asymmetric ``alg``); ``iss`` on
the trusted list; the issuer's own keys (``jku`` binding checked, and allowlisted, before any
fetch); signature with the key's algorithm only; ``aud``, required claims; ``exp``/``iat``/
``nbf`` against the wall clock with leeway; ``jti`` replay last, so that forged tokens cannot
burn a ``jti``. Every failure raises :class:`~fhir_service.errors.Unauthorized` whose reason is
for logs only and never holds the token.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import anyio.to_thread
import httpx
import jwt
import orjson

from fhir_service.errors import Unauthorized
from fhir_service.security.allowlist import Allowlist, OutboundRefused

logger = logging.getLogger(__name__)

ALGORITHMS = frozenset({"ES256", "ES384", "RS256", "RS384", "PS256", "PS384", "PS512"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "PS256", "PS384", "PS512"})
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384"}
_PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y")}
_REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "jti")
_MAX_TOKEN_CHARS = 16 * 1024
_MAX_JTI_CHARS = 256
_JWKS_MAX_BYTES = 1024 * 1024
_JWKS_TIMEOUT = httpx.Timeout(5.0)
_REFETCH_WINDOW = 60.0
_MAX_REFETCHES = 10
_FAILURE_BACKOFF = 5.0


class ReplayCache(Protocol):
    """Remembers ``(iss, jti)`` pairs until the token can no longer be accepted."""

    def seen(self, iss: str, jti: str, exp: int) -> bool:
        """Record ``(iss, jti)``; True if it was already recorded and not yet expired."""
        ...


class InMemoryReplayCache:
    """Thread-safe, single-process :class:`ReplayCache` (best practices: keep ``jti``s for
    the token lifetime; RSP §2.1 "store ``(iss, jti)`` until ``exp`` + leeway").

    Args:
        clock: Wall clock (seconds since the epoch).
        leeway: Seconds a token stays acceptable after ``exp``.
        max_entries: Bound on memory; beyond it the entry closest to expiry is dropped.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        leeway: int = 60,
        max_entries: int = 100_000,
    ) -> None:
        self._clock = clock
        self._leeway = leeway
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, str, str]] = []

    def seen(self, iss: str, jti: str, exp: int) -> bool:
        """Record ``(iss, jti)`` until ``exp`` + leeway.

        Args:
            iss: The token issuer.
            jti: The token id.
            exp: The token expiry (seconds since the epoch).

        Returns:
            True when the pair was already recorded and has not expired (a replay).
        """
        key = (iss, jti)
        with self._lock:
            self._evict(self._clock())
            if key in self._expiry:
                return True
            while len(self._expiry) >= self._max_entries:
                self._evict(math.inf, count=1)
            expiry = float(exp + self._leeway)
            self._expiry[key] = expiry
            heapq.heappush(self._heap, (expiry, iss, jti))
            return False

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _evict(self, now: float, count: float = math.inf) -> None:
        while self._heap and self._heap[0][0] <= now and count > 0:
            expiry, iss, jti = heapq.heappop(self._heap)
            if self._expiry.get((iss, jti)) == expiry:
                del self._expiry[(iss, jti)]
                count -= 1


def _key_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether ``jwk`` may verify ``alg``: same key family (and curve), signing use."""
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    if jwk.get("kty") == "RSA":
        return alg in _RSA_ALGORITHMS
    return jwk.get("kty") == "EC" and _EC_CURVES.get(alg) == jwk.get("crv")


class _KeySet:
    """A parsed JWK Set: public members only, indexed by ``kid``."""

    def __init__(self, data: object) -> None:
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise ValueError("not a JWK Set")
        self._by_kid: dict[str, list[dict[str, Any]]] = {}
        for jwk in keys:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            members = _PUBLIC_MEMBERS.get(str(jwk.get("kty")))
            if members is None:  # never "oct" (HMAC) or unknown key types
                continue
            self._by_kid.setdefault(jwk["kid"], []).append(jwk)

    def __contains__(self, kid: str) -> bool:
        return kid in self._by_kid

    def keys_for(self, kid: str, alg: str) -> list[jwt.PyJWK]:
        """Public keys with this ``kid`` that fit ``alg``, bound to ``alg``."""
        found = []
        for jwk in self._by_kid.get(kid, []):
            if not _key_fits(jwk, alg):
                continue
            public = {m: jwk[m] for m in _PUBLIC_MEMBERS[jwk["kty"]] if m in jwk}
            try:
                found.append(jwt.PyJWK(public, algorithm=alg))
            except jwt.PyJWTError:
                continue
        return found


class _InlineKeys:
    """An issuer bound to an inline JWK Set: nothing is ever fetched."""

    def __init__(self, jwks: object) -> None:
        self._keys = _KeySet(jwks)

    async def keys_for(self, kid: str, alg: str, jku: str | None) -> list[jwt.PyJWK]:
        del jku  # the inline set is authoritative; a jku header is never fetched
        return self._keys.keys_for(kid, alg)


class _RemoteKeys:
    """An issuer bound to one ``jku`` URL: cached set, bounded re-fetches."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        allowlist: Allowlist,
        *,
        ttl: float,
        monotonic: Callable[[], float],
    ) -> None:
        self._url = url
        self._http = http
        self._allowlist = allowlist
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._keys: _KeySet | None = None
        self._fetched_at = -math.inf
        self._failed_at = -math.inf
        self._refetches: deque[float] = deque()
        self._tried_kids: set[str] = set()

    async def keys_for(self, kid: str, alg: str, jku: str | None) -> list[jwt.PyJWK]:
        if jku is not None and jku != self._url:
            raise Unauthorized("jku header differs from the issuer's bound jku")
        keys = self._keys
        if keys is not None and kid in keys and not self._expired():
            return keys.keys_for(kid, alg)
        async with self._lock:
            if self._keys is None or self._expired():
                await self._fetch(refetch=False)
            elif kid not in self._keys and self._may_refetch(kid):
                await self._fetch(refetch=True)
            assert self._keys is not None
            return self._keys.keys_for(kid, alg)

    def _expired(self) -> bool:
        return self._monotonic() - self._fetched_at >= self._ttl

    def _may_refetch(self, kid: str) -> bool:
        """One re-fetch per distinct unknown kid, at most 10 per minute per issuer."""
        now = self._monotonic()
        while self._refetches and now - self._refetches[0] >= _REFETCH_WINDOW:
            self._refetches.popleft()
        if kid in self._tried_kids or len(self._refetches) >= _MAX_REFETCHES:
            return False
        self._tried_kids.add(kid)
        self._refetches.append(now)
        return True

    async def _fetch(self, *, refetch: bool) -> None:
        now = self._monotonic()
        if now - self._failed_at < _FAILURE_BACKOFF:
            raise Unauthorized("JWKS unavailable (recent fetch failure)")
        try:
            keys = await self._download()
        except Unauthorized:
            self._failed_at = now
            raise
        self._keys = keys
        self._fetched_at = now
        if not refetch:
            self._tried_kids.clear()
        logger.info("fetched JWKS from %s (refetch=%s)", self._url, refetch)

    async def _download(self) -> _KeySet:
        try:
            # The allowlist may resolve DNS (blocking): keep it off the event loop.
            await anyio.to_thread.run_sync(self._allowlist.check, self._url, abandon_on_cancel=True)
        except OutboundRefused as exc:
            raise Unauthorized(f"jku refused by allowlist: {exc.reason}") from None
        body = bytearray()
        try:
            async with self._http.stream(
                "GET",
                self._url,
                headers={"Accept": "application/json"},
                follow_redirects=False,
                timeout=_JWKS_TIMEOUT,
            ) as response:
                if response.status_code != 200:
                    raise Unauthorized(f"JWKS fetch answered {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _JWKS_MAX_BYTES:
                        raise Unauthorized("JWKS over 1 MB")
        except httpx.HTTPError as exc:
            raise Unauthorized(f"JWKS fetch failed ({type(exc).__name__})") from None
        try:
            return _KeySet(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError):
            raise Unauthorized("JWKS is not a JSON JWK Set") from None


def _bearer_token(authorization: str | None) -> str:
    if authorization is None:
        raise Unauthorized("no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("Authorization is not a Bearer token")
    if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
        raise Unauthorized("bearer token is not a compact JWS")
    return token


def _check_header(header: Mapping[str, Any]) -> tuple[str, str]:
    """Validate ``typ``, ``kid`` and ``alg`` (§1.9); returns (alg, kid)."""
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.upper() != "JWT":
        raise Unauthorized("typ is not JWT")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise Unauthorized("alg not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("kid missing")
    jku = header.get("jku")
    if jku is not None and not isinstance(jku, str):
        raise Unauthorized("jku is not a string")
    return str(alg), kid


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthorized(f"{name} is not a NumericDate")
    return float(value)


_CLAIM_CHECKS: dict[type[Exception], str] = {
    jwt.InvalidAudienceError: "aud",
    jwt.InvalidIssuerError: "iss",
    jwt.MissingRequiredClaimError: "claims",
}
_LOG_CHARS = 200


def _shown(value: object) -> str | list[str] | None:
    """A claim as logged: strings cut to 200 characters, at most 5 array members."""
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v)[:_LOG_CHARS] for v in value[:5]]
    return str(value)[:_LOG_CHARS]


class _Attempt:
    """One verification: the check under way and what the token claimed (for the log line)."""

    def __init__(self, expected: list[str]) -> None:
        self.expected = expected
        self.check = "bearer"
        self.iss: str | None = None
        self.claimed: Mapping[str, Any] = {}

    def saw(self, unverified: Mapping[str, Any]) -> None:
        self.claimed = unverified
        iss = unverified.get("iss")
        self.iss = iss if isinstance(iss, str) else None

    def log(self, exc: Unauthorized) -> None:
        """One line per refusal, never the token: check, reason, iss, expected/received aud."""
        iss = _shown(self.claimed.get("iss"))
        received = _shown(self.claimed.get("aud"))
        logger.warning(
            "401 unauthorized: check=%s reason=%r iss=%r expected aud=%r received aud=%r",
            self.check,
            exc.reason,
            iss,
            self.expected,
            received,
            extra={
                "check": self.check,
                "reason": exc.reason,
                "iss": iss,
                "expectedAud": self.expected,
                "receivedAud": received,
            },
        )


class JwtVerifier:
    """Verifies the CDS client JWT of discovery, service and feedback calls.

    Args:
        issuers: ``{iss: {"jku": url}}`` or ``{iss: {"jwks": {...}}}`` (README "Settings").
        allowlist: Must admit a ``jku`` before it is fetched.
        http: Client for JWKS fetches (redirects are never followed).
        replay: Records ``(iss, jti)``; a second use is refused.
        wall_clock: Clock for ``exp``/``iat``/``nbf`` (never ``FHIR_SERVICE_NOW``).
        leeway: Seconds of clock skew tolerated.
        jwks_ttl: Seconds a fetched JWK Set is used before it is fetched again.
        monotonic: Clock for the JWKS cache and re-fetch limits.
        max_lifetime: Optional cap on ``exp - iat`` in seconds (none by default, §6.3 S10).

    Raises:
        ValueError: A binding is not exactly one of ``jku`` (string) or ``jwks`` (JWK Set).
    """

    def __init__(
        self,
        issuers: Mapping[str, Mapping[str, Any]],
        allowlist: Allowlist,
        http: httpx.AsyncClient,
        replay: ReplayCache,
        *,
        wall_clock: Callable[[], float] = time.time,
        leeway: int = 60,
        jwks_ttl: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_lifetime: float | None = None,
    ) -> None:
        self._sources: dict[str, _InlineKeys | _RemoteKeys] = {}
        for iss, binding in issuers.items():
            if set(binding) == {"jku"} and isinstance(binding["jku"], str):
                self._sources[iss] = _RemoteKeys(
                    binding["jku"], http, allowlist, ttl=jwks_ttl, monotonic=monotonic
                )
            elif set(binding) == {"jwks"}:
                self._sources[iss] = _InlineKeys(binding["jwks"])
            else:
                raise ValueError(f"issuer {iss!r} needs exactly one of 'jku' or 'jwks'")
        self._replay = replay
        self._wall_clock = wall_clock
        self._leeway = leeway
        self._max_lifetime = max_lifetime

    async def verify(
        self, authorization: str | None, audience: str | Sequence[str]
    ) -> dict[str, Any]:
        """Verify ``Authorization: Bearer <jwt>`` for a call to ``audience``.

        A refusal is logged in one line without the token (contract, Additions of 2026-12,
        "401 answers"): the failed check, the reason, ``iss``, and the expected and the
        received ``aud`` (docs/troubleshooting.md reads those lines).

        Args:
            authorization: The raw ``Authorization`` header value, if any.
            audience: The exact URL called (``<base>/cds-services[/{id}[/feedback]]``), or the
                URLs that name the same call (as called and as served: fhir_service/paths.py).

        Returns:
            The verified claims.

        Raises:
            Unauthorized: Any failure; ``reason`` is for logs and never holds the token.
        """
        attempt = _Attempt([audience] if isinstance(audience, str) else list(audience))
        try:
            return await self._verify(authorization, attempt)
        except Unauthorized as exc:
            attempt.log(exc)
            raise

    async def _verify(self, authorization: str | None, attempt: _Attempt) -> dict[str, Any]:
        token = _bearer_token(authorization)
        attempt.check = "token"
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("malformed JWT") from None
        attempt.saw(unverified)
        attempt.check = "header"
        alg, kid = _check_header(header)
        attempt.check = "iss"
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss not in self._sources:
            shown = repr(iss[:100]) if isinstance(iss, str) else type(iss).__name__
            raise Unauthorized(f"iss {shown} is not a trusted issuer")
        attempt.check = "key"
        keys = await self._sources[iss].keys_for(kid, alg, header.get("jku"))
        if not keys:
            raise Unauthorized(f"no key of iss {iss!r} for kid {kid[:64]!r} and alg {alg}")
        attempt.check = "signature"
        claims = self._decode(token, keys, alg, attempt)
        attempt.check = "time"
        exp = self._check_times(claims)
        attempt.check = "jti"
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_CHARS:
            raise Unauthorized("jti is not a usable string")
        # The replay store may be a database: never block the event loop on it.
        seen = await anyio.to_thread.run_sync(self._replay.seen, iss, jti, math.ceil(exp))
        if seen:
            raise Unauthorized(f"jti replayed (iss {iss!r}, jti {jti[:64]!r})")
        return claims

    def _decode(
        self, token: str, keys: list[jwt.PyJWK], alg: str, attempt: _Attempt
    ) -> dict[str, Any]:
        """Signature (key's algorithm only), ``aud``, ``iss`` and required claims."""
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key=key,
                    algorithms=[alg],
                    audience=attempt.expected,
                    issuer=attempt.iss,
                    leeway=self._leeway,
                    options={
                        "require": list(_REQUIRED_CLAIMS),
                        "verify_exp": False,  # checked against wall_clock in _check_times
                        "verify_iat": False,
                        "verify_nbf": False,
                        "enforce_minimum_key_length": True,
                    },
                )
            except jwt.InvalidSignatureError:
                continue  # another key with the same kid may fit
            except jwt.PyJWTError as exc:
                attempt.check = _CLAIM_CHECKS.get(type(exc), "claims")
                raise Unauthorized(f"JWT rejected: {type(exc).__name__}") from None
        raise Unauthorized(f"JWT rejected: signature does not verify (iss {attempt.iss!r})")

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        """``exp``/``iat``/``nbf`` with leeway against the wall clock; returns ``exp``."""
        now = self._wall_clock()
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if exp <= now - self._leeway:
            raise Unauthorized("JWT expired")
        if iat > now + self._leeway:
            raise Unauthorized("iat is in the future")
        if "nbf" in claims and _number(claims, "nbf") > now + self._leeway:
            raise Unauthorized("nbf is in the future")
        if exp <= iat:
            raise Unauthorized("exp is not after iat")
        if self._max_lifetime is not None and exp - iat > self._max_lifetime:
            raise Unauthorized("JWT lifetime over the configured cap")
        return exp
