"""The floor: a bare FastAPI app that only reads and parses the same bodies.

Served by uvicorn exactly like the service (``uvicorn bench.floor:app``), it answers
``POST /cds-services/{id}`` by parsing the JSON body (orjson, as the service does) and returning
``{"cards": []}``; ``GET /cds-services`` returns a constant discovery document. The ratio of the
service's latency to this one, measured in the same run, is the figure the goals use (RSP §6.1).
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
_EMPTY = b'{"cards":[]}'
_DISCOVERY = orjson.dumps({"services": [{"hook": "patient-view", "id": "floor"}]})


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@app.get("/cds-services")
async def discovery() -> Response:
    return Response(_DISCOVERY, media_type="application/json")


@app.post("/cds-services/{service_id}")
async def call(service_id: str, request: Request) -> Response:
    body = orjson.loads(await request.body())
    if not isinstance(body, dict) or not service_id:
        return Response(b"{}", status_code=400, media_type="application/json")
    return Response(_EMPTY, media_type="application/json")
