"""Value-set membership over the ValueSets shipped in ``definitions/`` (no terminology server).

fhirpathpy has no ``memberOf()``; the engine provides it (see ``fhirpath.py``) on top of this
index. Membership rules (documented in README "Writing rules"):

* a Coding is a member when ``(system, code)`` is in the ValueSet ``expansion.contains`` or in
  ``compose.include.concept``, and not in ``compose.exclude.concept``; ICD-10(-CM) codes match
  with the dot ignored (``M62.831`` = ``M62831``);
* a ``compose.include.filter`` ``concept is-a X`` on ICD-10-CM is a code-prefix match with the
  dot ignored (ICD-10-CM's hierarchy is its code prefix); on other systems ``is-a X`` admits X
  itself only, since descendants need a terminology server;
* what this index cannot honour (other filter operators, ``include.valueSet`` imports, exclude
  filters) is refused when the knowledge is loaded (``unsupported_compose``), never ignored;
* a CodeableConcept is a member when one of its codings is, or, failing that, when its ``text``
  or a coding ``display`` contains one of the ValueSet's ``ingredient-name`` extension values
  (case-insensitive) — the medication-name fallback of clinical-rules.md §1.1 (3).

Spec: https://hl7.org/fhir/R4/valueset.html, clinical-rules.md §1.1 "Medication matching".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

INGREDIENT_NAME_URL = "http://example.org/fhir/muscle-spasm/StructureDefinition/ingredient-name"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
PREFIX_HIERARCHY_SYSTEMS = frozenset({ICD10CM, "http://hl7.org/fhir/sid/icd-10"})

log = logging.getLogger(__name__)


def _norm_icd(code: str) -> str:
    return code.replace(".", "").upper()


@dataclass
class ValueSetIndex:
    """Membership data of one ValueSet."""

    url: str
    codes: set[tuple[str, str]] = field(default_factory=set)
    excluded: set[tuple[str, str]] = field(default_factory=set)
    prefixes: dict[str, list[str]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    # ingredient name of a code, when the concept carries an ingredient-name extension
    code_ingredient: dict[tuple[str, str], str] = field(default_factory=dict)
    name_patterns: list[tuple[str, re.Pattern[str]]] = field(default_factory=list)

    def finish(self) -> None:
        self.name_patterns = [
            (n, re.compile(r"\b" + re.escape(n.lower()) + r"\b")) for n in self.names
        ]

    def coding_member(self, system: str | None, code: str | None) -> bool:
        if not system or not code:
            return False
        key = _key(system, code)
        if key in self.excluded:
            return False
        if key in self.codes:
            return True
        for prefix in self.prefixes.get(system, ()):
            if key[1].startswith(prefix):
                return True
        return False

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


def _key(system: str, code: str) -> tuple[str, str]:
    """How a code is indexed: ICD-10(-CM) without its dot, upper case; others as written."""
    return (system, _norm_icd(code) if system in PREFIX_HIERARCHY_SYSTEMS else code)


def _add_concept(index: ValueSetIndex, system: str, concept: Mapping[str, Any]) -> None:
    code = concept.get("code")
    if isinstance(code, str):
        index.codes.add(_key(system, code))
        ingredient = _ingredient_of(concept)
        if ingredient:
            index.code_ingredient[_key(system, code)] = ingredient


def _add_include(index: ValueSetIndex, include: Mapping[str, Any]) -> None:
    system = include.get("system")
    if not isinstance(system, str):
        return
    for concept in include.get("concept", ()) or ():
        _add_concept(index, system, concept)
    for flt in include.get("filter", ()) or ():
        if flt.get("op") != "is-a" or not isinstance(flt.get("value"), str):
            continue  # refused at load time (unsupported_compose)
        if system in PREFIX_HIERARCHY_SYSTEMS:
            index.prefixes.setdefault(system, []).append(_norm_icd(flt["value"]))
        else:
            index.codes.add((system, flt["value"]))


def index_value_set(vs: Mapping[str, Any]) -> ValueSetIndex:
    """Build the membership index of one ValueSet resource (JSON)."""
    index = ValueSetIndex(url=str(vs.get("url", "")))
    for item in (vs.get("expansion") or {}).get("contains", ()) or ():
        if isinstance(item, Mapping) and isinstance(item.get("system"), str):
            _add_concept(index, item["system"], item)
    compose = vs.get("compose") or {}
    for include in compose.get("include", ()) or ():
        _add_include(index, include)
    for exclude in compose.get("exclude", ()) or ():
        system = exclude.get("system")
        for concept in exclude.get("concept", ()) or ():
            if isinstance(system, str) and isinstance(concept.get("code"), str):
                index.excluded.add(_key(system, concept["code"]))
    for ext in vs.get("extension", ()) or ():
        if ext.get("url") == INGREDIENT_NAME_URL and isinstance(ext.get("valueString"), str):
            index.names.append(ext["valueString"].lower())
    index.finish()
    return index


def unsupported_compose(vs: Mapping[str, Any]) -> list[str]:
    """The parts of ``vs.compose`` membership here cannot honour (refused at load time)."""
    problems: list[str] = []
    compose = vs.get("compose") or {}
    for part in ("include", "exclude"):
        for index, rule in enumerate(compose.get(part, ()) or ()):
            where = f"compose.{part}[{index}]"
            if rule.get("valueSet"):
                problems.append(f"{where}.valueSet (importing ValueSets) is not supported")
            if not rule.get("system") and (rule.get("concept") or rule.get("filter")):
                problems.append(f"{where} needs a system")
            for position, flt in enumerate(rule.get("filter", ()) or ()):
                if part == "exclude":
                    problems.append(f"{where}.filter is not supported (list excluded concepts)")
                elif flt.get("op") != "is-a" or flt.get("property") != "concept":
                    problems.append(
                        f"{where}.filter[{position}] {flt.get('property')!r} {flt.get('op')!r} "
                        "is not supported (only concept is-a)"
                    )
    return problems


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
