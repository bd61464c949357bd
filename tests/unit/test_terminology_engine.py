"""Value-set membership without a terminology server (``engine/terminology/membership.py``).

Rules: the stored expansion is the membership (compose concepts when there is none); ICD-10
codes match with or without the dot and in any case; excluded concepts are out; a
CodeableConcept may match by an ingredient name in its text or a coding display;
``ingredients()`` names the drugs; what the service cannot honour is refused
(``valueset_compose``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.terminology.membership import (
    ICD10CM,
    INGREDIENT_NAME_URL,
    Terminology,
    index_value_set,
    unsupported_compose,
)

SCT = "http://snomed.info/sct"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
BASE = "http://example.org/fhir/muscle-spasm/ValueSet"
DEFINITIONS = Path(__file__).resolve().parent.parent.parent / "definitions"


def ingredient(name: str) -> dict[str, Any]:
    return {"url": INGREDIENT_NAME_URL, "valueString": name}


def is_a(system: str, value: str, op: str = "is-a") -> dict[str, Any]:
    return {"system": system, "filter": [{"property": "concept", "op": op, "value": value}]}


def entry(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


SPASM: dict[str, Any] = {
    "resourceType": "ValueSet",
    "url": f"{BASE}/spasm",
    "version": "0.1.0",
    "compose": {
        "include": [
            {"system": SCT, "concept": [{"code": "45352006"}]},
            is_a(ICD10CM, "M62.83"),
            {"system": ICD10CM, "concept": [{"code": "R25.2"}]},
            {"system": ICD10, "concept": [{"code": "G24.3"}]},
        ],
        "exclude": [{"system": ICD10CM, "concept": [{"code": "M62.838"}]}],
    },
    # as the expansion command computes it from the ICD-10-CM tabular list
    "expansion": {
        "total": 6,
        "contains": [
            entry(SCT, "45352006", "Spasm"),
            entry(ICD10CM, "M62.83", "Muscle spasm"),
            entry(ICD10CM, "M62.830", "Muscle spasm of back"),
            entry(ICD10CM, "M62.831", "Muscle spasm of calf"),
            entry(ICD10CM, "R25.2", "Cramp and spasm"),
            entry(ICD10, "G24.3"),
        ],
    },
}
DRUGS: dict[str, Any] = {
    "resourceType": "ValueSet",
    "url": f"{BASE}/drugs",
    "extension": [ingredient("Cyclobenzaprine"), ingredient("tizanidine")],
    "compose": {
        "include": [
            {
                "system": RX,
                "concept": [
                    {"code": "21949"},
                    {"code": "828348", "extension": [ingredient("cyclobenzaprine")]},
                    {"code": "57258", "extension": [ingredient("tizanidine")]},
                    {"code": "999"},
                ],
            }
        ]
    },
    "expansion": {
        "contains": [
            {"system": RX, "code": "21949"},
            {"system": RX, "code": "828348", "extension": [ingredient("cyclobenzaprine")]},
            {"system": RX, "code": "57258", "extension": [ingredient("tizanidine")]},
            {"system": RX, "code": "999"},
        ]
    },
}


@pytest.fixture(scope="module")
def terminology() -> Terminology:
    return Terminology([SPASM, DRUGS])


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


# --- codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "code", "member"),
    [
        (SCT, "45352006", True),
        (SCT, "55300003", False),  # not listed
        ("http://example.org/other", "45352006", False),
        (ICD10CM, "M62.83", True),
        (ICD10CM, "M62.831", True),  # a descendant with the dot
        (ICD10CM, "M62831", True),  # without the dot
        (ICD10CM, "m62.831", True),  # lower case
        (ICD10CM, "m62831", True),
        (ICD10CM, "M62.8", False),  # the parent
        (ICD10CM, "M62.9", False),
        (ICD10CM, "M62.839", False),  # not in the expansion: no prefix matching any more
        (ICD10CM, "M62.838", False),  # excluded
        (ICD10CM, "R252", True),
        (ICD10, "G24.3", True),
        (ICD10, "g243", True),
        (SCT, "", False),
    ],
)
def test_coding_membership(terminology: Terminology, system: str, code: str, member: bool) -> None:
    assert terminology.member(coding(system, code), f"{BASE}/spasm") is member


def test_expansion_codes(terminology: Terminology) -> None:
    url = f"{BASE}/drugs"
    assert terminology.member(coding(RX, "828348"), url)
    assert terminology.member(coding(RX, "999"), url)
    assert terminology.member(coding(RX, "21949"), url)  # compose concept as well
    assert not terminology.member(coding(RX, "1"), url)
    assert not terminology.member({"code": "828348"}, url)  # no system


def test_codeable_concepts(terminology: Terminology) -> None:
    url = f"{BASE}/spasm"
    concept = {"coding": [coding(SCT, "1"), coding(SCT, "45352006")]}
    assert terminology.member(concept, url)
    assert not terminology.member({"coding": [coding(SCT, "1")]}, url)
    assert not terminology.member({"text": "spasm"}, url)  # no names on this ValueSet
    assert not terminology.member({}, url)
    assert not terminology.member("45352006", url)
    assert not terminology.member(None, url)


def test_versioned_url(terminology: Terminology) -> None:
    assert f"{BASE}/spasm|0.1.0" in terminology
    assert terminology.member(coding(SCT, "45352006"), f"{BASE}/spasm|0.1.0")
    assert f"{BASE}/spasm|9" not in terminology
    assert terminology.get(f"{BASE}/spasm") is terminology.get(f"{BASE}/spasm|0.1.0")


def test_unknown_value_set_is_an_error(terminology: Terminology) -> None:
    with pytest.raises(KeyError, match="unknown ValueSet"):
        terminology.member(coding(SCT, "1"), f"{BASE}/nope")


# --- medication names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concept", "names"),
    [
        ({"coding": [coding(RX, "828348")]}, ["cyclobenzaprine"]),
        ({"coding": [coding(RX, "57258")], "text": "cyclobenzaprine"}, ["tizanidine"]),
        ({"text": "Tizanidine 4 mg tablet"}, ["tizanidine"]),
        ({"text": "FLEXERIL (CYCLOBENZAPRINE) 10 MG"}, ["cyclobenzaprine"]),
        ({"coding": [coding("urn:local", "x", "cyclobenzaprine 5 mg")]}, ["cyclobenzaprine"]),
        ({"text": "tizanidinex"}, []),  # whole words only
        ({"text": "baclofen"}, []),
        ({"coding": [coding(RX, "999")]}, ["999"]),  # a member without a name: its code
        (
            {"coding": [coding(RX, "828348"), coding(RX, "57258")]},
            ["cyclobenzaprine", "tizanidine"],
        ),
        (coding(RX, "828348"), ["cyclobenzaprine"]),  # a bare Coding
    ],
)
def test_ingredients(terminology: Terminology, concept: dict[str, Any], names: list[str]) -> None:
    assert terminology.ingredients(concept, f"{BASE}/drugs") == names
    assert terminology.member(concept, f"{BASE}/drugs") is bool(names)


def test_codes_win_over_the_name_fallback(terminology: Terminology) -> None:
    concept = {"coding": [coding(RX, "57258")], "text": "cyclobenzaprine"}
    assert terminology.ingredients(concept, f"{BASE}/drugs") == ["tizanidine"]


def test_name_fallback_is_logged(
    terminology: Terminology, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        terminology.ingredients({"text": "tizanidine"}, f"{BASE}/drugs")
    assert "name fallback" in caplog.text


def test_index_records_ingredients() -> None:
    index = index_value_set(DRUGS)
    assert index.names == ["cyclobenzaprine", "tizanidine"]
    assert index.code_ingredient[(RX, "828348")] == "cyclobenzaprine"
    assert [c["code"] for c in index.contains] == ["21949", "828348", "57258", "999"]


# --- a ValueSet without a stored expansion: its listed concepts ---------------------------------


def test_compose_only_value_set_is_its_listed_concepts_minus_excluded() -> None:
    vs = {
        "url": f"{BASE}/listed",
        "compose": {
            "include": [{"system": ICD10CM, "concept": [{"code": "I48.91"}, {"code": "I48.0"}]}],
            "exclude": [{"system": ICD10CM, "concept": [{"code": "I480"}]}],
        },
    }
    terminology = Terminology([vs])
    assert terminology.member(entry(ICD10CM, "i4891"), f"{BASE}/listed")
    assert not terminology.member(entry(ICD10CM, "I48.0"), f"{BASE}/listed")
    index = terminology.get(f"{BASE}/listed")
    assert index is not None
    assert [c["code"] for c in index.contains] == ["I48.91"]


def test_display_of_a_member(terminology: Terminology) -> None:
    index = terminology.get(f"{BASE}/spasm")
    assert index is not None
    assert index.display(ICD10CM, "m62831") == "Muscle spasm of calf"
    assert index.display(ICD10, "G24.3") is None  # a member without a display
    assert index.display(ICD10CM, "M62.9") is None  # no member
    assert [c["code"] for c in index.contains][:2] == ["45352006", "M62.83"]


# --- what the service cannot honour is refused at load time --------------------------------------


@pytest.mark.parametrize(
    ("compose", "words"),
    [
        ({"include": [{"valueSet": [f"{BASE}/other"]}]}, "valueSet"),
        ({"include": [is_a(SCT, "1")]}, "filters on http://snomed.info/sct are not supported"),
        (
            {
                "include": [
                    {
                        "system": ICD10CM,
                        "filter": [{"property": "parent", "op": "=", "value": "I48"}],
                    }
                ]
            },
            "'parent' '='",
        ),
        ({"include": [is_a(ICD10CM, "I48", "is-not-a")]}, "'concept' 'is-not-a'"),
        ({"include": [is_a(ICD10CM, "S00-S09")]}, "not an ICD-10-CM code or category"),
        ({"include": [is_a(ICD10CM, "i48")]}, "as printed"),
        (
            {"include": [{"system": SCT, "concept": [{"code": "1"}]}], "exclude": [is_a(SCT, "1")]},
            "exclude[0].filter[0]: filters on http://snomed.info/sct",
        ),
        ({"include": [{"concept": [{"code": "1"}]}]}, "needs a system"),
        ({"include": [{"system": SCT}]}, "a whole code system"),
        (
            {"include": [{**is_a(ICD10CM, "I48"), "concept": [{"code": "I10"}]}]},
            "both concept and filter",
        ),
        ({"include": [is_a(ICD10CM, "I48")]}, "no stored expansion"),
    ],
)
def test_unsupported_compose_is_named(compose: dict[str, Any], words: str) -> None:
    problems = unsupported_compose({"resourceType": "ValueSet", "compose": compose})
    assert any(words in p for p in problems), problems


def test_supported_compose_has_no_problem() -> None:
    assert unsupported_compose(SPASM) == []
    assert unsupported_compose(DRUGS) == []


def _with(contains: list[dict[str, Any]], **compose: Any) -> dict[str, Any]:
    return {
        "url": f"{BASE}/x",
        "compose": {"include": [is_a(ICD10CM, "I48")], **compose},
        "expansion": {"total": len(contains), "contains": contains},
    }


I48 = [entry(ICD10CM, "I48"), entry(ICD10CM, "I48.9"), entry(ICD10CM, "I48.91")]


@pytest.mark.parametrize(
    ("vs", "words"),
    [
        (_with([*I48, entry(ICD10CM, "I49.9")]), "I49.9 is admitted by no compose.include"),
        (_with([*I48, entry(SCT, "I48.0")]), "admitted by no compose.include"),
        (_with(I48[1:]), "I48 of compose.include is missing"),
        (
            _with(I48, exclude=[{"system": ICD10CM, "concept": [{"code": "I48.91"}]}]),
            "I48.91 is excluded",
        ),
        (_with(I48, exclude=[is_a(ICD10CM, "I48.9")]), "I48.9 is excluded"),
        (_with([*I48, entry(ICD10CM, "i4891")]), "is listed twice"),
        (_with([*I48[:2], {**I48[2], "contains": []}]), "contains not supported here"),
        (_with([*I48[:2], {"code": "I48.91"}]), "needs a system and a code"),
        (
            {**_with(I48), "expansion": {"total": 5, "contains": I48}},
            "expansion.total is 5 but contains lists 3",
        ),
        (
            {**_with(I48[1:]), "compose": {"include": [is_a(ICD10CM, "I48", "descendent-of")]}},
            "",
        ),
        (
            {**_with(I48), "compose": {"include": [is_a(ICD10CM, "I48", "descendent-of")]}},
            "I48 is admitted by no compose.include",
        ),
    ],
)
def test_an_expansion_that_disagrees_with_its_compose_is_refused(
    vs: dict[str, Any], words: str
) -> None:
    problems = unsupported_compose(vs)
    if words:
        assert any(words in p for p in problems), problems
    else:
        assert problems == []


def test_an_expansion_that_agrees_with_its_compose_is_accepted() -> None:
    assert unsupported_compose(_with(I48)) == []
    several = _with(
        I48[1:],
        include=[
            {
                "system": ICD10CM,
                "filter": [
                    {"property": "concept", "op": "is-a", "value": "I48"},
                    {"property": "concept", "op": "is-a", "value": "I48.9"},
                ],
            }
        ],
    )
    assert unsupported_compose(several) == []  # filters of one include are AND-ed


# --- the real ValueSets ---------------------------------------------------------------------


VALUE_SETS = sorted(DEFINITIONS.glob("ValueSet-*.json"))


@pytest.mark.parametrize("path", VALUE_SETS, ids=[p.stem for p in VALUE_SETS])
def test_every_listed_concept_is_a_member_of_its_value_set(path: Path) -> None:
    vs = json.loads(path.read_text(encoding="utf-8"))
    terminology = Terminology([vs])
    assert unsupported_compose(vs) == []
    listed = [
        (include["system"], concept["code"])
        for include in vs.get("compose", {}).get("include", [])
        for concept in include.get("concept", [])
    ] + [
        (c["system"], c["code"])
        for c in vs.get("expansion", {}).get("contains", [])
        if "system" in c
    ]
    for system, code in listed:
        assert terminology.member(coding(system, code), vs["url"]), (system, code)
        assert terminology.member(
            {"coding": [coding(system, code)]}, f"{vs['url']}|{vs['version']}"
        )
    assert not terminology.member(coding(SCT, "0000000"), vs["url"])


# --- the loader refuses to start on them --------------------------------------------------------

MINI = Path(__file__).resolve().parent.parent / "fixtures" / "definitions-mini"


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda e: e["contains"].pop(2), "M62.83 of compose.include is missing"),
        (
            lambda e: e["contains"].append(entry(ICD10CM, "M62.9")),
            "M62.9 is admitted by no compose.include",
        ),
        (lambda e: e["contains"].append(entry(ICD10CM, "m62831")), "is listed twice"),
    ],
)
def test_the_loader_refuses_an_expansion_that_disagrees(
    tmp_path: Path, edit: Any, words: str
) -> None:
    from fhir_service.knowledge.loader import KnowledgeError, load_definitions

    shutil.copytree(MINI, tmp_path / "defs")
    path = tmp_path / "defs" / "ValueSet-vs-mini-spasm.json"
    vs = json.loads(path.read_text())
    edit(vs["expansion"])
    vs["expansion"]["total"] = len(vs["expansion"].get("contains", []))
    path.write_text(json.dumps(vs))
    with pytest.raises(KnowledgeError) as refused:
        load_definitions(tmp_path / "defs")
    assert any("ValueSet-vs-mini-spasm.json" in p and words in p for p in refused.value.problems)
