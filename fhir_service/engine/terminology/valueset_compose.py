"""What a ValueSet ``compose`` may say here, and whether its stored ``expansion`` agrees with it.

The service holds no code-system hierarchy at run time: every ValueSet whose compose has a
filter carries an ``expansion`` computed at authoring time from the ICD-10-CM tabular list
(``python -m fhir_service.tools.expand_valuesets``, docs/terminology.md "Expansions"). This
module states the compose forms both sides honour and checks, cheaply and at start-up, that a
stored expansion is one this compose can have produced:

* ``include`` with ``system`` and a ``concept`` list (any system): those codes;
* ``include`` with ``system`` ICD-10-CM and ``filter`` ``concept`` ``is-a`` (the code and its
  descendants) or ``descendent-of`` (its descendants only), the value a code or category of the
  tabular list; several filters in one include are AND-ed (FHIR R4 ValueSet.compose.include);
* ``exclude`` with a ``concept`` list (any system) or the same ICD-10-CM filters.

ICD-10-CM's hierarchy below a category is its code prefix (``S22.0`` → ``S22.00`` →
``S22.000`` → ``S22.000A``), so "admitted by an is-a filter" can be checked without the
hierarchy as "the dotless code starts with the dotless filter value"; whether *every*
descendant is present needs the hierarchy and is the drift test's job
(``tests/unit/test_valueset_expansions.py``).

Spec: https://hl7.org/fhir/R4/valueset.html (compose, expansion), https://hl7.org/fhir/R4/icd.html.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from fhir_service.canonical import EXT_BASE

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
#: ICD-10(-CM) codes match without their dot and in any case (clinical-rules R2.1).
DOTLESS_SYSTEMS = frozenset({ICD10CM, "http://hl7.org/fhir/sid/icd-10"})
#: Systems whose filters this service can expand at authoring time (a hierarchy is shipped).
FILTER_SYSTEMS = frozenset({ICD10CM})
FILTER_OPS = frozenset({"is-a", "descendent-of"})
#: An ICD-10-CM code or category as printed in the tabular list (blocks and chapters are not).
ICD10CM_CODE_RE = re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")
#: The SNOMED CT include extension naming the parent whose descendants the concept list holds.
ENUMERATED_PARENT_URL = f"{EXT_BASE}/enumerated-parent"
#: Keys an expansion entry may carry here (ValueSet.expansion.contains, without nesting).
CONTAINS_KEYS = frozenset({"system", "code", "display", "extension", "version", "inactive"})


def code_key(system: str, code: str) -> tuple[str, str]:
    """How a code is compared: ICD-10(-CM) without its dot and upper case; others as written."""
    return (system, code.replace(".", "").upper() if system in DOTLESS_SYSTEMS else code)


def _rules(compose: Mapping[str, Any], part: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for index, rule in enumerate(compose.get(part) or ()):
        if isinstance(rule, Mapping):
            yield f"compose.{part}[{index}]", rule


def unsupported_compose(vs: Mapping[str, Any]) -> list[str]:
    """The parts of ``vs.compose`` this service cannot honour (refused at load time)."""
    problems: list[str] = []
    compose = vs.get("compose") or {}
    for part in ("include", "exclude"):
        for where, rule in _rules(compose, part):
            system = rule.get("system")
            if rule.get("valueSet"):
                problems.append(f"{where}.valueSet (importing ValueSets) is not supported")
            if not isinstance(system, str):
                problems.append(f"{where} needs a system")
                continue
            if not rule.get("concept") and not rule.get("filter"):
                problems.append(f"{where}: a whole code system is not supported (list concepts)")
            if rule.get("concept") and rule.get("filter"):
                problems.append(f"{where} has both concept and filter (FHIR vsd-3)")
            for position, flt in enumerate(rule.get("filter") or ()):
                problems += _filter_problems(system, flt, f"{where}.filter[{position}]")
    return problems


def _filter_problems(system: str, flt: Mapping[str, Any], where: str) -> list[str]:
    if system not in FILTER_SYSTEMS:
        return [f"{where}: filters on {system} are not supported (list its concepts)"]
    if flt.get("property") != "concept" or flt.get("op") not in FILTER_OPS:
        return [
            f"{where} {flt.get('property')!r} {flt.get('op')!r} is not supported "
            "(only concept is-a / descendent-of)"
        ]
    value = flt.get("value")
    if not isinstance(value, str) or not ICD10CM_CODE_RE.fullmatch(value):
        return [f"{where}: value {value!r} is not an ICD-10-CM code or category as printed"]
    return []


def has_filter(vs: Mapping[str, Any]) -> bool:
    compose = vs.get("compose") or {}
    return any(
        rule.get("filter") for part in ("include", "exclude") for _, rule in _rules(compose, part)
    )


class _Admits:
    """Which (system, code) keys a list of compose rules admits, without any hierarchy."""

    def __init__(self, rules: list[Mapping[str, Any]]) -> None:
        self.concepts: set[tuple[str, str]] = set()
        #: a rule with one filter: (system, dotless value) → its ops (looked up by prefix)
        self.single: dict[tuple[str, str], set[str]] = {}
        #: a rule with several filters (AND-ed): its system and its (op, dotless value)s
        self.multi: list[tuple[str, list[tuple[str, str]]]] = []
        for rule in rules:
            system = str(rule.get("system"))
            for concept in rule.get("concept") or ():
                if isinstance(concept.get("code"), str):
                    self.concepts.add(code_key(system, concept["code"]))
            filters = [
                (str(f.get("op")), code_key(system, str(f.get("value")))[1])
                for f in rule.get("filter") or ()
            ]
            if len(filters) == 1:
                self.single.setdefault((system, filters[0][1]), set()).add(filters[0][0])
            elif filters:
                self.multi.append((system, filters))

    def __bool__(self) -> bool:
        return bool(self.concepts or self.single or self.multi)

    def __call__(self, key: tuple[str, str]) -> bool:
        if key in self.concepts:
            return True
        system, code = key
        for length in range(1, len(code) + 1):
            ops = self.single.get((system, code[:length]))
            if ops and ("is-a" in ops or length < len(code)):
                return True
        return any(
            rule_system == system
            and all(
                code.startswith(value) and (op == "is-a" or code != value) for op, value in filters
            )
            for rule_system, filters in self.multi
        )


def _entry_problem(
    entry: Mapping[str, Any],
    key: tuple[str, str],
    seen: set[tuple[str, str]],
    included: _Admits,
    index: int,
) -> str:
    where = f"expansion.contains[{index}] {entry.get('system')}|{entry.get('code')}"
    extra = sorted(set(entry) - CONTAINS_KEYS)
    if extra:
        return f"{where}: {', '.join(extra)} not supported here"
    if key in seen:
        return f"{where} is listed twice"
    if not included(key):
        return f"{where} is admitted by no compose.include"
    return f"{where} is excluded by compose.exclude"


def expansion_problems(vs: Mapping[str, Any]) -> list[str]:
    """Why the stored ``expansion`` cannot be this ``compose``'s (empty when it can).

    Checked: a compose with a filter has an expansion; entries are flat ``system``/``code``
    (+ ``display``/``extension``) without duplicates; ``total`` counts them; every entry is
    admitted by an include and by no exclude; every listed concept and every ``is-a`` root
    that is not excluded is present.
    """
    expansion = vs.get("expansion")
    if expansion is None:
        return (
            ["compose has a filter but no stored expansion (run the expansion command)"]
            if (has_filter(vs))
            else []
        )
    compose = vs.get("compose") or {}
    includes = [rule for _, rule in _rules(compose, "include")]
    included, excluded = _Admits(includes), _Admits([r for _, r in _rules(compose, "exclude")])
    problems: list[str] = []
    contains = expansion.get("contains") or []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(contains):
        system, code = entry.get("system"), entry.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            problems.append(f"expansion.contains[{index}] needs a system and a code")
            continue
        key = code_key(system, code)
        if (
            key in seen
            or not entry.keys() <= CONTAINS_KEYS
            or not included(key)
            or (excluded and excluded(key))
        ):
            problems.append(_entry_problem(entry, key, seen, included, index))
        seen.add(key)
    total = expansion.get("total")
    if total is not None and total != len(contains):
        problems.append(f"expansion.total is {total} but contains lists {len(contains)} codes")
    for rule in includes:
        system = str(rule.get("system"))
        wanted = [c.get("code") for c in rule.get("concept") or ()]
        filters: list[Mapping[str, Any]] = list(rule.get("filter") or ())
        if len(filters) == 1 and filters[0].get("op") == "is-a":
            wanted.append(filters[0].get("value"))
        for code in wanted:
            key = code_key(system, str(code))
            if key not in seen and not excluded(key):
                problems.append(f"{system}|{code} of compose.include is missing from the expansion")
    return problems
