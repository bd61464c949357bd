"""``resolve()`` of a ``#id`` Reference looks in the contained resources of its own resource."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_service.engine.apply.evaluation import CallInput, Scope
from fhir_service.engine.data.dataset import build_data_set
from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.errors import IssueLog

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _draft(rid: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "contained": [
            {"resourceType": "Medication", "id": "med1", "code": {"coding": [{"code": code}]}}
        ],
        "medicationReference": {"reference": "#med1"},
    }


def test_same_contained_id_in_two_drafts_resolves_to_each_own() -> None:
    data = build_data_set([], [_draft("rx-cbp", "828348"), _draft("rx-ibu", "197806")])
    scope = Scope(CallInput(data, NOW), {}, {}, IssueLog())
    expr = FhirPathCompiler().compile(
        "%draftOrders.select(id + ':' + medication.ofType(Reference).resolve().code.coding.code)"
    )
    assert scope.evaluate(expr, "test") == ["rx-cbp:828348", "rx-ibu:197806"]


def test_a_copied_reference_falls_back_to_the_call_index() -> None:
    data = build_data_set([_draft("rx-cbp", "828348")])
    assert data.resolve_scoped({"reference": "#med1"}) == data.contained["#med1"]
    assert data.resolve_scoped({"reference": "#nope"}) is None
    assert data.resolve_scoped({}) is None
