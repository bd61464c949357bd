"""Reading request bodies safely: size cap, strict JSON (no NaN/Infinity), bounded depth.

Over the size cap → 413, not JSON / too deep → 400, a media type the endpoint does not take
→ 415; each as an OperationOutcome (README "Settings": ``FHIR_SERVICE_MAX_BODY_BYTES``,
``FHIR_SERVICE_MAX_JSON_DEPTH``).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from fhir_service.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

JSON_MEDIA_TYPES = ("application/json", "application/fhir+json")


def check_media_type(request: Request, accepted: tuple[str, ...] = JSON_MEDIA_TYPES) -> None:
    raw = request.headers.get("content-type", "")
    media = raw.split(";", 1)[0].strip().lower()
    if media not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type must be one of {', '.join(accepted)} (got {media or 'none'!r})"
        )


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of ``value`` (a scalar is 0, ``{}`` or ``[]`` is 1), computed level by level
    over objects and arrays only (scalars, most of a FHIR body, are never pushed); stops once
    ``limit`` is exceeded."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        deeper: list[Any] = []
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, dict | list):
                    deeper.append(child)
        level = deeper
    return depth


# What the byte scan of :func:`body_depth` keeps: quotes and the container brackets.
_NOT_QUOTE_OR_BRACKET = bytes(b for b in range(256) if b not in b'"[]{}')
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")


def body_depth(raw: bytes, value: Any, limit: int) -> int:
    """:func:`json_depth` of ``value``, the JSON document ``raw`` parsed, counted on the bytes
    by C-level scans, a few times cheaper than walking the parsed tree.

    Escapes go first (``\\\\`` then ``\\"``, left to right as JSON reads them), so every quote
    left opens or closes a string; every byte but quotes and brackets goes; what lies between
    a quote and the next is string content (FHIR text often holds brackets: ``[Score]``,
    ``{score}``) and goes. Only the containers' brackets are left, and each pass that removes
    every innermost ``[]`` pair is one level.
    """
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = unescaped.translate(None, _NOT_QUOTE_OR_BRACKET).split(b'"')[::2]
    brackets = b"".join(outside_strings).translate(_BRACES_AS_BRACKETS)
    depth = 0
    while brackets:
        depth += 1
        if depth > limit:
            return depth
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):  # unbalanced: not the JSON that was parsed
            return json_depth(value, limit)
        brackets = inner
    return depth


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, max_depth: int) -> Any:
    if not raw.strip():
        raise InvalidRequest("request body is empty; a JSON document is required")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if body_depth(raw, value, max_depth) > max_depth:
        raise InvalidRequest(f"JSON nesting deeper than {max_depth} levels")
    return value


async def read_json(
    request: Request,
    *,
    max_bytes: int,
    max_depth: int,
    media_types: tuple[str, ...] = JSON_MEDIA_TYPES,
) -> Any:
    """Check the media type, read at most ``max_bytes`` and parse strict JSON."""
    check_media_type(request, media_types)
    return parse_json(await read_body(request, max_bytes), max_depth)
