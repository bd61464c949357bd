"""SDC ``QuestionnaireResponse/$extract``
(https://hl7.org/fhir/uv/sdc/OperationDefinition-QuestionnaireResponse-extract.html), without HTTP.

Steps: find the Questionnaire the response answers (any version of its url counts; one this
service does not hold → 422) and check that the response fits it; in a worker thread, validate
the answers (SDC validation; errors → 422) and extract (``engine.sdc.questionnaire_extract``;
resources that cannot be extracted validly → 422). The answer is the bare transaction Bundle
(not executed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from fhir_service.engine.sdc.questionnaire_extract import extract_with_issues
from fhir_service.engine.sdc.questionnaire_response import require_questionnaire, validate_response
from fhir_service.errors import BusinessRuleError, Issue
from fhir_service.knowledge.loader import Artifact
from fhir_service.runtime import Runtime


@dataclass(frozen=True)
class ExtractRequest:
    """The ``$extract`` input: a QuestionnaireResponse, structurally valid R4."""

    response: dict[str, Any]


def answered_questionnaire(runtime: Runtime, qr: dict[str, Any]) -> Artifact:
    canonical = qr.get("questionnaire")
    found = None
    if isinstance(canonical, str) and canonical:
        knowledge = runtime.knowledge
        found = knowledge.by_canonical(canonical, "Questionnaire") or knowledge.by_canonical(
            canonical.partition("|")[0], "Questionnaire"
        )
    if found is None:
        raise BusinessRuleError(
            f"QuestionnaireResponse.questionnaire {canonical!r} is not a questionnaire of this "
            "service",
            expression=("QuestionnaireResponse.questionnaire",),
        )
    require_questionnaire(qr, found.resource)
    return found


def _extract(runtime: Runtime, artifact: Artifact, qr: dict[str, Any]) -> dict[str, Any]:
    problems = [i for i in validate_response(artifact.resource, qr) if i.severity == "error"]
    if problems:
        raise BusinessRuleError(issues=problems)
    bundle, issues = extract_with_issues(
        artifact.resource, qr, runtime.now(), runtime.new_id, runtime.knowledge.compiler
    )
    errors: list[Issue] = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise BusinessRuleError(issues=errors)
    return bundle


async def extract_questionnaire_response(
    runtime: Runtime, request: ExtractRequest
) -> dict[str, Any]:
    """``$extract`` → the transaction Bundle of POST entries."""
    artifact = answered_questionnaire(runtime, request.response)
    return await anyio.to_thread.run_sync(
        _extract, runtime, artifact, request.response, limiter=runtime.limiter
    )
