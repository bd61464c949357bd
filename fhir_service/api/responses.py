"""Responses: FHIR JSON (``application/fhir+json``) and CDS Hooks JSON, both via orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from fhir_service.fhir import FHIR_MEDIA_TYPE


class FhirResponse(Response):
    media_type = f"{FHIR_MEDIA_TYPE}; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class JsonResponse(Response):
    """JSON; ``bytes`` content is taken as JSON serialised already (e.g. discovery)."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)
