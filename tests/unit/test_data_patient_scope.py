"""Resources about another patient never reach the rules (patient-safety)."""

from __future__ import annotations

import pytest

from fhir_service.engine.data.dataset import about_other_patient, build_data_set


@pytest.mark.parametrize(
    ("resource", "other"),
    [
        ({"resourceType": "Condition", "subject": {"reference": "Patient/p2"}}, True),
        ({"resourceType": "Condition", "subject": {"reference": "Patient/p1"}}, False),
        (
            {"resourceType": "Condition", "subject": {"reference": "https://ehr/fhir/Patient/p2"}},
            True,
        ),
        (
            {"resourceType": "Condition", "subject": {"reference": "https://ehr/fhir/Patient/p1"}},
            False,
        ),
        ({"resourceType": "Condition"}, False),
        ({"resourceType": "Observation", "subject": {"reference": "Group/g1"}}, False),
        ({"resourceType": "QuestionnaireResponse", "subject": {"reference": "Patient/x"}}, True),
        ({"resourceType": "Coverage", "beneficiary": {"reference": "Patient/p2"}}, True),
        ({"resourceType": "Task", "for": {"reference": "Patient/p2"}}, True),
        ({"resourceType": "Patient", "id": "p2"}, True),
        ({"resourceType": "Patient", "id": "p1"}, False),
        ({"resourceType": "MedicationRequest", "subject": {"reference": "#contained"}}, False),
    ],
)
def test_about_other_patient(resource: dict[str, object], other: bool) -> None:
    assert about_other_patient(resource, "p1") is other


def test_without_a_patient_nothing_is_left_out() -> None:
    assert about_other_patient({"resourceType": "Patient", "id": "p2"}, None) is False


def test_build_data_set_leaves_out_foreign_record_and_drafts() -> None:
    mine = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}
    theirs = {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p2"}}
    draft = {"resourceType": "MedicationRequest", "id": "d", "subject": {"reference": "Patient/p2"}}
    data = build_data_set([mine, theirs], [draft], patient_id="p1")
    assert data.by_type["Condition"] == [mine]
    assert data.drafts == []
    assert data.foreign == 2
