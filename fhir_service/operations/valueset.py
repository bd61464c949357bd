"""``ValueSet/$expand`` and ``ValueSet/$validate-code`` over the loaded knowledge (no HTTP here).

The router (``api/terminology.py``) parses a request into ``ExpandInput`` or
``ValidateCodeInput``, calls ``expand``/``validate_code`` and serialises the result; failures
are ``FhirError``s (404 unknown value set, 400 bad input).

* ``$expand`` answers the ValueSet with the expansion stored in ``definitions/`` (computed from
  its compose at authoring time: an ICD-10-CM ``is-a`` include lists every descendant), paged
  with ``count``/``offset`` (``expansion.total`` is the full size, ``expansion.offset`` the
  first entry returned), optionally narrowed by ``filter`` (case-insensitive text in the code
  or display). ``compose`` is returned only with ``includeDefinition=true``.
* ``$validate-code`` says whether a code (``system`` + ``code``, a ``coding`` or any coding of
  a ``codeableConcept``) is in the value set, with the same matching as the rules
  (ICD-10-CM with or without the dot, any case), and when it is, the code and display as the
  value set lists them. A ``display`` that differs from the listed one keeps ``result`` true
  (membership is by code) and adds a ``message``.

Spec: https://hl7.org/fhir/R4/valueset-operation-expand.html,
https://hl7.org/fhir/R4/valueset-operation-validate-code.html, contract "Additions of 2026-12".
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_service.engine.terminology.membership import ValueSetIndex
from fhir_service.errors import InvalidRequest, NotFound
from fhir_service.knowledge.loader import Artifact
from fhir_service.knowledge.repository import KnowledgeBase


@dataclass(frozen=True)
class ValueSetRef:
    """Which ValueSet: by id (instance level) or by canonical ``url`` (type level)."""

    id: str | None = None
    url: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class ExpandInput:
    value_set: ValueSetRef
    count: int | None = None
    offset: int = 0
    filter: str | None = None
    include_definition: bool = False


@dataclass(frozen=True)
class CodingInput:
    system: str
    code: str
    display: str | None = None


@dataclass(frozen=True)
class ValidateCodeInput:
    value_set: ValueSetRef
    #: the codings to check: one for ``system``/``code`` or ``coding``, each of a CodeableConcept
    codings: tuple[CodingInput, ...]


def resolve(knowledge: KnowledgeBase, ref: ValueSetRef) -> tuple[Artifact, ValueSetIndex]:
    """The ValueSet artifact and its membership index (404 when there is none)."""
    if ref.id is not None:
        artifact = knowledge.read("ValueSet", ref.id)
        if artifact is None or (ref.version and artifact.version != ref.version):
            raise NotFound(f"ValueSet/{ref.id} is not known" + _version_text(ref))
    elif ref.url:
        canonical = ref.url + (f"|{ref.version}" if ref.version else "")
        artifact = knowledge.by_canonical(canonical, "ValueSet")
        if artifact is None:
            raise NotFound(f"no ValueSet with url {canonical}")
    else:
        raise InvalidRequest(
            "the ValueSet is named by 'url' (or by id in the path)", expression=["url"]
        )
    index = knowledge.terminology.get(f"{artifact.url}|{artifact.version}") or (
        knowledge.terminology.get(str(artifact.url))
    )
    if index is None:  # pragma: no cover - every loaded ValueSet is indexed
        raise NotFound(f"ValueSet/{artifact.id} has no membership index")
    return artifact, index


def _version_text(ref: ValueSetRef) -> str:
    return f" in version {ref.version}" if ref.version else ""


def _matches(entry: Mapping[str, Any], text: str) -> bool:
    return (
        text in str(entry.get("code", "")).lower() or text in str(entry.get("display", "")).lower()
    )


def expand(knowledge: KnowledgeBase, inputs: ExpandInput, now: str) -> dict[str, Any]:
    """The ValueSet with ``expansion.contains`` (one page of it); ``now`` stamps an expansion
    that was not stored (a ValueSet whose compose only lists concepts)."""
    artifact, index = resolve(knowledge, inputs.value_set)
    resource = artifact.resource
    stored: Mapping[str, Any] = resource.get("expansion") or {}
    members = index.contains
    if inputs.filter:
        text = inputs.filter.lower()
        members = [entry for entry in members if _matches(entry, text)]
    end = None if inputs.count is None else inputs.offset + inputs.count
    page = members[inputs.offset : end]
    parameter = [*stored.get("parameter", ()), {"name": "offset", "valueInteger": inputs.offset}]
    if inputs.count is not None:
        parameter.append({"name": "count", "valueInteger": inputs.count})
    if inputs.filter:
        parameter.append({"name": "filter", "valueString": inputs.filter})
    expansion: dict[str, Any] = {
        "identifier": stored.get("identifier")
        or f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{artifact.url}|{artifact.version}')}",
        "timestamp": stored.get("timestamp") or now,
        "total": len(members),
        "offset": inputs.offset,
        "parameter": parameter,
    }
    if page:
        expansion["contains"] = page
    out = {k: v for k, v in resource.items() if k not in ("expansion", "compose", "text")}
    if inputs.include_definition and "compose" in resource:
        out["compose"] = resource["compose"]
    out["expansion"] = expansion
    return out


def validate_code(knowledge: KnowledgeBase, inputs: ValidateCodeInput) -> dict[str, Any]:
    """A ``Parameters`` with ``result`` and, for a member, its ``code``/``system``/``display``."""
    artifact, index = resolve(knowledge, inputs.value_set)
    canonical = f"{artifact.url}|{artifact.version}" if artifact.version else str(artifact.url)
    for coding in inputs.codings:
        if not index.coding_member(coding.system, coding.code):
            continue
        listed = index.entry(coding.system, coding.code)
        out: list[dict[str, Any]] = [
            {"name": "result", "valueBoolean": True},
            {"name": "code", "valueCode": str(listed.get("code", coding.code))},
            {"name": "system", "valueUri": coding.system},
        ]
        display = listed.get("display")
        if isinstance(display, str):
            out.append({"name": "display", "valueString": display})
            if coding.display and " ".join(coding.display.split()).lower() != display.lower():
                out.append(
                    {
                        "name": "message",
                        "valueString": f"The display {coding.display!r} is not the one this "
                        f"value set gives for {coding.system}|{listed.get('code')}: {display!r}",
                    }
                )
        return {"resourceType": "Parameters", "parameter": out}
    codes = ", ".join(f"{c.system}|{c.code}" for c in inputs.codings)
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "result", "valueBoolean": False},
            {"name": "message", "valueString": f"{codes} is not in the value set {canonical}"},
        ],
    }
