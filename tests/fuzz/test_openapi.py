"""Schemathesis over every operation of the app's own OpenAPI, in process (RSP §6.2 R15).

Positive and negative generation, seeded and derandomised. Two checks only, on purpose: no
5xx, and every 4xx is an OperationOutcome (the OpenAPI declares FastAPI's default 422 while the
service answers 400 + OperationOutcome, so schema-conformance checks would test the generator,
not the service; see the hardening report).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis

from tests.faults.apps import build_app
from tests.fuzz.conftest import SEED, SENT, check_response, examples

with warnings.catch_warnings():
    # FastAPI warns about duplicate operationIds (GET+POST routes sharing a function).
    warnings.simplefilter("ignore", UserWarning)
    APP = build_app(Path(tempfile.mkdtemp(prefix="fuzz-openapi-")))
    SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
SCHEMA.config.generation.update(
    modes=["positive", "negative"], max_examples=examples(40), deterministic=True
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:  # noqa: ARG001
    """Custom check: never a 5xx, and every 4xx is an OperationOutcome."""
    check_response(
        response.status_code,
        response.content,
        response.headers.get("content-type", [""])[0]
        if isinstance(response.headers.get("content-type"), list)
        else str(response.headers.get("content-type", "")),
        f"{case.method} {case.formatted_path}",
    )
    return None


@SCHEMA.parametrize()
@hypothesis.seed(SEED)
@hypothesis.settings(
    max_examples=examples(40),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_operation(case: schemathesis.Case) -> None:
    SENT[f"openapi {case.operation.label}"] += 1
    case.call_and_validate(checks=[no_server_error])
