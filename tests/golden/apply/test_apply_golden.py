"""Golden ``$apply`` cases (harness: ``tests/golden/harness.py``).

Every 200 answer must validate as R4 (R4B models), a ``PlanDefinition/$apply`` answer as a
CarePlan. Read the diff against the contract ("FHIR R4 REST") before committing a rewrite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fhir.resources.R4B.careplan import CarePlan

from fhir_service.fhir import validate_resource
from tests.golden import harness

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.GoldenApp]:
    yield from harness.golden_app(tmp_path_factory, "golden-apply", lambda n: f"apply-{n}")


@pytest.mark.parametrize("case", harness.cases(HERE))
def test_golden(case: str, app: harness.GoldenApp, request: pytest.FixtureRequest) -> None:
    folder = HERE / case
    status, body = harness.run_case(harness.load_call(folder), app)
    if status == 200:
        if body["resourceType"] == "CarePlan":
            CarePlan.model_validate(body)
        validate_resource(body)
    harness.compare(folder, status, body, request)


def test_every_case_is_described() -> None:
    harness.check_described(HERE, 6)
