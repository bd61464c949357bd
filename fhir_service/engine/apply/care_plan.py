"""The R4 ``$apply`` result: a CarePlan whose activity references a contained RequestGroup.

Spec: https://hl7.org/fhir/R4/plandefinition-operation-apply.html; contract "FHIR R4 REST"
(CarePlan, RequestGroup and every created request ``status: draft``, ``intent: proposal``;
``instantiatesCanonical`` = the PlanDefinition url|version; issues in a contained
OperationOutcome named by the ``cqf-messages`` extension).
"""

from __future__ import annotations

from typing import Any

from fhir_service.engine.apply.plan_definition import ApplyResult, canonical_of
from fhir_service.errors import operation_outcome

CQF_MESSAGES = "http://hl7.org/fhir/StructureDefinition/cqf-messages"


def care_plan(
    result: ApplyResult,
    care_plan_id: str,
    outcome_id: str,
    *,
    encounter: str | None = None,
    practitioner: str | None = None,
) -> dict[str, Any]:
    group = result.request_group
    contained: list[dict[str, Any]] = [group, *result.resources]
    plan: dict[str, Any] = {"resourceType": "CarePlan", "id": care_plan_id}
    if result.issues:
        contained.append(operation_outcome(result.issues.issues, outcome_id))
        plan["extension"] = [
            {"url": CQF_MESSAGES, "valueReference": {"reference": f"#{outcome_id}"}}
        ]
    plan["contained"] = contained
    plan["instantiatesCanonical"] = [canonical_of(result.plan)]
    plan["status"] = "draft"
    plan["intent"] = "proposal"
    plan["subject"] = group["subject"]
    if encounter:
        plan["encounter"] = {"reference": encounter}
    if practitioner:
        plan["author"] = {"reference": practitioner}
    plan["activity"] = [{"reference": {"reference": f"#{group['id']}"}}]
    return plan
