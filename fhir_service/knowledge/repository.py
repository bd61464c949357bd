"""The knowledge repository: artifacts by id and canonical, and FHIR search over them.

Search follows https://hl7.org/fhir/R4/search.html for the parameters the contract lists
(``_id``, ``url``, ``version``, ``name``, ``title``, ``status``, ``_count``, ``_offset``,
``_summary``, ``_elements``): string parameters match case-insensitively on a prefix (``:exact``
and ``:contains`` modifiers supported), token/uri parameters match exactly, a comma is OR.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.engine.sdc.questionnaire_populate import (
    CompiledQuestionnaire,
    compile_questionnaire,
)
from fhir_service.engine.terminology.membership import Terminology
from fhir_service.knowledge.loader import KNOWLEDGE_TYPES, Artifact

STRING_PARAMS = frozenset({"name", "title"})
EXACT_PARAMS = {"_id": "id", "url": "url", "version": "version", "status": "status"}


@dataclass
class KnowledgeBase:
    """Every loaded artifact, indexed; immutable after start-up."""

    artifacts: list[Artifact]
    terminology: Terminology
    compiler: FhirPathCompiler
    _by_id: dict[tuple[str, str], Artifact] = field(default_factory=dict)
    _by_url: dict[str, list[Artifact]] = field(default_factory=dict)
    #: each Questionnaire's SDC population expressions, compiled once (by Questionnaire id)
    questionnaires: dict[str, CompiledQuestionnaire] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for art in self.artifacts:
            self._by_id[(art.resource_type, art.id)] = art
            if art.url:
                self._by_url.setdefault(art.url, []).append(art)
            if art.resource_type == "Questionnaire":
                self.questionnaires[art.id] = compile_questionnaire(art.resource, self.compiler)

    @property
    def version(self) -> str:
        """A short fingerprint of the loaded knowledge (ids and versions)."""
        import hashlib

        text = "\n".join(sorted(f"{a.resource_type}/{a.id}|{a.version}" for a in self.artifacts))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def read(self, resource_type: str, rid: str) -> Artifact | None:
        return self._by_id.get((resource_type, rid))

    def by_canonical(self, canonical: str, resource_type: str | None = None) -> Artifact | None:
        """Resolve ``url`` or ``url|version`` (latest version when none is given)."""
        url, _, version = canonical.partition("|")
        candidates = [
            a
            for a in self._by_url.get(url, [])
            if resource_type is None or a.resource_type == resource_type
        ]
        if version:
            candidates = [a for a in candidates if a.version == version]
        if not candidates:
            return None
        return max(candidates, key=lambda a: version_key(a.version))

    def of_type(self, resource_type: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.resource_type == resource_type]

    def search(self, resource_type: str, params: Mapping[str, Sequence[str]]) -> list[Artifact]:
        """Artifacts of ``resource_type`` matching every parameter (AND), values OR'ed."""
        if resource_type not in KNOWLEDGE_TYPES:
            return []
        result = self.of_type(resource_type)
        for raw_name, values in params.items():
            name, _, modifier = raw_name.partition(":")
            for value in values:
                options = [v for v in value.split(",") if v]
                result = [a for a in result if _matches(a.resource, name, modifier, options)]
        return sorted(result, key=lambda a: a.id)


def version_key(version: str | None) -> tuple[tuple[int, int | str], ...]:
    """Order versions as semver-like dotted numbers (``0.10.0`` after ``0.9.0``); a
    non-numeric part sorts after the numbers at its position; no version sorts first."""
    if not version:
        return ()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))


def _matches(resource: dict[str, Any], name: str, modifier: str, options: list[str]) -> bool:
    if name in EXACT_PARAMS:
        actual = resource.get(EXACT_PARAMS[name])
        return isinstance(actual, str) and actual in options
    if name in STRING_PARAMS:
        actual = resource.get(name)
        if not isinstance(actual, str):
            return False
        if modifier == "exact":
            return actual in options
        low = actual.lower()
        if modifier == "contains":
            return any(o.lower() in low for o in options)
        return any(low.startswith(o.lower()) for o in options)
    return True
