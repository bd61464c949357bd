"""Completing a hook call's prefetch (CDS Hooks 2.0 https://cds-hooks.hl7.org/2.0/#prefetch-template).

Per key of the service's templates:

* sent as ``null`` or an empty searchset → no data, never re-fetched;
* sent as an OperationOutcome (or a Bundle whose only entry is an error/fatal OperationOutcome)
  → the client could not get it: never re-fetched, the key is unobtainable;
* sent as a Bundle with a ``next`` link → the remaining pages are fetched from ``fhirServer``
  (same origin only);
* absent → fetched from ``fhirServer`` at the template's URL with its tokens filled, with the
  bearer token of ``fhirAuthorization`` when given; a template whose tokens the context cannot
  fill is not needed.

Fetches run in parallel under one deadline. When any needed key cannot be obtained the call is
answered 412 naming the key(s) — never a partial 200.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from fhir_service.clients import FhirFetcher
from fhir_service.errors import Issue, PreconditionFailed
from fhir_service.knowledge.services import PrefetchTemplate

TOKEN_RE = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


Fetcher = FhirFetcher


class Unobtainable(Exception):
    """A key whose data cannot be had."""


def fill_template(query: str, context: Mapping[str, Any]) -> str | None:
    """Fill STU2 prefetch tokens from the hook context; None when a token cannot be filled."""
    user = context.get("userId")
    user_type, _, user_id = str(user).partition("/") if isinstance(user, str) else ("", "", "")
    failed = False

    def replace(match: re.Match[str]) -> str:
        nonlocal failed
        token = match.group(1)
        value: Any = None
        if token.startswith("context."):
            value = context.get(token[len("context.") :])
        elif token in USER_TOKENS and user_type == USER_TOKENS[token]:
            value = user_id
        if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
            failed = True
            return ""
        return quote(str(value), safe="")

    filled = TOKEN_RE.sub(replace, query)
    return None if failed else filled


def is_error_outcome(value: Any) -> bool:
    """True for an OperationOutcome, or a Bundle holding only an error/fatal OperationOutcome."""
    if not isinstance(value, Mapping):
        return False
    if value.get("resourceType") == "OperationOutcome":
        return True
    if value.get("resourceType") != "Bundle":
        return False
    entries = [e.get("resource") for e in value.get("entry") or () if isinstance(e, Mapping)]
    outcomes = [r for r in entries if isinstance(r, Mapping)]
    if not entries or len(outcomes) != len(entries):
        return False
    if any(r.get("resourceType") != "OperationOutcome" for r in outcomes):
        return False
    return any(
        i.get("severity") in ("error", "fatal")
        for r in outcomes
        for i in (r.get("issue") or ())
        if isinstance(i, Mapping)
    )


def next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else None
    return None


@dataclass(frozen=True)
class PrefetchRequest:
    context: Mapping[str, Any]
    prefetch: Mapping[str, Any]
    fhir_server: str | None
    token: str | None


async def _continue_pages(
    key: str, bundle: dict[str, Any], request: PrefetchRequest, fetcher: Fetcher | None
) -> dict[str, Any]:
    link = next_link(bundle)
    if link is None:
        return bundle
    server = request.fhir_server
    if fetcher is None or not server:
        raise Unobtainable(key)
    origin = urlsplit(server)
    target = urlsplit(link)
    if (target.scheme.lower(), target.netloc.lower()) != (
        origin.scheme.lower(),
        origin.netloc.lower(),
    ):
        raise Unobtainable(key)
    # Any path on the fhirServer origin: ``{base}/Condition?...&page=2`` as well as HAPI's
    # ``{base}?_getpages=...``. The last path segment plus the query is fetched as a search
    # relative to the rest, so the page is GET exactly as linked.
    head, _, last = target.path.rpartition("/")
    page_base = f"{target.scheme}://{target.netloc}{head}"
    relative = last + (f"?{target.query}" if target.query else "")
    rest = await fetcher.fetch(page_base, relative, token=request.token)
    entries = list(bundle.get("entry") or [])
    if isinstance(rest, Mapping):
        entries += list(rest.get("entry") or [])
    merged = {k: v for k, v in bundle.items() if k != "link"}
    merged["entry"] = entries
    return merged


async def _obtain(
    template: PrefetchTemplate, request: PrefetchRequest, fetcher: Fetcher | None
) -> Any:
    key = template.key
    if key in request.prefetch:
        value = request.prefetch[key]
        if value is None:
            return None
        if is_error_outcome(value):
            raise Unobtainable(key)
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            return await _continue_pages(key, value, request, fetcher)
        return value
    relative = fill_template(template.query, request.context)
    if relative is None:
        return None  # not needed: the context cannot fill the template
    if fetcher is None or not request.fhir_server:
        raise Unobtainable(key)
    return await fetcher.fetch(request.fhir_server, relative, token=request.token)


async def complete_prefetch(
    templates: list[PrefetchTemplate],
    request: PrefetchRequest,
    fetcher: Fetcher | None,
    deadline: float,
) -> dict[str, Any]:
    """Every needed key's data, or ``PreconditionFailed`` (412) naming the missing keys."""

    finished: set[str] = set()

    async def one(template: PrefetchTemplate) -> tuple[str, Any, bool]:
        try:
            result = template.key, await _obtain(template, request, fetcher), True
        except asyncio.CancelledError:
            raise
        except Exception:  # any upstream failure makes the key unobtainable
            result = template.key, None, False
        if result[2]:
            finished.add(template.key)
        return result

    try:
        async with asyncio.timeout(deadline):
            results = await asyncio.gather(*(one(t) for t in templates))
    except TimeoutError:
        pending = [t.key for t in templates if t.key not in finished]
        raise _failed(pending or [t.key for t in templates]) from None
    missing = [key for key, _, ok in results if not ok]
    if missing:
        raise _failed(missing)
    return {key: value for key, value, _ in results}


def _failed(keys: list[str]) -> PreconditionFailed:
    names = ", ".join(sorted(keys))
    return PreconditionFailed(
        issues=[
            Issue(
                "error",
                "processing",
                f"Unable to obtain prefetch data for key(s): {names}",
                tuple(f"prefetch.{k}" for k in sorted(keys)),
            )
        ]
    )
