"""JwtVerifier: https://cds-hooks.hl7.org/2.0/#trusting-cds-clients; README "Settings"."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fhir_service.errors import Unauthorized
from fhir_service.security.allowlist import Allowlist
from fhir_service.security.jwt import InMemoryReplayCache, JwtVerifier

NOW = 2_000_000_000.0  # the injected wall clock (2033): pyjwt's own clock is never consulted
BASE = "https://cds.example.org"
AUD = f"{BASE}/cds-services/muscle-spasm-patient-view"
SANDBOX = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = f"{SANDBOX}/.well-known/jwks.json"
EPIC = "https://fhir.epic.example/interconnect-fhir-oauth/api/FHIR/R4"
EPIC_JKU = "https://fhir.epic.example/interconnect-fhir-oauth/api/epic/2019/Security/Open/PublicKeys/1/jwks"
INLINE = "https://inline.example"
ALLOW = ("https://sandbox.cds-hooks.org/.well-known", "https://fhir.epic.example")

EC384 = ec.generate_private_key(ec.SECP384R1())
EC256 = ec.generate_private_key(ec.SECP256R1())
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC384 = ec.generate_private_key(ec.SECP384R1())
INLINE_EC384 = ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    out: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    return out | {"kid": kid} | extra


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def mint(
    key: Any = EC384,
    alg: str = "ES384",
    kid: str | None = "sandbox-1",
    *,
    header: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A sandbox-shaped token by default: ES384, 300 s, jku header."""
    head: dict[str, Any] = {"alg": alg, "typ": "JWT", "jku": SANDBOX_JKU}
    if kid is not None:
        head["kid"] = kid
    head |= header or {}
    payload = {"iss": SANDBOX, "aud": AUD, "iat": NOW, "exp": NOW + 300, "jti": uuid.uuid4().hex}
    payload |= claims
    for name in drop:
        payload.pop(name, None)
    algorithm = jwt.get_algorithm_by_name(alg)
    return raw_token(head, payload, lambda data: algorithm.sign(data, key))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Env:
    """Trusted issuers, JWKS endpoints behind a MockTransport, clocks and counters."""

    def __init__(self) -> None:
        self.wall = Clock(NOW)
        self.mono = Clock(1000.0)
        self.jwks: dict[str, Any] = {
            SANDBOX_JKU: {"keys": [jwk(EC384, "sandbox-1"), jwk(EC256, "sandbox-256")]},
            EPIC_JKU: {"keys": [jwk(RSA, "epic-1", use="sig")]},
        }
        self.status: dict[str, int] = {}
        self.hits: Counter[str] = Counter()
        self.issuers: dict[str, dict[str, Any]] = {
            SANDBOX: {"jku": SANDBOX_JKU},
            EPIC: {"jku": EPIC_JKU},
            INLINE: {"jwks": {"keys": [jwk(INLINE_EC384, "inline-1")]}},
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.hits[url] += 1
        assert "authorization" not in request.headers
        if url in self.status:
            return httpx.Response(self.status[url], headers={"location": "http://127.0.0.1/"})
        if url not in self.jwks:
            return httpx.Response(404)
        body = self.jwks[url]
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(200, content=content, headers={"content-type": "application/json"})

    def fetches(self) -> int:
        return sum(self.hits.values())

    def verifier(self, allow: tuple[str, ...] = ALLOW, **kwargs: Any) -> JwtVerifier:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.handler), follow_redirects=True)
        return JwtVerifier(
            self.issuers,
            Allowlist(list(allow)),
            http,
            InMemoryReplayCache(clock=self.wall),
            wall_clock=self.wall,
            monotonic=self.mono,
            **kwargs,
        )


@pytest.fixture
def env() -> Env:
    return Env()


async def rejected(verifier: JwtVerifier, token: str | None, audience: str = AUD) -> str:
    authorization = None if token is None else f"Bearer {token}"
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(authorization, audience)
    assert info.value.status_code == 401
    assert info.value.outcome()["issue"] == [{"severity": "error", "code": "login"}]
    assert info.value.__cause__ is None
    if token:
        signature = token.split(".")[-1]
        assert token not in info.value.reason
        assert not signature or signature not in info.value.reason
    return info.value.reason


# --- accepted (negative controls) -----------------------------------------------------------


@pytest.mark.anyio
async def test_s20_sandbox_shaped_es384_token_accepted(env: Env) -> None:
    verifier = env.verifier()
    claims = await verifier.verify(f"Bearer {mint()}", AUD)
    assert claims["iss"] == SANDBOX and claims["aud"] == AUD and claims["exp"] == NOW + 300
    assert env.hits[SANDBOX_JKU] == 1


@pytest.mark.anyio
async def test_s20_sandbox_es256_accepted(env: Env) -> None:
    token = mint(EC256, "ES256", "sandbox-256")
    assert (await env.verifier().verify(f"Bearer {token}", AUD))["iss"] == SANDBOX


@pytest.mark.anyio
async def test_s19_epic_shaped_rs384_token_with_nbf_accepted(env: Env) -> None:
    token = mint(
        RSA,
        "RS384",
        "epic-1",
        header={"jku": EPIC_JKU},
        iss=EPIC,
        sub="epic-client-id",
        iat=NOW - 10,
        nbf=NOW - 310,
        exp=NOW + 890,
    )
    claims = await env.verifier().verify(f"bearer {token}", AUD)
    assert claims["sub"] == "epic-client-id" and claims["nbf"] == NOW - 310


@pytest.mark.anyio
@pytest.mark.parametrize("alg", ["RS256", "PS256", "PS384", "PS512"])
async def test_other_rsa_algorithms_accepted_with_an_unlabelled_key(env: Env, alg: str) -> None:
    token = mint(RSA, alg, "epic-1", header={"jku": EPIC_JKU}, iss=EPIC)
    assert (await env.verifier().verify(f"Bearer {token}", AUD))["iss"] == EPIC


@pytest.mark.anyio
async def test_inline_jwks_issuer_fetches_nothing(env: Env) -> None:
    token = mint(INLINE_EC384, kid="inline-1", header={"jku": "https://evil.test/jwks"}, iss=INLINE)
    assert (await env.verifier().verify(f"Bearer {token}", AUD))["iss"] == INLINE
    assert env.fetches() == 0


@pytest.mark.anyio
async def test_aud_array_with_an_exact_element_accepted(env: Env) -> None:
    token = mint(aud=[f"{BASE}/cds-services", AUD])
    assert (await env.verifier().verify(f"Bearer {token}", AUD))["aud"][1] == AUD


@pytest.mark.anyio
async def test_lowercase_typ_and_clock_skew_within_leeway_accepted(env: Env) -> None:
    verifier = env.verifier()
    early = mint(header={"typ": "jwt"}, iat=NOW + 59, nbf=NOW + 59, exp=NOW + 300)
    await verifier.verify(f"Bearer {early}", AUD)
    late = mint(iat=NOW - 400, exp=NOW - 59)  # expired 59 s ago: within the 60 s leeway
    await verifier.verify(f"Bearer {late}", AUD)


@pytest.mark.anyio
async def test_jwk_with_private_members_is_used_as_public_only(env: Env) -> None:
    private = jwt.algorithms.ECAlgorithm.to_jwk(EC384, as_dict=True) | {"kid": "sandbox-1"}
    assert "d" in private
    env.jwks[SANDBOX_JKU] = {"keys": [private]}
    await env.verifier().verify(f"Bearer {mint()}", AUD)


# --- S1-S17 ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_s1_alg_none(env: Env) -> None:
    head = {"alg": "none", "typ": "JWT", "kid": "sandbox-1"}
    payload = {"iss": SANDBOX, "aud": AUD, "iat": NOW, "exp": NOW + 300, "jti": "x"}
    token = raw_token(head, payload, lambda _: b"")
    assert await rejected(env.verifier(), token) == "alg not accepted"
    assert env.fetches() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_s2_hmac_with_public_key_as_secret(env: Env, alg: str) -> None:
    secret = EC384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    head = {"alg": alg, "typ": "JWT", "kid": "sandbox-1"}
    payload = {"iss": SANDBOX, "aud": AUD, "iat": NOW, "exp": NOW + 300, "jti": "x"}
    token = raw_token(head, payload, lambda data: hmac.new(secret, data, digest).digest())
    assert await rejected(env.verifier(), token) == "alg not accepted"
    assert env.fetches() == 0


@pytest.mark.anyio
async def test_s2_oct_key_in_jwks_is_never_used(env: Env) -> None:
    env.jwks[SANDBOX_JKU] = {"keys": [{"kty": "oct", "kid": "sandbox-1", "k": b64(b"secret")}]}
    reason = await rejected(env.verifier(), mint())
    assert reason.startswith("no key of iss")


@pytest.mark.anyio
async def test_s3_signature_bit_flipped(env: Env) -> None:
    head, payload, signature = mint().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0x01
    token = f"{head}.{payload}.{b64(bytes(raw))}"
    assert await rejected(env.verifier(), token) == (
        f"JWT rejected: signature does not verify (iss {SANDBOX!r})"
    )


@pytest.mark.anyio
async def test_s3_payload_edited(env: Env) -> None:
    head, _, signature = mint().split(".")
    edited = {"iss": SANDBOX, "aud": AUD, "iat": NOW, "exp": NOW + 86400, "jti": "y"}
    token = f"{head}.{b64(json.dumps(edited).encode())}.{signature}"
    assert "signature does not verify" in await rejected(env.verifier(), token)


@pytest.mark.anyio
async def test_s4_kid_missing(env: Env) -> None:
    assert await rejected(env.verifier(), mint(kid=None)) == "kid missing"
    assert await rejected(env.verifier(), mint(header={"kid": ""})) == "kid missing"
    assert env.fetches() == 0


@pytest.mark.anyio
async def test_s4_kid_unknown_after_one_refresh(env: Env) -> None:
    verifier = env.verifier()
    await verifier.verify(f"Bearer {mint()}", AUD)
    assert env.fetches() == 1
    assert (await rejected(verifier, mint(kid="unknown"))).startswith("no key of iss")
    assert env.fetches() == 2  # one immediate re-fetch
    assert (await rejected(verifier, mint(kid="unknown"))).startswith("no key of iss")
    assert env.fetches() == 2  # never again for the same kid


@pytest.mark.anyio
async def test_s5_aud_of_another_service(env: Env) -> None:
    token = mint(aud=f"{BASE}/cds-services/muscle-spasm-order-sign")
    assert await rejected(env.verifier(), token) == "JWT rejected: InvalidAudienceError"


@pytest.mark.anyio
async def test_s6_discovery_aud_on_service_call_and_vice_versa(env: Env) -> None:
    verifier = env.verifier()
    discovery = f"{BASE}/cds-services"
    assert "InvalidAudienceError" in await rejected(verifier, mint(aud=discovery), AUD)
    assert "InvalidAudienceError" in await rejected(verifier, mint(aud=AUD), discovery)
    assert "InvalidAudienceError" in await rejected(verifier, mint(aud=AUD), AUD + "/feedback")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "aud",
    [
        [f"{BASE}/cds-services", AUD + "/"],
        [AUD.upper()],
        [f"{AUD}?x=1"],
        "https://cds.example.org",
    ],
)
async def test_s7_aud_without_exact_match(env: Env, aud: Any) -> None:
    assert "InvalidAudienceError" in await rejected(env.verifier(), mint(aud=aud))


@pytest.mark.anyio
async def test_s8_exp_beyond_leeway(env: Env) -> None:
    token = mint(iat=NOW - 400, exp=NOW - 61)
    assert await rejected(env.verifier(), token) == "JWT expired"


@pytest.mark.anyio
async def test_s8_time_checks_use_the_injected_wall_clock(env: Env) -> None:
    real = time.time()
    token = mint(iat=real, exp=real + 300)  # valid by the real clock
    assert await rejected(env.verifier(), token) == "JWT expired"  # wall_clock says 2033


@pytest.mark.anyio
async def test_s9_iat_and_nbf_in_the_future(env: Env) -> None:
    verifier = env.verifier()
    assert await rejected(verifier, mint(iat=NOW + 61, exp=NOW + 400)) == "iat is in the future"
    assert await rejected(verifier, mint(nbf=NOW + 120)) == "nbf is in the future"


@pytest.mark.anyio
async def test_s10_lifetime_cap_only_when_configured(env: Env) -> None:
    long_lived = mint(exp=NOW + 7200)
    capped = env.verifier(max_lifetime=3600)
    assert await rejected(capped, long_lived) == "JWT lifetime over the configured cap"
    assert (await env.verifier().verify(f"Bearer {long_lived}", AUD))["exp"] == NOW + 7200


@pytest.mark.anyio
async def test_s11_jti_replayed(env: Env) -> None:
    verifier = env.verifier()
    token = mint(jti="once")
    await verifier.verify(f"Bearer {token}", AUD)
    assert "jti replayed" in await rejected(verifier, token)
    # Another issuer may use the same jti.
    other = mint(RSA, "RS384", "epic-1", header={"jku": EPIC_JKU}, iss=EPIC, jti="once")
    await verifier.verify(f"Bearer {other}", AUD)


@pytest.mark.anyio
async def test_s11_forged_token_does_not_burn_the_jti(env: Env) -> None:
    verifier = env.verifier()
    forged = mint(OTHER_EC384, jti="precious")
    assert "signature does not verify" in await rejected(verifier, forged)
    await verifier.verify(f"Bearer {mint(jti='precious')}", AUD)


@pytest.mark.anyio
async def test_s12_untrusted_iss(env: Env) -> None:
    verifier = env.verifier()
    assert await rejected(verifier, mint(iss="https://evil.test")) == (
        "iss 'https://evil.test' is not a trusted issuer"
    )
    assert "not a trusted issuer" in await rejected(verifier, mint(iss=SANDBOX + "/"))
    assert "not a trusted issuer" in await rejected(verifier, mint(iss=[SANDBOX]))
    assert "not a trusted issuer" in await rejected(verifier, mint(drop=("iss",)))
    assert env.fetches() == 0


@pytest.mark.anyio
async def test_s13_bound_jku_not_on_allowlist(env: Env) -> None:
    verifier = env.verifier(allow=("https://fhir.epic.example",))
    assert await rejected(verifier, mint()) == (
        "jku refused by allowlist: no allowlist entry matches"
    )
    assert env.fetches() == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "jku",
    [
        "https://sandbox.cds-hooks.org.evil.test/.well-known/jwks.json",
        "https://sandbox.cds-hooks.org@evil.test/.well-known/jwks.json",
        SANDBOX_JKU + "?x",
        SANDBOX_JKU.replace("https", "http"),
    ],
)
async def test_s14_token_jku_tricks(env: Env, jku: str) -> None:
    verifier = env.verifier(allow=("*", *ALLOW))
    assert await rejected(verifier, mint(header={"jku": jku})) == (
        "jku header differs from the issuer's bound jku"
    )
    assert env.fetches() == 0


@pytest.mark.anyio
async def test_s14_configured_jku_with_userinfo_refused(env: Env) -> None:
    tricky = "https://sandbox.cds-hooks.org@evil.test/.well-known/jwks.json"
    env.issuers[SANDBOX] = {"jku": tricky}
    verifier = env.verifier(allow=("*", *ALLOW))
    assert await rejected(verifier, mint(header={"jku": tricky})) == (
        "jku refused by allowlist: userinfo in URL"
    )
    assert env.fetches() == 0


@pytest.mark.anyio
async def test_s15_jku_redirect_not_followed(env: Env) -> None:
    env.status[SANDBOX_JKU] = 302  # Location: http://127.0.0.1/
    assert await rejected(env.verifier(), mint()) == "JWKS fetch answered 302"
    assert dict(env.hits) == {SANDBOX_JKU: 1}


@pytest.mark.anyio
@pytest.mark.parametrize("typ", ["JWS", "at+jwt", "", None, 1])
async def test_s16_typ_not_jwt(env: Env, typ: Any) -> None:
    assert await rejected(env.verifier(), mint(header={"typ": typ})) == "typ is not JWT"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "no Authorization header"),
        ("", "Authorization is not a Bearer token"),
        ("Bearer", "Authorization is not a Bearer token"),
        ("Bearer ", "Authorization is not a Bearer token"),
        ("Basic dXNlcjpwYXNz", "Authorization is not a Bearer token"),
        ("Bearer a.b.c d", "Authorization is not a Bearer token"),
        ("Bearer not-a-jwt", "bearer token is not a compact JWS"),
        ("Bearer " + "a" * 20000 + ".b.c", "bearer token is not a compact JWS"),
        ("Bearer a.b.c", "malformed JWT"),
    ],
)
async def test_s16_header_missing_or_not_bearer(
    env: Env, authorization: str | None, reason: str
) -> None:
    # A token in a query string never reaches the verifier: it only reads the header.
    with pytest.raises(Unauthorized) as info:
        await env.verifier().verify(authorization, AUD)
    assert info.value.reason == reason


@pytest.mark.anyio
async def test_s17_key_from_another_issuers_jwks(env: Env) -> None:
    # Signed with the inline issuer's key and kid, but claiming the sandbox issuer.
    token = mint(INLINE_EC384, kid="inline-1", iss=SANDBOX)
    assert (await rejected(env.verifier(), token)).startswith("no key of iss")
    # Same kid name in both sets: only the sandbox's own key is tried.
    env.jwks[SANDBOX_JKU] = {"keys": [jwk(EC384, "inline-1")]}
    assert "signature does not verify" in await rejected(env.verifier(), token)


# --- key/algorithm binding ------------------------------------------------------------------


@pytest.mark.anyio
async def test_jwk_alg_binds_the_algorithm(env: Env) -> None:
    env.jwks[EPIC_JKU] = {"keys": [jwk(RSA, "epic-1", alg="RS256")]}
    token = mint(RSA, "RS384", "epic-1", header={"jku": EPIC_JKU}, iss=EPIC)
    assert (await rejected(env.verifier(), token)).startswith("no key of iss")


@pytest.mark.anyio
async def test_curve_binds_the_algorithm(env: Env) -> None:
    # A P-384 key cannot verify an ES256 token, even with a matching kid.
    env.jwks[SANDBOX_JKU] = {"keys": [jwk(EC384, "k")]}
    token = mint(EC256, "ES256", "k")
    assert (await rejected(env.verifier(), token)).startswith("no key of iss")


@pytest.mark.anyio
async def test_encryption_key_is_not_used_for_signatures(env: Env) -> None:
    env.jwks[SANDBOX_JKU] = {"keys": [jwk(EC384, "sandbox-1", use="enc")]}
    assert (await rejected(env.verifier(), mint())).startswith("no key of iss")


@pytest.mark.anyio
async def test_short_rsa_key_refused(env: Env) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    env.jwks[EPIC_JKU] = {"keys": [jwk(weak, "weak")]}
    token = mint(weak, "RS256", "weak", header={"jku": EPIC_JKU}, iss=EPIC)
    assert await rejected(env.verifier(), token) == "JWT rejected: InvalidKeyError"


@pytest.mark.anyio
@pytest.mark.parametrize("missing", ["exp", "iat", "aud", "jti"])
async def test_required_claims(env: Env, missing: str) -> None:
    reason = await rejected(env.verifier(), mint(drop=(missing,)))
    assert reason == "JWT rejected: MissingRequiredClaimError"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": "soon"}, "exp is not a NumericDate"),
        ({"iat": True}, "iat is not a NumericDate"),
        ({"nbf": "later"}, "nbf is not a NumericDate"),
        ({"exp": NOW - 10}, "exp is not after iat"),
        ({"jti": ""}, "jti is not a usable string"),
        ({"jti": 7}, "JWT rejected: InvalidJTIError"),
        ({"jti": "j" * 300}, "jti is not a usable string"),
    ],
)
async def test_malformed_claims(env: Env, claims: dict[str, Any], reason: str) -> None:
    assert await rejected(env.verifier(), mint(**claims)) == reason


# --- JWKS fetching, caching and re-fetch limits ---------------------------------------------


@pytest.mark.anyio
async def test_jwks_cached_for_ttl(env: Env) -> None:
    verifier = env.verifier()
    for _ in range(3):
        await verifier.verify(f"Bearer {mint()}", AUD)
    env.mono.now += 299
    await verifier.verify(f"Bearer {mint()}", AUD)
    assert env.hits[SANDBOX_JKU] == 1
    env.mono.now += 1
    await verifier.verify(f"Bearer {mint()}", AUD)
    assert env.hits[SANDBOX_JKU] == 2


@pytest.mark.anyio
async def test_cache_is_per_issuer(env: Env) -> None:
    verifier = env.verifier()
    await verifier.verify(f"Bearer {mint()}", AUD)
    epic = mint(RSA, "RS384", "epic-1", header={"jku": EPIC_JKU}, iss=EPIC)
    await verifier.verify(f"Bearer {epic}", AUD)
    assert dict(env.hits) == {SANDBOX_JKU: 1, EPIC_JKU: 1}


@pytest.mark.anyio
async def test_key_rotation_picked_up_by_unknown_kid_refetch(env: Env) -> None:
    verifier = env.verifier()
    await verifier.verify(f"Bearer {mint()}", AUD)
    env.jwks[SANDBOX_JKU] = {"keys": [jwk(OTHER_EC384, "sandbox-2")]}
    await verifier.verify(f"Bearer {mint(OTHER_EC384, kid='sandbox-2')}", AUD)
    assert env.hits[SANDBOX_JKU] == 2
    # The old key is gone from the cached set now.
    assert (await rejected(verifier, mint())).startswith("no key of iss")


@pytest.mark.anyio
async def test_at_most_ten_refetches_per_minute_per_issuer(env: Env) -> None:
    verifier = env.verifier()
    await verifier.verify(f"Bearer {mint()}", AUD)
    for i in range(15):
        await rejected(verifier, mint(kid=f"unknown-{i}"))
    assert env.hits[SANDBOX_JKU] == 1 + 10
    # Rate-limited kids were not marked as tried: they may trigger a re-fetch later.
    env.mono.now += 60
    await rejected(verifier, mint(kid="unknown-14"))
    assert env.hits[SANDBOX_JKU] == 12
    await rejected(verifier, mint(kid="unknown-0"))  # already tried once: no re-fetch
    assert env.hits[SANDBOX_JKU] == 12
    # Another issuer has its own budget.
    epic = mint(RSA, "RS384", "epic-x", header={"jku": EPIC_JKU}, iss=EPIC)
    await rejected(verifier, epic)
    assert env.hits[EPIC_JKU] == 1


@pytest.mark.anyio
async def test_concurrent_cold_cache_fetches_once(env: Env) -> None:
    verifier = env.verifier()
    tokens = [mint() for _ in range(20)]
    results = await asyncio.gather(*(verifier.verify(f"Bearer {t}", AUD) for t in tokens))
    assert len(results) == 20
    assert env.hits[SANDBOX_JKU] == 1


@pytest.mark.anyio
async def test_failed_fetch_backs_off_then_recovers(env: Env) -> None:
    env.status[SANDBOX_JKU] = 503
    verifier = env.verifier()
    assert await rejected(verifier, mint()) == "JWKS fetch answered 503"
    assert await rejected(verifier, mint()) == "JWKS unavailable (recent fetch failure)"
    assert env.hits[SANDBOX_JKU] == 1
    del env.status[SANDBOX_JKU]
    env.mono.now += 5
    await verifier.verify(f"Bearer {mint()}", AUD)
    assert env.hits[SANDBOX_JKU] == 2


@pytest.mark.anyio
async def test_expired_cache_is_not_used_when_refresh_fails(env: Env) -> None:
    verifier = env.verifier()
    await verifier.verify(f"Bearer {mint()}", AUD)
    env.status[SANDBOX_JKU] = 500
    env.mono.now += 300
    assert await rejected(verifier, mint()) == "JWKS fetch answered 500"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>", "JWKS is not a JSON JWK Set"),
        (b'{"keys": {}}', "JWKS is not a JSON JWK Set"),
        (b"[]", "JWKS is not a JSON JWK Set"),
        (b'{"keys": [], "pad": "' + b"x" * (1024 * 1024) + b'"}', "JWKS over 1 MB"),
    ],
)
async def test_bad_jwks_documents(env: Env, body: bytes, reason: str) -> None:
    env.jwks[SANDBOX_JKU] = body
    assert await rejected(env.verifier(), mint()) == reason


@pytest.mark.anyio
async def test_transport_error_on_jwks_fetch(env: Env) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(broken))
    verifier = JwtVerifier(
        env.issuers, Allowlist(list(ALLOW)), http, InMemoryReplayCache(), wall_clock=env.wall
    )
    assert await rejected(verifier, mint()) == "JWKS fetch failed (ConnectError)"


@pytest.mark.anyio
async def test_token_never_logged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = env.verifier()
    token = mint()
    await verifier.verify(f"Bearer {token}", AUD)
    await rejected(verifier, token)
    assert "fetched JWKS" in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


@pytest.mark.parametrize(
    "binding",
    [{"jku": SANDBOX_JKU, "jwks": {"keys": []}}, {"jku": 1}, {}, {"jwks": []}],
)
def test_invalid_issuer_bindings(binding: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JwtVerifier(
            {SANDBOX: binding},
            Allowlist([]),
            httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(500))),
            InMemoryReplayCache(),
        )


# --- replay cache ---------------------------------------------------------------------------


def test_replay_cache_records_until_exp_plus_leeway() -> None:
    clock = Clock(NOW)
    cache = InMemoryReplayCache(clock=clock, leeway=60)
    assert cache.seen("iss", "a", int(NOW) + 300) is False
    assert cache.seen("iss", "a", int(NOW) + 300) is True
    assert cache.seen("other", "a", int(NOW) + 300) is False
    clock.now = NOW + 359
    assert cache.seen("iss", "a", int(NOW) + 300) is True
    clock.now = NOW + 360
    assert cache.seen("iss", "b", int(NOW) + 1000) is False
    assert len(cache) == 1  # both "a" entries evicted
    assert cache.seen("iss", "a", int(NOW) + 1000) is False


def test_replay_cache_bounded() -> None:
    cache = InMemoryReplayCache(clock=Clock(NOW), max_entries=3)
    for i in range(5):
        assert cache.seen("iss", str(i), int(NOW) + 100 + i) is False
    assert len(cache) == 3
    assert cache.seen("iss", "4", int(NOW) + 104) is True  # the latest expiries are kept


def test_replay_cache_thread_safe() -> None:
    cache = InMemoryReplayCache(clock=Clock(NOW))
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for i in range(200):
            results.append(cache.seen("iss", f"jti-{i}", int(NOW) + 300))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(False) == 200 and len(cache) == 200
