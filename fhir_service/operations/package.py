"""``PlanDefinition/$package`` (CRMI, https://hl7.org/fhir/uv/crmi/OperationDefinition-crmi-package.html),
without HTTP.

The answer is a ``transaction`` Bundle of PUTs: the artifact and everything it references, found
by canonical, so that it loads into any FHIR server as is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fhir_service.canonical import CANONICAL_BASE
from fhir_service.errors import NotFound
from fhir_service.knowledge.loader import Artifact
from fhir_service.runtime import Runtime

CANONICAL_RE = re.compile(re.escape(CANONICAL_BASE) + r"/([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


def package(runtime: Runtime, root: Artifact) -> dict[str, Any]:
    """The artifact and the closure of the artifacts it names by canonical."""
    seen: dict[tuple[str, str], Artifact] = {}
    pending = [root]
    while pending:
        art = pending.pop()
        key = (art.resource_type, art.id)
        if key in seen:
            continue
        seen[key] = art
        for rtype, rid in CANONICAL_RE.findall(json.dumps(art.resource)):
            found = runtime.knowledge.read(rtype, rid)
            if found is not None:
                pending.append(found)
    entries = [
        {
            "fullUrl": f"{runtime.fhir_base}/{a.resource_type}/{a.id}",
            "resource": a.resource,
            "request": {"method": "PUT", "url": f"{a.resource_type}/{a.id}"},
        }
        for a in sorted(
            seen.values(),
            key=lambda a: (a is not root, a.resource_type, a.id),
        )
    ]
    return {
        "resourceType": "Bundle",
        "id": runtime.new_id(),
        "type": "transaction",
        "entry": entries,
    }


def package_plan_definition(runtime: Runtime, definition_id: str) -> dict[str, Any]:
    """``PlanDefinition/{id}/$package`` (404 when the PlanDefinition is not known)."""
    artifact = runtime.knowledge.read("PlanDefinition", definition_id)
    if artifact is None:
        raise NotFound(f"PlanDefinition/{definition_id} is not known")
    return package(runtime, artifact)
