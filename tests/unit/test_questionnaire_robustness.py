"""Robustness: odd but JSON-valid inputs never make $populate or $extract fail with a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_app

Q_URL = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"
LINK_IDS = [
    "pain-nrs",
    "pregnancy",
    "recent-injury",
    "injury-date",
    "symptoms",
    "sensory-detail",
    "x",
]
FHIR = {"Content-Type": "application/fhir+json"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 20),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["", "2026-11-30", "2026-11-30T10:00:00Z", "final", "none", "90460009"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["system", "code", "value", "reference", "coding", "start"]),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=6,
)
answers = st.dictionaries(
    st.sampled_from(["valueInteger", "valueCoding", "valueDate", "valueString", "valueBoolean"]),
    json_values,
    max_size=2,
)
items = st.recursive(
    st.fixed_dictionaries(
        {"linkId": st.sampled_from(LINK_IDS)}, optional={"answer": st.lists(answers, max_size=3)}
    ),
    lambda inner: st.fixed_dictionaries(
        {"linkId": st.sampled_from(LINK_IDS), "item": st.lists(inner, max_size=3)}
    ),
    max_leaves=5,
)
observations = st.fixed_dictionaries(
    {
        "resourceType": st.just("Observation"),
        "id": st.sampled_from(["a", "b", "c"]),
        "status": json_values,
        "code": json_values,
        "effectiveDateTime": json_values,
        "valueQuantity": json_values,
        "valueCodeableConcept": json_values,
        "subject": json_values,
    }
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path_factory.mktemp("robust"))) as test_client:
        yield test_client


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    qr_items=st.lists(items, max_size=4), status=st.sampled_from(["completed", "in-progress", 3])
)
def test_extract_never_fails_with_5xx(client: TestClient, qr_items: list[Any], status: Any) -> None:
    body = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": Q_URL,
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "item": qr_items,
    }
    response = client.post("/fhir/QuestionnaireResponse/$extract", json=body, headers=FHIR)
    assert response.status_code in (200, 400, 422), response.text
    assert response.json()["resourceType"] in ("Bundle", "OperationOutcome")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(resources=st.lists(observations, max_size=4), subject=json_values)
def test_populate_never_fails_with_5xx(
    client: TestClient, resources: list[Any], subject: Any
) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "subject",
                "valueReference": subject
                if isinstance(subject, dict)
                else {"reference": "Patient/p1"},
            },
            {
                "name": "data",
                "resource": {
                    "resourceType": "Bundle",
                    "entry": [{"resource": r} for r in resources],
                },
            },
        ],
    }
    response = client.post(
        "/fhir/Questionnaire/muscle-spasm-assessment/$populate", json=body, headers=FHIR
    )
    assert response.status_code in (200, 400), response.text
