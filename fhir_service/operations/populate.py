"""SDC ``Questionnaire/$populate``
(https://hl7.org/fhir/uv/sdc/OperationDefinition-Questionnaire-populate.html), without HTTP.

Steps: check the size of the patient data (413); find the Questionnaire: the instance, a
``Questionnaire/id`` or canonical reference, or a canonical ``url|version`` (400 when none is
given, 404 when unknown); populate it in a worker thread with the Questionnaire compiled once at
load (``engine.sdc.questionnaire_populate``; resources about another patient are ignored and
reported). The answer is ``Parameters`` {``response``, ``issues`` when there are any}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from fhir_service.engine.data.patient_data import check_resource_count
from fhir_service.engine.sdc.questionnaire_populate import populate
from fhir_service.errors import InvalidRequest, NotFound, operation_outcome
from fhir_service.knowledge.loader import Artifact
from fhir_service.runtime import Runtime


@dataclass(frozen=True)
class PopulateRequest:
    """The ``$populate`` in-parameters this service uses.

    Attributes:
        subject: The Reference the response is about (``subject``).
        questionnaire_id: The instance's id (instance-level call), else None.
        canonical: ``url`` or ``url|version`` of the Questionnaire (type-level call).
        reference: A ``Questionnaire/id`` or canonical given as a Reference (type-level call).
        resources: The patient data (``data`` Bundles and ``context`` contents, flattened).
    """

    subject: dict[str, Any]
    questionnaire_id: str | None = None
    canonical: str | None = None
    reference: str | None = None
    resources: tuple[dict[str, Any], ...] = ()


def find_questionnaire(runtime: Runtime, request: PopulateRequest) -> Artifact:
    knowledge = runtime.knowledge
    if request.questionnaire_id is not None:
        found = knowledge.read("Questionnaire", request.questionnaire_id)
        if found is None:
            raise NotFound(f"Questionnaire/{request.questionnaire_id} is not known")
        return found
    if request.reference is not None:
        parts = request.reference.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "Questionnaire" and "://" not in request.reference:
            found = knowledge.read("Questionnaire", parts[-1])
        else:
            found = knowledge.by_canonical(request.reference, "Questionnaire")
        if found is None:
            raise NotFound(f"Questionnaire {request.reference} is not known")
        return found
    if not request.canonical:
        raise InvalidRequest(
            "type-level $populate needs the questionnaire: 'questionnaire', 'canonical' or ?url=",
            expression=["questionnaire"],
        )
    found = knowledge.by_canonical(request.canonical, "Questionnaire")
    if found is None:
        raise NotFound(f"Questionnaire {request.canonical} is not known")
    return found


def _populate(runtime: Runtime, artifact: Artifact, request: PopulateRequest) -> dict[str, Any]:
    compiled = runtime.knowledge.questionnaires[artifact.id]  # compiled once, at load
    response, issues = populate(
        artifact.resource, compiled, request.subject, request.resources, runtime.now()
    )
    parameters: list[dict[str, Any]] = [{"name": "response", "resource": response}]
    if issues:
        parameters.append({"name": "issues", "resource": operation_outcome(issues)})
    return {"resourceType": "Parameters", "parameter": parameters}


async def populate_questionnaire(runtime: Runtime, request: PopulateRequest) -> dict[str, Any]:
    """``$populate`` → ``Parameters`` {response, issues?}."""
    check_resource_count(len(request.resources), runtime.settings.max_resources, "data")
    artifact = find_questionnaire(runtime, request)
    return await anyio.to_thread.run_sync(
        _populate, runtime, artifact, request, limiter=runtime.limiter
    )
