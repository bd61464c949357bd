"""Runs last in the fuzz suite: the suite really generated at least 1,000 requests."""

from __future__ import annotations

import pytest

from tests.fuzz.conftest import SENT

MINIMUM = 1000


def test_at_least_1000_generated_requests() -> None:
    openapi = sum(v for k, v in SENT.items() if k.startswith("openapi "))
    bodies = sum(v for k, v in SENT.items() if k.startswith("bodies "))
    if not openapi or not bodies:
        pytest.skip("only part of the fuzz suite ran")
    assert openapi + bodies >= MINIMUM, dict(SENT)
    assert len([k for k in SENT if k.startswith("openapi ")]) >= 20  # every operation
