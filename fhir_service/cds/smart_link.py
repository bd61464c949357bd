"""CDS Hooks ``smart`` links that open the assessment app (docs/smart-launch.md).

A card gets a link of type ``smart`` (CDS Hooks 2.0 "Link": ``label``, ``url``, ``type``,
``appContext``) to the SMART app configured by ``FHIR_SERVICE_SMART_LAUNCH_URL`` when its rule
*collects or reads* a Questionnaire of this service. Both are read from the data, never from a
rule id:

* the rule declares the Questionnaire in ``relatedArtifact`` (``depends-on``) or in an action's
  ``documentation`` (``resource`` = the Questionnaire's canonical), or
* the rule's expressions read ``%QuestionnaireResponse`` (followed through every ``%variable``
  of the libraries, as discovery's prefetch is) and name the Questionnaire's canonical url.

``appContext`` is a JSON string ``{"questionnaire": <canonical>, "hookInstance": <id>}``; the
EHR hands it back to the app in the SMART token response (SMART App Launch 2.x, "appContext"
launch context; CDS Hooks 2.0 §Link). Without a launch URL no link is added.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fhir_service.engine.fhirpath.expressions import iter_expressions
from fhir_service.knowledge.loader import Artifact
from fhir_service.knowledge.repository import KnowledgeBase
from fhir_service.knowledge.services import VariableReads, local_variables

RESPONSE_TYPE = "QuestionnaireResponse"


def _declared(resource: dict[str, Any]) -> list[str]:
    found = [
        str(r.get("resource"))
        for r in resource.get("relatedArtifact") or ()
        if r.get("type") == "depends-on" and isinstance(r.get("resource"), str)
    ]

    def walk(actions: Iterable[dict[str, Any]]) -> None:
        for action in actions:
            for doc in action.get("documentation") or ():
                if isinstance(doc.get("resource"), str):
                    found.append(doc["resource"])
            walk(action.get("action") or ())

    walk(resource.get("action") or ())
    return found


def assessment_questionnaires(knowledge: KnowledgeBase) -> dict[str, tuple[str, str]]:
    """Rule url → (Questionnaire canonical, title) for every rule that collects or reads one."""
    questionnaires = {str(q.resource.get("url")): q for q in knowledge.of_type("Questionnaire")}
    reads = VariableReads(knowledge, knowledge.compiler)
    out: dict[str, tuple[str, str]] = {}
    for rule in knowledge.of_type("PlanDefinition"):
        found = _questionnaire_of(rule, knowledge, questionnaires, reads)
        if found is not None:
            resource = found.resource
            canonical = str(resource.get("url"))
            if resource.get("version"):
                canonical += f"|{resource['version']}"
            title = str(resource.get("title") or resource.get("name") or "assessment")
            out[str(rule.resource.get("url"))] = (canonical, title)
    return out


def _questionnaire_of(
    rule: Artifact,
    knowledge: KnowledgeBase,
    questionnaires: dict[str, Artifact],
    reads: VariableReads,
) -> Artifact | None:
    for canonical in _declared(rule.resource):
        found = knowledge.by_canonical(canonical, "Questionnaire")
        if found is not None:
            return found
    local = local_variables(rule.resource)
    names = reads.names(rule.resource, local)
    if RESPONSE_TYPE not in names:
        return None
    texts = [e["expression"] for _, e in iter_expressions(rule.resource, "x")]
    texts += [local.get(n) or reads.definitions.get(n) or "" for n in names]
    for url, artifact in sorted(questionnaires.items()):
        if any(f"'{url}" in text for text in texts):
            return artifact
    return None


def smart_link(
    launch_url: str, questionnaire: str, title: str, hook_instance: str
) -> dict[str, Any]:
    """The CDS Hooks Link that opens ``questionnaire`` in the SMART app."""
    context = {"questionnaire": questionnaire, "hookInstance": hook_instance}
    return {
        "label": f"Open the {title[:1].lower() + title[1:]} form",
        "url": launch_url,
        "type": "smart",
        "appContext": json.dumps(context, separators=(",", ":")),
    }


def add_smart_links(
    cards: list[dict[str, Any]],
    rule_url: str,
    assessments: dict[str, tuple[str, str]],
    launch_url: str | None,
    hook_instance: str,
) -> None:
    """Append the app's ``smart`` link to each of ``cards`` (one rule's cards), in place."""
    target = assessments.get(rule_url)
    if not launch_url or target is None:
        return
    for card in cards:
        link = smart_link(launch_url, target[0], target[1], hook_instance)
        card["links"] = [*card.get("links", ()), link]
