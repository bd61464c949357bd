"""The canonical namespace of this guideline's knowledge artifacts and extensions.

Every artifact's ``url`` is ``{CANONICAL_BASE}/{ResourceType}/{id}`` and every extension of the
guideline is ``{EXT_BASE}/{name}`` (docs/authoring.md, "Files and identity"; FHIR canonical URLs:
https://hl7.org/fhir/R4/references.html#canonical).
"""

from __future__ import annotations

CANONICAL_BASE = "http://example.org/fhir/muscle-spasm"
EXT_BASE = f"{CANONICAL_BASE}/StructureDefinition"
