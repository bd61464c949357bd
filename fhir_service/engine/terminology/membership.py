"""Value-set membership over the ValueSets shipped in ``definitions/`` (no terminology server).

fhirpathpy has no ``memberOf()``; the engine provides it (see ``fhirpath.py``) on top of this
index. Membership rules (docs/terminology.md "Expansions", README "Writing rules"):

* a Coding is a member when ``(system, code)`` is in the ValueSet's stored ``expansion.contains``
  (computed at authoring time from the compose and, for ICD-10-CM filters, the ICD-10-CM
  tabular list) or, for a ValueSet without a stored expansion, in its ``compose.include.concept``
  minus ``compose.exclude.concept``; exclusions are applied when the index is built, so
  membership is one set lookup per coding;
* ICD-10(-CM) codes match with or without their dot and in any case (``I48.91`` = ``I4891`` =
  ``i48.91``, clinical-rules R2.1);
* what the service cannot honour (``valueSet`` imports, filters other than ICD-10-CM
  ``concept is-a``/``descendent-of``, a filter without a stored expansion, an expansion that
  disagrees with its compose) is refused when the knowledge is loaded (``valueset_compose``);
* a CodeableConcept is a member when one of its codings is, or, failing that, when its ``text``
  or a coding ``display`` contains one of the ValueSet's ``ingredient-name`` extension values
  (case-insensitive) — the medication-name fallback of docs/terminology.md.

Spec: https://hl7.org/fhir/R4/valueset.html; docs/guideline.md and docs/terminology.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_service.canonical import EXT_BASE
from fhir_service.engine.terminology.valueset_compose import (
    DOTLESS_SYSTEMS,
    ICD10CM,
    code_key,
    expansion_problems,
)
from fhir_service.engine.terminology.valueset_compose import unsupported_compose as _unsupported

INGREDIENT_NAME_URL = f"{EXT_BASE}/ingredient-name"
PREFIX_HIERARCHY_SYSTEMS = DOTLESS_SYSTEMS  # kept for importers; ICD-10 codes match dotless

__all__ = [
    "ICD10CM",
    "INGREDIENT_NAME_URL",
    "Terminology",
    "ValueSetIndex",
    "index_value_set",
    "unsupported_compose",
]

log = logging.getLogger(__name__)


@dataclass
class ValueSetIndex:
    """Membership data of one ValueSet."""

    url: str
    codes: set[tuple[str, str]] = field(default_factory=set)
    excluded: set[tuple[str, str]] = field(default_factory=set)
    names: list[str] = field(default_factory=list)
    # ingredient name of a code, when the concept carries an ingredient-name extension
    code_ingredient: dict[tuple[str, str], str] = field(default_factory=dict)
    name_patterns: list[tuple[str, re.Pattern[str]]] = field(default_factory=list)
    #: the members in expansion order, ``{system, code, display?, extension?}`` (shared with
    #: the loaded ValueSet's ``expansion.contains`` when it has one: not copied)
    contains: list[Mapping[str, Any]] = field(default_factory=list)
    _entries: dict[tuple[str, str], Mapping[str, Any]] | None = field(default=None, repr=False)

    def finish(self) -> None:
        self.codes -= self.excluded
        self.name_patterns = [
            (n, re.compile(r"\b" + re.escape(n.lower()) + r"\b")) for n in self.names
        ]

    def coding_member(self, system: str | None, code: str | None) -> bool:
        if not system or not code:
            return False
        return _key(system, code) in self.codes

    def entry(self, system: str, code: str) -> Mapping[str, Any]:
        """The expansion entry of a member (empty when ``(system, code)`` is no member)."""
        if self._entries is None:  # built on first use: $validate-code, not the hot path
            self._entries = {_key(str(c["system"]), str(c["code"])): c for c in self.contains}
        key = _key(system, code)
        return self._entries.get(key, {}) if key in self.codes else {}

    def display(self, system: str, code: str) -> str | None:
        """The display of a member (None when it is no member or has no display)."""
        display = self.entry(system, code).get("display")
        return display if isinstance(display, str) else None

    def match_name(self, text: str) -> str | None:
        low = text.lower()
        for name, pattern in self.name_patterns:
            if pattern.search(low):
                return name
        return None


def _ingredient_of(concept: Mapping[str, Any]) -> str | None:
    for ext in concept.get("extension", ()) or ():
        if isinstance(ext, Mapping) and ext.get("url") == INGREDIENT_NAME_URL:
            value = ext.get("valueString")
            return str(value).lower() if value else None
    return None


#: How a code is indexed: ICD-10(-CM) without its dot, upper case; others as written.
_key = code_key


def _add_concept(index: ValueSetIndex, system: str, concept: Mapping[str, Any]) -> None:
    code = concept.get("code")
    if isinstance(code, str):
        key = _key(system, code)
        index.codes.add(key)
        ingredient = _ingredient_of(concept)
        if ingredient:
            index.code_ingredient[key] = ingredient


def index_value_set(vs: Mapping[str, Any]) -> ValueSetIndex:
    """Build the membership index of one ValueSet resource (JSON).

    The stored expansion is the membership when there is one; otherwise the compose's listed
    concepts are (a compose with a filter always has a stored expansion: ``unsupported_compose``).
    """
    index = ValueSetIndex(url=str(vs.get("url", "")))
    compose = vs.get("compose") or {}
    expansion = vs.get("expansion")
    if expansion is not None:
        for item in expansion.get("contains", ()) or ():
            if isinstance(item, Mapping) and isinstance(item.get("system"), str):
                _add_concept(index, item["system"], item)
                index.contains.append(item)
    else:
        for include in compose.get("include", ()) or ():
            system = include.get("system")
            if not isinstance(system, str):
                continue
            for concept in include.get("concept", ()) or ():
                if isinstance(concept, Mapping) and isinstance(concept.get("code"), str):
                    _add_concept(index, system, concept)
                    index.contains.append({"system": system, **concept})
    for exclude in compose.get("exclude", ()) or ():
        system = exclude.get("system")
        for concept in exclude.get("concept", ()) or ():
            if isinstance(system, str) and isinstance(concept.get("code"), str):
                index.excluded.add(_key(system, concept["code"]))
    if index.excluded:
        index.contains = [
            c
            for c in index.contains
            if _key(str(c["system"]), str(c["code"])) not in index.excluded
        ]
    for ext in vs.get("extension", ()) or ():
        if ext.get("url") == INGREDIENT_NAME_URL and isinstance(ext.get("valueString"), str):
            index.names.append(ext["valueString"].lower())
    index.finish()
    return index


def unsupported_compose(vs: Mapping[str, Any]) -> list[str]:
    """What the service cannot honour in ``vs``: its compose, or a stored expansion that
    disagrees with it (refused at load time; ``valueset_compose``)."""
    problems = _unsupported(vs)
    return problems or expansion_problems(vs)


class Terminology:
    """All ValueSets of the knowledge base, by canonical url (with or without ``|version``)."""

    def __init__(self, value_sets: Iterable[Mapping[str, Any]] = ()) -> None:
        self._by_url: dict[str, ValueSetIndex] = {}
        for vs in value_sets:
            index = index_value_set(vs)
            self._by_url[index.url] = index
            if vs.get("version"):
                self._by_url[f"{index.url}|{vs['version']}"] = index

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and url in self._by_url

    def get(self, url: str) -> ValueSetIndex | None:
        return self._by_url.get(url)

    def _codings(self, value: Any) -> tuple[list[Mapping[str, Any]], list[str]]:
        """Split a Coding/CodeableConcept value into its codings and its free texts."""
        if not isinstance(value, Mapping):
            return [], []
        if "coding" in value or "text" in value:
            codings = [c for c in value.get("coding", ()) or () if isinstance(c, Mapping)]
            texts = [value["text"]] if isinstance(value.get("text"), str) else []
            texts += [c["display"] for c in codings if isinstance(c.get("display"), str)]
            return codings, texts
        if "code" in value:
            return [value], []
        return [], []

    def ingredients(self, value: Any, url: str) -> list[str]:
        """Ingredient names by which ``value`` belongs to ``url`` (empty when not a member).

        A coded member whose concept names no ingredient yields the concept code itself.
        """
        index = self._by_url.get(url)
        if index is None:
            raise KeyError(f"unknown ValueSet {url}")
        codings, texts = self._codings(value)
        found: list[str] = []
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            if index.coding_member(system, code):
                ingredient = index.code_ingredient.get(_key(str(system), str(code)))
                found.append(ingredient or str(code))
        if found:
            return found
        for text in texts:
            name = index.match_name(text)
            if name:
                log.info("medication matched by name fallback", extra={"valueset": url})
                return [name]
        return []

    def member(self, value: Any, url: str) -> bool:
        return bool(self.ingredients(value, url))
