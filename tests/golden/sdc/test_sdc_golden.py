"""Golden SDC cases (``$populate``, ``$extract``; harness: ``tests/golden/harness.py``),
with UUID-shaped counter ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.golden import harness

HERE = Path(__file__).resolve().parent


def _uuid_like(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.GoldenApp]:
    yield from harness.golden_app(tmp_path_factory, "golden", _uuid_like)


@pytest.mark.parametrize("case", harness.cases(HERE))
def test_golden(case: str, app: harness.GoldenApp, request: pytest.FixtureRequest) -> None:
    folder = HERE / case
    status, body = harness.run_case(harness.load_call(folder), app)
    harness.compare(folder, status, body, request)


def test_every_case_is_described() -> None:
    harness.check_described(HERE, 12)
