"""Outbound FHIR GETs for CDS Hooks prefetch fallback.

Implements CDS Hooks 2.0 "Prefetch" (https://cds-hooks.hl7.org/2.0/#prefetch-template: absent
keys fetched from ``fhirServer``, ``next`` followed only on the ``fhirServer`` origin) and "FHIR
Resource Access" (https://cds-hooks.hl7.org/2.0/#fhir-resource-access: the access token goes
only to ``fhirServer``, never logged), with the outbound rules of ``docs/deployment.md`` (no
redirects, allowlist before every request, capped bytes and pages). Every upstream fault is a
:class:`FhirFetchError`, which the caller turns into a 412.

The caller applies the overall deadline (``asyncio.timeout``); each request also carries an
httpx timeout.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import httpx
import orjson

from fhir_service.security.allowlist import Allowlist, OutboundRefused

_JSON_TYPES = ("application/json", "application/fhir+json", "application/json+fhir")
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


class FhirFetchError(Exception):
    """An upstream FHIR GET that did not yield usable data.

    Attributes:
        reason: Short, log-safe reason: never the token, the URL or response content.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.raw_host.lower().rstrip(b"."), url.port or default


def _parse_json(body: bytes) -> dict[str, Any]:
    """Parse a strict JSON object (no NaN/Infinity, no out-of-range numbers)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FhirFetchError("response is not valid JSON") from None
    if not isinstance(value, dict):
        raise FhirFetchError("response is not a JSON object")
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirFetchError("response has no resourceType")
    if resource_type == "OperationOutcome":
        raise FhirFetchError("upstream returned an OperationOutcome")
    return value


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media in _JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """A searchset's entries, refusing malformed ones and error OperationOutcomes."""
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "searchset":
        raise FhirFetchError("search did not return a searchset Bundle")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FhirFetchError("malformed Bundle.entry")
    for entry in entries:
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome":
            issues = resource.get("issue")
            if not isinstance(issues, list) or any(
                not isinstance(i, dict) or i.get("severity") in ("error", "fatal") for i in issues
            ):
                raise FhirFetchError("searchset holds an error OperationOutcome")
    return entries


def _next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link", [])
    if not isinstance(links, list):
        raise FhirFetchError("malformed Bundle.link")
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str) or not url:
                raise FhirFetchError("malformed next link")
            return url
    return None


class FhirClient:
    """Reads and searches a client's FHIR server (https://cds-hooks.hl7.org/2.0/#fhir-resource-access).

    Args:
        http: Shared async client. Redirects are disabled per request whatever its setting.
        allowlist: Checked before every request, ``next`` pages included.
        max_bytes: Cap on each response body (decoded bytes); reading stops beyond it.
        max_pages: Cap on searchset pages per fetch (first page included).
        timeout: Per-request httpx timeout in seconds (the caller also applies a deadline).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        allowlist: Allowlist,
        *,
        max_bytes: int = 5 * 1024 * 1024,
        max_pages: int = 5,
        timeout: float = 8.0,
    ) -> None:
        if max_bytes <= 0 or max_pages <= 0 or timeout <= 0:
            raise ValueError("max_bytes, max_pages and timeout must be positive")
        self._http = http
        self._allowlist = allowlist
        self._max_bytes = max_bytes
        self._max_pages = max_pages
        self._timeout = httpx.Timeout(timeout)

    async def fetch(self, base: str, relative: str, *, token: str | None) -> dict[str, Any] | None:
        """GET ``base/relative``: a read (``Type/id``) or a search (``Type?params``).

        Args:
            base: The ``fhirServer`` URL.
            relative: The prefetch template with its tokens filled (values URL-encoded).
            token: ``fhirAuthorization.access_token``; sent as a Bearer token only to the
                ``base`` origin. ``None``: no ``Authorization`` header at all.

        Returns:
            The resource for a read; ``None`` when a read answers 404 or 410; for a search,
            one searchset Bundle holding the entries of every page.

        Raises:
            FhirFetchError: Any other outcome (refused by the allowlist, non-2xx, redirect,
                non-JSON, over the byte cap, OperationOutcome, wrong resourceType, foreign or
                excess ``next`` pages, transport error or timeout).
        """
        headers = {"Accept": "application/fhir+json"}
        if token is not None:
            if not token or not all("!" <= c <= "~" for c in token):
                raise FhirFetchError("access token is not a valid bearer token")
            headers["Authorization"] = f"Bearer {token}"
        base_url = self._parse(base.rstrip("/"))
        url = self._parse(base.rstrip("/") + "/" + relative.lstrip("/"))
        base_path = base_url.path.rstrip("/")
        if _origin(url) != _origin(base_url) or not (
            url.path == base_path or url.path.startswith(base_path + "/")
        ):
            raise FhirFetchError("relative URL leaves the FHIR base")
        segments = relative.split("?", 1)[0].strip("/").split("/")
        if len(segments) >= 2:
            return await self._read(str(url), segments[0], headers)
        return await self._search(str(url), _origin(base_url), headers)

    async def _read(
        self, url: str, resource_type: str, headers: dict[str, str]
    ) -> dict[str, Any] | None:
        status, resource = await self._get(url, headers, missing_ok=True)
        if status in (404, 410):
            return None
        assert resource is not None
        if resource.get("resourceType") != resource_type:
            raise FhirFetchError("read returned an unexpected resourceType")
        return resource

    async def _search(
        self, url: str, origin: tuple[str, bytes, int | None], headers: dict[str, str]
    ) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        page_url: str | None = url
        pages = 0
        while page_url is not None:
            if pages == self._max_pages:
                raise FhirFetchError(f"more than {self._max_pages} pages")
            _, bundle = await self._get(page_url, headers, missing_ok=False)
            assert bundle is not None
            pages += 1
            entries.extend(_entries(bundle))
            link = _next_link(bundle)
            if link is None:
                break
            next_url = self._parse(page_url).join(link)
            if _origin(next_url) != origin:
                raise FhirFetchError("next link leaves the fhirServer origin")
            page_url = str(next_url)
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries}

    @staticmethod
    def _parse(url: str) -> httpx.URL:
        try:
            return httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise FhirFetchError("invalid URL") from None

    async def _get(
        self, url: str, headers: dict[str, str], *, missing_ok: bool
    ) -> tuple[int, dict[str, Any] | None]:
        """One allowlisted GET; returns (status, JSON object) or (404|410, None) when allowed."""
        try:
            # The allowlist may resolve DNS (blocking): keep it off the event loop.
            await anyio.to_thread.run_sync(self._allowlist.check, url, abandon_on_cancel=True)
        except OutboundRefused as exc:
            raise FhirFetchError(f"refused by allowlist: {exc.reason}") from None
        try:
            async with self._http.stream(
                "GET", url, headers=headers, follow_redirects=False, timeout=self._timeout
            ) as response:
                status = response.status_code
                if missing_ok and status in (404, 410):
                    return status, None
                if 300 <= status < 400:
                    raise FhirFetchError(f"upstream redirect {status} not followed")
                if not 200 <= status < 300:
                    raise FhirFetchError(f"upstream status {status}")
                if not _is_json(response.headers.get("content-type")):
                    raise FhirFetchError("upstream content type is not JSON")
                body = await self._read_capped(response)
        except httpx.TimeoutException:
            raise FhirFetchError("upstream timeout") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FhirFetchError(f"upstream transport error ({type(exc).__name__})") from None
        return status, _parse_json(body)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise FhirFetchError(f"upstream body over {self._max_bytes} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self._max_bytes:
                raise FhirFetchError(f"upstream body over {self._max_bytes} bytes")
        return bytes(body)
