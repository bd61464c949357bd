"""FhirClient: https://cds-hooks.hl7.org/2.0/#fhir-resource-access; README "Settings"."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from fhir_service.clients.fhir_client import FhirClient, FhirFetchError
from fhir_service.security.allowlist import Allowlist

BASE = "http://127.0.0.1:8123/fhir"
TOKEN = "sekret-access-token-123"
FHIR_JSON = {"content-type": "application/fhir+json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[httpx.Request], httpx.Response]


class Upstream:
    """A MockTransport that records every request it receives."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def make_client(
    handler: Handler,
    *,
    allow: tuple[str, ...] = ("http://127.0.0.1:8123",),
    follow_redirects: bool = False,
    **kwargs: Any,
) -> tuple[FhirClient, Upstream]:
    upstream = Upstream(handler)
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(upstream), follow_redirects=follow_redirects
    )
    return FhirClient(http, Allowlist(list(allow)), **kwargs), upstream


def fhir(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(), headers=FHIR_JSON | headers)


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 99,
        "link": [{"relation": "self", "url": "ignored"}],
        "entry": [{"resource": r} for r in resources],
    }
    if next_url:
        bundle["link"].append({"relation": "next", "url": next_url})
    return bundle


def obs(i: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": str(i)}


async def fetch_error(client: FhirClient, relative: str, token: str | None = TOKEN) -> str:
    with pytest.raises(FhirFetchError) as info:
        await client.fetch(BASE, relative, token=token)
    assert TOKEN not in str(info.value)
    assert info.value.__cause__ is None  # nothing chained that could carry the token or URL
    return info.value.reason


# --- reads -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_read_returns_resource_with_fhir_accept_and_bearer() -> None:
    patient = {"resourceType": "Patient", "id": "p1"}
    client, upstream = make_client(lambda _: fhir(patient))
    assert await client.fetch(BASE, "Patient/p1", token=TOKEN) == patient
    (request,) = upstream.requests
    assert str(request.url) == "http://127.0.0.1:8123/fhir/Patient/p1"
    assert request.method == "GET"
    assert request.headers["accept"] == "application/fhir+json"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.anyio
async def test_no_token_means_no_authorization_header() -> None:
    client, upstream = make_client(lambda _: fhir({"resourceType": "Patient", "id": "p1"}))
    await client.fetch(BASE + "/", "Patient/p1", token=None)
    assert str(upstream.requests[0].url) == "http://127.0.0.1:8123/fhir/Patient/p1"
    assert "authorization" not in upstream.requests[0].headers


@pytest.mark.anyio
async def test_per_request_timeout_is_set() -> None:
    client, upstream = make_client(lambda _: fhir({"resourceType": "Patient"}), timeout=2.5)
    await client.fetch(BASE, "Patient/p1", token=None)
    assert upstream.requests[0].extensions["timeout"] == {
        "connect": 2.5,
        "read": 2.5,
        "write": 2.5,
        "pool": 2.5,
    }


@pytest.mark.anyio
@pytest.mark.parametrize("status", [404, 410])
async def test_read_not_found_or_gone_is_no_data(status: int) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    client, _ = make_client(lambda _: fhir(outcome, status))
    assert await client.fetch(BASE, "Patient/missing", token=TOKEN) is None


@pytest.mark.anyio
async def test_search_404_is_an_error() -> None:
    client, _ = make_client(lambda _: fhir({"resourceType": "OperationOutcome"}, 404))
    assert await fetch_error(client, "Observation?patient=p1") == "upstream status 404"


@pytest.mark.anyio
async def test_read_with_wrong_resource_type_is_an_error() -> None:
    client, _ = make_client(lambda _: fhir({"resourceType": "Observation", "id": "p1"}))
    assert await fetch_error(client, "Patient/p1") == "read returned an unexpected resourceType"


# --- upstream failures (R3-R8) ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 403, 429, 500, 502, 503])
async def test_unusable_statuses(status: int) -> None:
    client, upstream = make_client(
        lambda _: fhir({"resourceType": "Patient"}, status, **{"retry-after": "1"})
    )
    assert await fetch_error(client, "Patient/p1") == f"upstream status {status}"
    assert len(upstream.requests) == 1  # never retried


@pytest.mark.anyio
async def test_empty_success_is_an_error() -> None:
    client, _ = make_client(lambda _: httpx.Response(204))
    assert await fetch_error(client, "Patient/p1") == "upstream content type is not JSON"


@pytest.mark.anyio
@pytest.mark.parametrize("follow", [False, True])
async def test_redirect_is_a_failure_and_not_followed(follow: bool) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://127.0.0.1:9/fhir/Patient/p1"})

    client, upstream = make_client(handler, follow_redirects=follow, allow=("http://127.0.0.1",))
    assert await fetch_error(client, "Patient/p1") == "upstream redirect 302 not followed"
    assert [r.url.port for r in upstream.requests] == [8123]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "content_type", "reason"),
    [
        (b"<html>error</html>", "text/html", "upstream content type is not JSON"),
        (b'{"resourceType": "Patient"}', None, "upstream content type is not JSON"),
        (
            b'{"resourceType": "Patient", "id"',
            "application/fhir+json",
            "response is not valid JSON",
        ),
        (
            b'{"resourceType": "Patient", "x": NaN}',
            "application/json",
            "response is not valid JSON",
        ),
        (
            b'{"resourceType": "Patient", "x": Infinity}',
            "application/json",
            "response is not valid JSON",
        ),
        (
            b'{"resourceType": "Patient", "x": 1e999}',
            "application/json",
            "response is not valid JSON",
        ),
        (b"\xff\xfe{}", "application/json", "response is not valid JSON"),
        (b'[{"resourceType": "Patient"}]', "application/json", "response is not a JSON object"),
        (b'{"id": "p1"}', "application/json", "response has no resourceType"),
        (
            b'{"resourceType": "OperationOutcome", "issue": []}',
            "application/fhir+json; charset=utf-8",
            "upstream returned an OperationOutcome",
        ),
    ],
)
async def test_bad_bodies(content: bytes, content_type: str | None, reason: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    client, _ = make_client(lambda _: httpx.Response(200, content=content, headers=headers))
    assert await fetch_error(client, "Patient/p1") == reason


@pytest.mark.anyio
async def test_json_content_types_accepted() -> None:
    for content_type in ("application/json", "application/json+fhir", "application/FHIR+JSON"):
        client, _ = make_client(
            lambda _, ct=content_type: httpx.Response(
                200, content=b'{"resourceType": "Patient"}', headers={"content-type": ct}
            )
        )
        assert await client.fetch(BASE, "Patient/p1", token=None) == {"resourceType": "Patient"}


@pytest.mark.anyio
async def test_streamed_body_aborted_at_cap() -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(10_000):  # would be 640 MB
            produced += 1
            yield b" " * 65536

    client, _ = make_client(
        lambda _: httpx.Response(200, content=endless(), headers=FHIR_JSON), max_bytes=1_000_000
    )
    assert await fetch_error(client, "Patient/p1") == "upstream body over 1000000 bytes"
    assert produced <= 17  # stopped right after crossing 1 MB


@pytest.mark.anyio
async def test_declared_length_over_cap_refused_before_reading() -> None:
    client, _ = make_client(
        lambda _: httpx.Response(200, content=b"{}" * 600, headers=FHIR_JSON), max_bytes=1000
    )
    assert await fetch_error(client, "Patient/p1") == "upstream body over 1000 bytes"


@pytest.mark.anyio
async def test_body_exactly_at_cap_is_read() -> None:
    body = json.dumps({"resourceType": "Patient", "pad": ""}).encode()
    client, _ = make_client(
        lambda _: httpx.Response(200, content=body, headers=FHIR_JSON), max_bytes=len(body)
    )
    assert await client.fetch(BASE, "Patient/p1", token=None) is not None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("refused"), "upstream transport error (ConnectError)"),
        (httpx.ReadError("reset"), "upstream transport error (ReadError)"),
        (httpx.ReadTimeout("slow"), "upstream timeout"),
        (httpx.ConnectTimeout("slow"), "upstream timeout"),
    ],
)
async def test_transport_errors(exc: Exception, reason: str) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise exc

    client, upstream = make_client(handler)
    assert await fetch_error(client, "Patient/p1") == reason
    assert len(upstream.requests) == 1


# --- allowlist and token hygiene -----------------------------------------------------------


@pytest.mark.anyio
async def test_allowlist_refusal_sends_nothing() -> None:
    client, upstream = make_client(lambda _: fhir({"resourceType": "Patient"}), allow=())
    reason = await fetch_error(client, "Patient/p1")
    assert reason == "refused by allowlist: no allowlist entry matches"
    assert upstream.requests == []


@pytest.mark.anyio
async def test_relative_url_cannot_escape_base() -> None:
    client, upstream = make_client(lambda _: fhir({"resourceType": "Patient"}))
    assert await fetch_error(client, "../admin/Patient/1") == "relative URL leaves the FHIR base"
    assert upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("token", ["", "abc\r\nX-Evil: 1", "has space"])
async def test_malformed_token_is_never_sent(token: str) -> None:
    client, upstream = make_client(lambda _: fhir({"resourceType": "Patient"}))
    with pytest.raises(FhirFetchError) as info:
        await client.fetch(BASE, "Patient/p1", token=token)
    assert info.value.reason == "access token is not a valid bearer token"
    assert upstream.requests == []


# --- searches and paging (R6, R9) -----------------------------------------------------------


@pytest.mark.anyio
async def test_search_single_page() -> None:
    client, upstream = make_client(lambda _: fhir(searchset(obs(1), obs(2))))
    bundle = await client.fetch(BASE, "Observation?patient=p1&code=72514-3", token=TOKEN)
    assert bundle == {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": obs(1)}, {"resource": obs(2)}],
    }
    assert upstream.requests[0].url.params["code"] == "72514-3"


@pytest.mark.anyio
async def test_type_search_without_params_and_empty_searchset() -> None:
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    client, _ = make_client(lambda _: fhir(empty))
    bundle = await client.fetch(BASE, "Observation", token=None)
    assert bundle == {"resourceType": "Bundle", "type": "searchset", "entry": []}


@pytest.mark.anyio
async def test_search_follows_next_on_same_origin_with_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        nxt = f"{BASE}/Observation?patient=p1&page={page + 1}" if page < 3 else None
        if page == 2:  # a relative next link resolves against the page URL
            nxt = "Observation?patient=p1&page=3"
        return fhir(searchset(obs(page), next_url=nxt))

    client, upstream = make_client(handler)
    bundle = await client.fetch(BASE, "Observation?patient=p1", token=TOKEN)
    assert bundle is not None
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["1", "2", "3"]
    assert "link" not in bundle and "total" not in bundle
    assert len(upstream.requests) == 3
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in upstream.requests)


@pytest.mark.anyio
async def test_next_to_another_origin_is_not_followed() -> None:
    client, upstream = make_client(
        lambda _: fhir(searchset(obs(1), next_url="http://127.0.0.1:9999/fhir/Observation?p=2")),
        allow=("http://127.0.0.1",),  # the foreign origin is even allowlisted
    )
    assert await fetch_error(client, "Observation?patient=p1") == (
        "next link leaves the fhirServer origin"
    )
    assert [r.url.port for r in upstream.requests] == [8123]


@pytest.mark.anyio
async def test_next_on_same_origin_still_needs_the_allowlist() -> None:
    client, upstream = make_client(
        lambda _: fhir(searchset(obs(1), next_url="http://127.0.0.1:8123/other/Observation?p=2")),
        allow=("http://127.0.0.1:8123/fhir",),
    )
    assert await fetch_error(client, "Observation?patient=p1") == (
        "refused by allowlist: no allowlist entry matches"
    )
    assert len(upstream.requests) == 1


@pytest.mark.anyio
async def test_page_cap() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        nxt = f"{BASE}/Observation?page={page + 1}" if page < 10 else None  # finite if uncapped
        return fhir(searchset(obs(page), next_url=nxt))

    client, upstream = make_client(handler, max_pages=3)
    assert await fetch_error(client, "Observation?patient=p1") == "more than 3 pages"
    assert len(upstream.requests) == 3


@pytest.mark.anyio
async def test_exactly_max_pages_is_fine() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        nxt = f"{BASE}/Observation?page={page + 1}" if page < 3 else None
        return fhir(searchset(obs(page), next_url=nxt))

    client, _ = make_client(handler, max_pages=3)
    bundle = await client.fetch(BASE, "Observation?patient=p1", token=None)
    assert bundle is not None and len(bundle["entry"]) == 3


@pytest.mark.anyio
async def test_failing_next_page_fails_the_whole_fetch() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "page" in request.url.params:
            return fhir({"resourceType": "OperationOutcome"}, 500)
        return fhir(searchset(obs(1), next_url=f"{BASE}/Observation?page=2"))

    client, _ = make_client(handler)
    assert await fetch_error(client, "Observation?patient=p1") == "upstream status 500"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"resourceType": "Patient"}, "search did not return a searchset Bundle"),
        (
            {"resourceType": "Bundle", "type": "batch-response"},
            "search did not return a searchset Bundle",
        ),
        ({"resourceType": "Bundle", "type": "searchset", "entry": {}}, "malformed Bundle.entry"),
        ({"resourceType": "Bundle", "type": "searchset", "entry": [1]}, "malformed Bundle.entry"),
        ({"resourceType": "Bundle", "type": "searchset", "link": {}}, "malformed Bundle.link"),
        (
            {"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next"}]},
            "malformed next link",
        ),
        (
            searchset({"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}),
            "searchset holds an error OperationOutcome",
        ),
    ],
)
async def test_malformed_searchsets(body: dict[str, Any], reason: str) -> None:
    client, _ = make_client(lambda _: fhir(body))
    assert await fetch_error(client, "Observation?patient=p1") == reason


@pytest.mark.anyio
async def test_warning_outcome_entry_is_just_a_note() -> None:
    note = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning"}]}
    client, _ = make_client(lambda _: fhir(searchset(obs(1), note)))
    bundle = await client.fetch(BASE, "Observation?patient=p1", token=None)
    assert bundle is not None and len(bundle["entry"]) == 2


# --- the real network path ---------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    log: list[tuple[str, str | None]]  # (path, Authorization) per request, set per server
    redirect_to: str

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.log.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/fhir/Patient/"):
            self._send(200, {"resourceType": "Patient", "id": self.path.rsplit("/", 1)[1]})
        elif self.path.startswith("/fhir/Observation") and "page=2" in self.path:
            self._send(200, searchset(obs(2)))
        elif self.path.startswith("/fhir/Observation"):
            port = self.server.server_address[1]
            nxt = f"http://127.0.0.1:{port}/fhir/Observation?patient=p1&page=2"
            self._send(200, searchset(obs(1), next_url=nxt))
        elif self.path.startswith("/fhir/Redirect/"):
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, {"resourceType": "OperationOutcome"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def loopback_servers() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer]]:
    servers: list[ThreadingHTTPServer] = []
    for _ in range(2):
        handler = type("Handler", (_Recorder,), {"log": [], "redirect_to": ""})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    upstream, sink = servers
    upstream.RequestHandlerClass.redirect_to = (  # type: ignore[attr-defined]
        f"http://127.0.0.1:{sink.server_address[1]}/fhir/Patient/p1"
    )
    yield upstream, sink
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.anyio
async def test_real_loopback_server(
    loopback_servers: tuple[ThreadingHTTPServer, ThreadingHTTPServer],
) -> None:
    upstream, sink = loopback_servers
    base = f"http://127.0.0.1:{upstream.server_address[1]}/fhir"
    up_log = upstream.RequestHandlerClass.log  # type: ignore[attr-defined]
    sink_log = sink.RequestHandlerClass.log  # type: ignore[attr-defined]
    async with httpx.AsyncClient(follow_redirects=True, trust_env=False) as http:
        # Both servers are allowlisted: only the same-origin rule and no-redirects protect the sink.
        client = FhirClient(http, Allowlist(["http://127.0.0.1"]), timeout=5.0)
        patient = await client.fetch(base, "Patient/p7", token=TOKEN)
        assert patient == {"resourceType": "Patient", "id": "p7"}
        bundle = await client.fetch(base, "Observation?patient=p1", token=None)
        assert bundle is not None and [e["resource"]["id"] for e in bundle["entry"]] == ["1", "2"]
        assert await client.fetch(base, "Condition/missing", token=None) is None
        with pytest.raises(FhirFetchError, match="redirect 302"):
            await client.fetch(base, "Redirect/p1", token=TOKEN)
    assert up_log[0] == ("/fhir/Patient/p7", f"Bearer {TOKEN}")
    assert [auth for _, auth in up_log[1:3]] == [None, None]
    assert len(up_log) == 5
    assert sink_log == []  # X13/R8/H2: nothing, and no token, reached the redirect target
