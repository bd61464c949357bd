"""Value-set membership without a terminology server (``engine/terminology.py``).

Rules: expansion and compose concepts; ICD-10-CM ``is-a`` is a code prefix with the dot
ignored; SNOMED ``is-a X`` admits X only; excluded concepts are out; a CodeableConcept may
match by an ingredient name in its text or a coding display; ``ingredients()`` names the drugs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.terminology import (
    ICD10CM,
    INGREDIENT_NAME_URL,
    Terminology,
    index_value_set,
    unsupported_compose,
)

SCT = "http://snomed.info/sct"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
BASE = "http://example.org/fhir/muscle-spasm/ValueSet"
DEFINITIONS = Path(__file__).resolve().parent.parent.parent / "definitions"


def ingredient(name: str) -> dict[str, Any]:
    return {"url": INGREDIENT_NAME_URL, "valueString": name}


SPASM: dict[str, Any] = {
    "resourceType": "ValueSet",
    "url": f"{BASE}/spasm",
    "version": "0.1.0",
    "compose": {
        "include": [
            {"system": SCT, "concept": [{"code": "45352006"}]},
            {"system": SCT, "filter": [{"property": "concept", "op": "is-a", "value": "55300003"}]},
            {
                "system": ICD10CM,
                "filter": [{"property": "concept", "op": "is-a", "value": "M62.83"}],
            },
            {"system": ICD10CM, "concept": [{"code": "R25.2"}]},
            {
                "system": "http://hl7.org/fhir/sid/icd-10",
                "filter": [{"property": "concept", "op": "is-a", "value": "G24"}],
            },
        ],
        "exclude": [{"system": ICD10CM, "concept": [{"code": "M62.838"}]}],
    },
}
DRUGS: dict[str, Any] = {
    "resourceType": "ValueSet",
    "url": f"{BASE}/drugs",
    "extension": [ingredient("Cyclobenzaprine"), ingredient("tizanidine")],
    "compose": {"include": [{"system": RX, "concept": [{"code": "21949"}]}]},
    "expansion": {
        "contains": [
            {"system": RX, "code": "828348", "extension": [ingredient("cyclobenzaprine")]},
            {"system": RX, "code": "57258", "extension": [ingredient("tizanidine")]},
            {"system": RX, "code": "999"},
            {"code": "no-system"},
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
        (SCT, "45352006", True),  # compose concept
        (SCT, "55300003", True),  # is-a admits the code itself
        (SCT, "449918009", False),  # a SNOMED descendant needs a terminology server
        ("http://example.org/other", "45352006", False),
        (ICD10CM, "M62.83", True),
        (ICD10CM, "M62.831", True),  # prefix with the dot
        (ICD10CM, "M62831", True),  # prefix without the dot
        (ICD10CM, "m62.831", True),  # case
        (ICD10CM, "M62.8", False),  # the parent
        (ICD10CM, "M62.9", False),
        (ICD10CM, "M62.838", False),  # excluded
        (ICD10CM, "M62838", False),  # excluded, without the dot
        (ICD10CM, "R252", True),  # a listed ICD concept, without the dot
        ("http://hl7.org/fhir/sid/icd-10", "G24.3", True),
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
    assert (RX, "no-system") not in index.codes


# --- what membership cannot honour is refused at load time ---------------------------------------


@pytest.mark.parametrize(
    ("compose", "words"),
    [
        ({"include": [{"valueSet": [f"{BASE}/other"]}]}, "valueSet"),
        (
            {
                "include": [
                    {
                        "system": SCT,
                        "filter": [{"property": "concept", "op": "descendent-of", "value": "1"}],
                    }
                ]
            },
            "'descendent-of' is not supported",
        ),
        (
            {
                "include": [
                    {"system": SCT, "filter": [{"property": "parent", "op": "=", "value": "1"}]}
                ]
            },
            "'parent' '='",
        ),
        (
            {
                "include": [{"system": SCT, "concept": [{"code": "1"}]}],
                "exclude": [
                    {"system": SCT, "filter": [{"property": "concept", "op": "is-a", "value": "1"}]}
                ],
            },
            "exclude[0].filter",
        ),
        ({"include": [{"concept": [{"code": "1"}]}]}, "needs a system"),
    ],
)
def test_unsupported_compose_is_named(compose: dict[str, Any], words: str) -> None:
    problems = unsupported_compose({"resourceType": "ValueSet", "compose": compose})
    assert any(words in p for p in problems), problems


def test_supported_compose_has_no_problem() -> None:
    assert unsupported_compose(SPASM) == []
    assert unsupported_compose(DRUGS) == []


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
