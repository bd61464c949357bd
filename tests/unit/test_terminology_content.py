"""Content checks for the terminology artifacts (ValueSets, rule CodeSystem, ActivityDefinitions).

Covers definitions/ValueSet-*.json, definitions/CodeSystem-rule.json and
definitions/ActivityDefinition-*.json against the conventions of docs/terminology.md (codes,
verification tiers, published OIDs, the Revision 2 families and their close negatives).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhir.resources.R4B.activitydefinition import ActivityDefinition
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.valueset import ValueSet

ROOT = Path(__file__).resolve().parents[2]
DEFS = ROOT / "definitions"
DOCS = ROOT / "docs"
BASE = "http://example.org/fhir/muscle-spasm"
VER_EXT = f"{BASE}/StructureDefinition/verification-status"
PARENT_EXT = f"{BASE}/StructureDefinition/enumerated-parent"
ING_EXT = f"{BASE}/StructureDefinition/ingredient-name"
TIERS = {"V1", "V2", "UNVERIFIED"}

SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
KNOWN_SYSTEMS = {SCT, ICD, RX, LOINC, CPT}

REQUIRED_VALUESETS = [
    "vs-spasm-cramp",
    "vs-nocturnal-cramp",
    "vs-acute-msk-spasm",
    "vs-heat-cramp",
    "vs-spasm-family",
    "vs-cervical-dystonia",
    "vs-spasticity",
    "vs-post-stroke-spasticity",
    "vs-stroke",
    "vs-stroke-sequela",
    "vs-neuro-disorder",
    "vs-injury-head-neck-back",
    "vs-neuro-symptoms",
    "vs-swelling-skin",
    "vs-pregnancy",
    "vs-malaria",
    "vs-hyperthyroidism",
    "vs-heart-block",
    "vs-arrhythmia",
    "vs-heart-failure",
    "vs-myocardial-infarction",
    "vs-labs-core-electrolytes",
    "vs-labs-cramp-workup",
    "vs-body-temperature",
    "vs-pain-score",
    "vs-physical-therapy",
    "vs-cyclobenzaprine",
    "vs-maoi",
    "vs-benzodiazepine",
    "vs-benzodiazepine-beers",
    "vs-smr",
    "vs-smr-beers",
    "vs-tizanidine",
    "vs-cyp1a2-strong-inhibitors",
    "vs-quinine",
    "vs-cns-active",
]
MEDICATION_VALUESETS = [
    "vs-cyclobenzaprine",
    "vs-maoi",
    "vs-benzodiazepine",
    "vs-benzodiazepine-beers",
    "vs-smr",
    "vs-smr-beers",
    "vs-tizanidine",
    "vs-cyp1a2-strong-inhibitors",
    "vs-quinine",
    "vs-cns-active",
]
SPASM_PARTS = ["vs-spasm-cramp", "vs-nocturnal-cramp", "vs-acute-msk-spasm", "vs-heat-cramp"]

RULE_IDS = (
    [f"RF-0{i}" for i in range(1, 7)]
    + ["AS-01", "LAB-01", "LAB-02"]
    + ["TY-GEN", "TY-EX", "TY-NOCT", "TY-HEAT", "TY-HEAT-X", "TY-MSK", "TY-CD", "TY-PSS"]
    + ["TY-PSS-BONT", "TY-PREG", "PV-01"]
    + [f"MS-{i:02d}" for i in range(1, 13)]
)
ACTIVITY_DEFINITIONS = {
    "ad-pt-referral": ("ServiceRequest", {(SCT, "308447003")}),
    "ad-neuro-pt-referral": ("ServiceRequest", {(SCT, "716634006")}),
    "ad-bont-inj-neck": ("ServiceRequest", {(SCT, "442695005"), (CPT, "64616")}),
    "ad-bont-inj-limb": ("ServiceRequest", {(SCT, "442695005"), (CPT, "64642"), (CPT, "64644")}),
    "ad-lab-potassium": ("ServiceRequest", {(LOINC, "2823-3")}),
    "ad-lab-sodium": ("ServiceRequest", {(LOINC, "2951-2")}),
    "ad-lab-calcium": ("ServiceRequest", {(LOINC, "17861-6")}),
    "ad-lab-magnesium": ("ServiceRequest", {(LOINC, "19123-9")}),
    "ad-lab-ck": ("ServiceRequest", {(LOINC, "2157-6")}),
    "ad-lab-tsh": ("ServiceRequest", {(LOINC, "3016-3")}),
    "ad-edu-prevention": ("CommunicationRequest", None),
    "ad-edu-heat": ("CommunicationRequest", None),
    "ad-edu-immediate": ("CommunicationRequest", None),
}
SEED_DISPLAY = (
    "Seed: What are muscle spasms? (000_fd95c578ff9ff21f.txt), last updated July 23, 2025"
)
SEED_CITATION = {
    "type": "citation",
    "display": SEED_DISPLAY,
    "document": {"title": "000_fd95c578ff9ff21f.txt"},
}

VS_FILES = sorted(DEFS.glob("ValueSet-*.json"))
AD_FILES = sorted(DEFS.glob("ActivityDefinition-*.json"))
CS_FILE = DEFS / "CodeSystem-rule.json"
ALL_FILES = [*VS_FILES, CS_FILE, *AD_FILES]


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def vs(vs_id: str) -> dict[str, Any]:
    return load(DEFS / f"ValueSet-{vs_id}.json")


def tier_of(element: dict[str, Any]) -> str | None:
    for ext in element.get("extension", []):
        if ext.get("url") == VER_EXT:
            value: str = ext["valueCode"]
            return value
    return None


def expansion_codes(res: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in res["expansion"]["contains"]}


def compose_codes(res: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (inc["system"], c["code"])
        for inc in res["compose"]["include"]
        for c in inc.get("concept", [])
    }


def compose_filters(res: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (inc["system"], f["value"])
        for inc in res["compose"]["include"]
        for f in inc.get("filter", [])
    }


def covered_by_filter(system: str, code: str, filters: set[tuple[str, str]]) -> bool:
    """ICD-10-CM is-a filters are code-prefix matches that ignore the dot (engine semantics)."""
    bare = code.replace(".", "")
    return any(s == system and bare.startswith(v.replace(".", "")) for s, v in filters)


def members(vs_id: str) -> dict[tuple[str, str], str]:
    return {(c["system"], c["code"]): tier_of(c) or "" for c in vs(vs_id)["expansion"]["contains"]}


def ingredient_names(res: dict[str, Any]) -> list[str]:
    return [e["valueString"] for e in res.get("extension", []) if e["url"] == ING_EXT]


def members_ingredients(vs_id: str) -> dict[str, str]:
    return {c["code"]: ingredient_names(c)[0] for c in vs(vs_id)["expansion"]["contains"]}


# --------------------------------------------------------------------------- all files


def test_expected_files_exist() -> None:
    for vs_id in REQUIRED_VALUESETS:
        assert (DEFS / f"ValueSet-{vs_id}.json").is_file(), vs_id
    for ad_id in ACTIVITY_DEFINITIONS:
        assert (DEFS / f"ActivityDefinition-{ad_id}.json").is_file(), ad_id
    assert CS_FILE.is_file()


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_validates_with_r4b_model(path: Path) -> None:
    data = load(path)
    model = {
        "ValueSet": ValueSet,
        "CodeSystem": CodeSystem,
        "ActivityDefinition": ActivityDefinition,
    }
    model[data["resourceType"]].model_validate(data)
    assert "subjectCanonical" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_identity_and_metadata(path: Path) -> None:
    data = load(path)
    rtype, rid = data["resourceType"], data["id"]
    assert path.name == f"{rtype}-{rid}.json"
    assert data["url"] == f"{BASE}/{rtype}/{rid}"
    assert data["version"] == "0.1.0"
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", data["name"]), data["name"]
    assert data["title"].strip()
    assert data["status"] == "active"
    assert data["date"] in {"2026-12-01", "2026-12-07"}  # 2026-12-07: Revision 2 content
    assert data["publisher"] == "Muscle Spasm Guideline Service"
    assert data["description"].strip()


def test_names_are_unique() -> None:
    names = [load(p)["name"] for p in ALL_FILES]
    assert len(names) == len(set(names))


# ------------------------------------------------------------------------- value sets


@pytest.mark.parametrize("path", VS_FILES, ids=lambda p: p.name)
def test_valueset_structure(path: Path) -> None:
    res = load(path)
    exp = res["expansion"]
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", exp["identifier"])
    # written by the authoring command (docs/terminology.md "ICD-10-CM source and expansions")
    assert re.fullmatch(r"2026-12-\d\dT\d\d:\d\d:\d\dZ", exp["timestamp"])
    assert exp["total"] == len(exp["contains"]) > 0
    keys = [(c["system"], c["code"]) for c in exp["contains"]]
    assert len(keys) == len(set(keys)), "duplicate expansion entries"
    for inc in res["compose"]["include"]:
        assert inc["system"] in KNOWN_SYSTEMS
        assert not ("concept" in inc and "filter" in inc)
        for f in inc.get("filter", []):
            assert inc["system"] == ICD
            assert (f["property"], f["op"]) == ("concept", "is-a")
    for c in exp["contains"]:
        assert c["system"] in KNOWN_SYSTEMS
        assert c["code"].strip() and c["display"].strip()


@pytest.mark.parametrize("path", VS_FILES, ids=lambda p: p.name)
def test_expansion_matches_compose(path: Path) -> None:
    res = load(path)
    enumerated = compose_codes(res)
    filters = compose_filters(res)
    for system, code in expansion_codes(res):
        assert (system, code) in enumerated or covered_by_filter(system, code, filters), code
    # every enumerated compose concept is also in the expansion the engine reads
    assert enumerated <= expansion_codes(res)


@pytest.mark.parametrize("path", VS_FILES, ids=lambda p: p.name)
def test_verification_tiers(path: Path) -> None:
    res = load(path)
    tiers = []
    for inc in res["compose"]["include"]:
        for c in inc.get("concept", []):
            assert tier_of(c) in TIERS, c["code"]
        if "filter" in inc:
            assert tier_of(inc) in TIERS
    compose_tiers = {
        (inc["system"], c["code"]): tier_of(c)
        for inc in res["compose"]["include"]
        for c in inc.get("concept", [])
    }
    filter_tiers = {
        (inc["system"], f["value"]): tier_of(inc)
        for inc in res["compose"]["include"]
        for f in inc.get("filter", [])
    }
    for c in res["expansion"]["contains"]:
        tier = tier_of(c)
        assert tier in TIERS, c["code"]
        key = (c["system"], c["code"])
        if key in compose_tiers:
            assert compose_tiers[key] == tier
        else:  # derived from an ICD-10-CM filter: the include's tier
            admitting = {t for f, t in filter_tiers.items() if covered_by_filter(*key, {f})}
            assert admitting == {tier}, key
        tiers.append(tier)
    root = tier_of(res)
    assert (root == "UNVERIFIED") == ("UNVERIFIED" in tiers)


def test_published_identifiers_are_oids_or_canonicals() -> None:
    for path in VS_FILES:
        for ident in load(path).get("identifier", []):
            assert ident["system"] == "urn:ietf:rfc:3986"
            value = ident["value"]
            is_oid = re.fullmatch(r"urn:oid:2\.16\.840\.1\.[0-9.]+", value) is not None
            assert is_oid or value.startswith("http")
            if value.startswith("urn:oid:"):
                assert value.removeprefix("urn:oid:") in load(path)["description"]


@pytest.mark.parametrize("vs_id", MEDICATION_VALUESETS)
def test_medication_valuesets_have_ingredient_names(vs_id: str) -> None:
    res = vs(vs_id)
    names = ingredient_names(res)
    assert names, vs_id
    assert all(n == n.lower() and n.strip() == n for n in names)
    assert len(names) == len(set(names))
    assert {s for s, _ in expansion_codes(res)} == {RX}


@pytest.mark.parametrize("vs_id", MEDICATION_VALUESETS)
def test_every_rxnorm_concept_names_its_ingredient(vs_id: str) -> None:
    """Per-concept ingredient-name: the engine counts distinct ingredients (MS-06, MS-09) by it."""
    res = vs(vs_id)
    names = set(ingredient_names(res))
    entries = list(res["expansion"]["contains"])
    entries += [c for inc in res["compose"]["include"] for c in inc.get("concept", [])]
    for entry in entries:
        found = ingredient_names(entry)
        assert len(found) == 1, entry["code"]
        assert found[0] in names
        assert re.search(r"\b" + re.escape(found[0]) + r"\b", entry["display"].lower())


def test_same_ingredient_renewal_is_one_ingredient() -> None:
    smr = members_ingredients("vs-smr")
    assert smr["828348"] == smr["828299"] == smr["21949"] == "cyclobenzaprine"
    assert members_ingredients("vs-benzodiazepine")["856769"] == "chlordiazepoxide"


def test_spasm_family_is_union_of_its_four_parts() -> None:
    family = vs("vs-spasm-family")
    union: set[tuple[str, str]] = set()
    union_filters: set[tuple[str, str]] = set()
    for part in SPASM_PARTS:
        union |= expansion_codes(vs(part))
        union_filters |= compose_filters(vs(part))
    assert expansion_codes(family) == union
    assert compose_filters(family) == union_filters
    # spasticity and dystonia are explicitly NOT spasm-family (clinical-rules §1.1)
    assert (SCT, "221360009") not in union
    assert (SCT, "74333002") not in union


def test_cns_active_contains_benzodiazepines_and_relaxants() -> None:
    cns = vs("vs-cns-active")
    for part in ("vs-benzodiazepine", "vs-smr"):
        assert expansion_codes(vs(part)) <= expansion_codes(cns)
        assert set(ingredient_names(vs(part))) <= set(ingredient_names(cns))
    names = set(ingredient_names(cns))
    for drug in ("gabapentin", "pregabalin", "duloxetine", "citalopram", "zolpidem", "quetiapine"):
        assert drug in names
    for drug in ("oxycodone", "phenobarbital", "phenelzine", "tizanidine", "baclofen"):
        assert drug in names
    assert "linezolid" not in names


def test_beers_subsets() -> None:
    assert expansion_codes(vs("vs-smr-beers")) <= expansion_codes(vs("vs-smr"))
    benzo = expansion_codes(vs("vs-benzodiazepine"))
    assert expansion_codes(vs("vs-benzodiazepine-beers")) <= benzo
    smr_beers = set(ingredient_names(vs("vs-smr-beers")))
    assert smr_beers == {
        "carisoprodol",
        "chlorzoxazone",
        "cyclobenzaprine",
        "metaxalone",
        "methocarbamol",
        "orphenadrine",
    }
    assert len(ingredient_names(vs("vs-smr"))) == 9


# Spot checks against clinical-rules §3 (system, code, tier)
SPOT_CHECKS = [
    ("vs-cyclobenzaprine", RX, "828348", "V1"),
    ("vs-cyclobenzaprine", RX, "21949", "V2"),
    ("vs-labs-cramp-workup", LOINC, "2157-6", "V2"),
    ("vs-labs-cramp-workup", LOINC, "11580-8", "V1"),
    ("vs-labs-core-electrolytes", LOINC, "19123-9", "V2"),
    ("vs-heat-cramp", SCT, "87108006", "UNVERIFIED"),
    ("vs-spasm-family", SCT, "87108006", "UNVERIFIED"),
    ("vs-spasm-family", ICD, "G47.62", "V2"),
    ("vs-nocturnal-cramp", SCT, "90392009", "V1"),
    ("vs-acute-msk-spasm", SCT, "100211000119106", "V1"),
    ("vs-cervical-dystonia", ICD, "G24.3", "V1"),
    ("vs-post-stroke-spasticity", SCT, "108691000119102", "V1"),
    ("vs-stroke-sequela", SCT, "442733008", "V1"),
    ("vs-injury-head-neck-back", ICD, "S39.012A", "V1"),
    ("vs-neuro-symptoms", ICD, "R20.2", "V1"),
    ("vs-hyperthyroidism", SCT, "34486009", "V1"),
    ("vs-heart-block", SCT, "233916004", "V1"),
    ("vs-myocardial-infarction", SCT, "22298006", "V1"),
    ("vs-pregnancy", SCT, "77386006", "V1"),
    ("vs-malaria", SCT, "61462000", "V1"),
    ("vs-body-temperature", LOINC, "8310-5", "V1"),
    ("vs-pain-score", LOINC, "72514-3", "V1"),
    ("vs-physical-therapy", CPT, "97110", "V2"),
    ("vs-physical-therapy", SCT, "308447003", "V1"),
    ("vs-maoi", RX, "312347", "V1"),
    ("vs-maoi", RX, "311347", "V1"),
    ("vs-benzodiazepine", RX, "197591", "V1"),
    ("vs-benzodiazepine", RX, "3322", "V1"),
    ("vs-benzodiazepine", RX, "596", "V2"),
    ("vs-benzodiazepine-beers", RX, "197901", "V1"),
    ("vs-smr", RX, "1292", "UNVERIFIED"),
    ("vs-smr", RX, "856656", "V1"),
    ("vs-smr-beers", RX, "2410", "UNVERIFIED"),
    ("vs-tizanidine", RX, "57258", "V2"),
    ("vs-cyp1a2-strong-inhibitors", RX, "2551", "V1"),
    ("vs-cyp1a2-strong-inhibitors", RX, "903887", "V1"),
    ("vs-quinine", RX, "997010", "V1"),
    ("vs-cns-active", RX, "310430", "V1"),
    ("vs-cns-active", RX, "200371", "V1"),
]


@pytest.mark.parametrize(("vs_id", "system", "code", "tier"), SPOT_CHECKS)
def test_spot_check_codes(vs_id: str, system: str, code: str, tier: str) -> None:
    assert members(vs_id).get((system, code)) == tier


NOT_MEMBERS = [
    ("vs-pregnancy", SCT, "60001007"),  # Not pregnant
    ("vs-stroke-sequela", SCT, "20022000"),  # hemiparesis is not stroke-specific
    ("vs-smr-beers", RX, "313412"),  # tizanidine: out of Beers SMR scope
    ("vs-smr-beers", RX, "197391"),  # baclofen
    ("vs-swelling-skin", SCT, "70819003"),  # explicitly not verified
    ("vs-cns-active", RX, "311347"),  # linezolid is not CNS-active
]


@pytest.mark.parametrize(("vs_id", "system", "code"), NOT_MEMBERS)
def test_codes_that_must_not_be_members(vs_id: str, system: str, code: str) -> None:
    assert (system, code) not in members(vs_id)


FILTER_CHECKS = [
    ("vs-stroke-sequela", "I69.354"),
    ("vs-stroke-sequela", "I69.15"),
    ("vs-neuro-disorder", "G35.B1"),
    ("vs-malaria", "B50.9"),
    ("vs-malaria", "B53.8"),
    ("vs-hyperthyroidism", "E05.00"),
    ("vs-heart-block", "I44.1"),
    ("vs-heart-failure", "I50.33"),
    ("vs-myocardial-infarction", "I22.0"),
    ("vs-injury-head-neck-back", "S06.0X0A"),
    ("vs-injury-head-neck-back", "S19.9XXA"),
    ("vs-injury-head-neck-back", "S33.5XXA"),
    ("vs-pregnancy", "Z3A.20"),
    ("vs-heat-cramp", "T67.2XXA"),
    ("vs-stroke", "I63.50"),
]


@pytest.mark.parametrize(("vs_id", "code"), FILTER_CHECKS)
def test_icd_hierarchies_covered_by_filters(vs_id: str, code: str) -> None:
    assert covered_by_filter(ICD, code, compose_filters(vs(vs_id)))


def test_filters_do_not_overreach() -> None:
    assert not covered_by_filter(ICD, "S36.116A", compose_filters(vs("vs-injury-head-neck-back")))
    assert not covered_by_filter(ICD, "B55.0", compose_filters(vs("vs-malaria")))
    assert not covered_by_filter(ICD, "T67.0XXA", compose_filters(vs("vs-heat-cramp")))


def test_benzodiazepine_full_list_size() -> None:
    codes = expansion_codes(vs("vs-benzodiazepine"))
    # 198 CDC Opioid CDS IG codes + 14 ingredient RXCUIs (VSAC ...1522 is a subset of the CDC list)
    assert len(codes) == 212


# ------------------------------------------------------------------------ code system


def test_rule_codesystem() -> None:
    cs = load(CS_FILE)
    assert cs["id"] == "rule"
    assert cs["content"] == "complete"
    codes = [c["code"] for c in cs["concept"]]
    assert codes == RULE_IDS
    assert cs["count"] == len(RULE_IDS)
    for c in cs["concept"]:
        assert c["display"].strip() and c["definition"].strip()
    displays = {c["code"]: c["display"] for c in cs["concept"]}
    assert displays["RF-03"] == "RF-01 + RF-02 together"
    assert displays["MS-11"] == "quinine for cramps"


# ------------------------------------------------------------------- activity definitions


@pytest.mark.parametrize("ad_id", sorted(ACTIVITY_DEFINITIONS))
def test_activity_definition(ad_id: str) -> None:
    ad = load(DEFS / f"ActivityDefinition-{ad_id}.json")
    kind, codes = ACTIVITY_DEFINITIONS[ad_id]
    assert ad["kind"] == kind
    assert ad["intent"] == "proposal"
    assert ad["status"] == "active"
    assert SEED_CITATION in ad["relatedArtifact"]
    assert ad["code"].get("text") or ad["code"].get("coding")
    if codes is not None:
        assert {(c["system"], c["code"]) for c in ad["code"]["coding"]} == codes
        for c in ad["code"]["coding"]:
            assert tier_of(c) in TIERS


SEED_BULLETS = {
    "ad-edu-prevention": [
        "Proper hydration",
        "Regular stretching",
        "Gradual increase in exercise intensity",
        "Adequate warm-up and cool-down periods",
        "Proper nutrition and electrolyte balance",
    ],
    "ad-edu-heat": [
        "Rest in a cool environment",
        "Drink electrolyte-carbohydrate mixtures",
        "Stretching, icing, and massaging the painful muscles",
        "Resume exercise only after symptoms have resolved",
    ],
    "ad-edu-immediate": [
        "Rest the affected muscle",
        "Gentle stretching of the cramping muscle",
        "Application of heat or cold",
        "Massage of the affected area",
    ],
}


@pytest.mark.parametrize("ad_id", sorted(SEED_BULLETS))
def test_education_payload_is_a_fhirpath_string(ad_id: str) -> None:
    ad = load(DEFS / f"ActivityDefinition-{ad_id}.json")
    (dv,) = ad["dynamicValue"]
    assert dv["path"] == "payload[0].contentString"
    assert dv["expression"]["language"] == "text/fhirpath"
    result = fhirpathpy.evaluate({}, dv["expression"]["expression"])
    assert isinstance(result, list) and len(result) == 1
    text = result[0]
    for bullet in SEED_BULLETS[ad_id]:  # verbatim bullets of the clinician overview
        assert bullet in text
        assert bullet in ad["description"]


# ------------------------------------------------------------------------------- docs


def test_terminology_doc_lists_every_valueset() -> None:
    doc = (DOCS / "terminology.md").read_text(encoding="utf-8")
    for path in VS_FILES:
        assert f"`{load(path)['id']}`" in doc


def test_clinical_review_lists_every_unverified_code() -> None:
    doc = (DOCS / "clinical-review.md").read_text(encoding="utf-8")
    for path in VS_FILES:
        res = load(path)
        for c in res["expansion"]["contains"]:
            if tier_of(c) == "UNVERIFIED":
                assert c["code"] in doc
                assert res["id"] in doc


# ------------------------------------------------------- Revision 2 families (R2.1-R2.4)

# R2.2: the ICD-10-CM categories of each family, exactly (is-a filters, one include each)
R2_ICD_FAMILIES = {
    "vs-injury-head-neck-back": {f"S0{i}" for i in range(10)}
    | {f"S1{i}" for i in range(10) if i != 8}  # S18 does not exist in ICD-10-CM
    | {"S22.0", "S23.0", "S23.1", "S23.3", "S24", "S29.012"}
    | {"S30.0", "S31.0", "S32.0", "S33.0", "S33.1", "S33.5", "S34", "S39.0", "S39.92"},
    "vs-neuro-symptoms": {"R20", "R53.1", "M62.81", "R29.810", "R29.818", "R26.0", "R26.1"}
    | {"G83.4", "G95.2"},
    "vs-swelling-skin": {"R22", "R60.0", "L53.9", "L03", "I80", "I82.4", "I82.6", "T79.A", "M79.A"},
    "vs-heart-block": {"I44", "I45"},
    "vs-arrhythmia": {"I47", "I48", "I49"},
    "vs-heart-failure": {"I50"},
    "vs-hyperthyroidism": {"E05"},
    "vs-myocardial-infarction": {"I21", "I22"},
    "vs-pregnancy": {"O09", "Z33.1", "Z34", "Z3A"}
    | {f"O1{i}" for i in range(7)}
    | {f"O2{i}" for i in range(10) if i != 7}  # O27 does not exist
    | {f"O3{i}" for i in range(7)}  # O37-O39 do not exist
    | {f"O4{i}" for i in range(9)},
    "vs-stroke": {"I60", "I61", "I62", "I63"},
    "vs-stroke-sequela": {"I69"},
}


@pytest.mark.parametrize("vs_id", sorted(R2_ICD_FAMILIES))
def test_r2_icd_families_are_exactly_the_listed_categories(vs_id: str) -> None:
    res = vs(vs_id)
    assert compose_filters(res) == {(ICD, c) for c in R2_ICD_FAMILIES[vs_id]}
    for inc in res["compose"]["include"]:
        if inc["system"] == ICD:  # intensional only: no hand-listed ICD-10-CM leaves
            assert "concept" not in inc
            assert [f["op"] for f in inc["filter"]] == ["is-a"]
            assert tier_of(inc) == "V1"  # the CMS tabular list


@pytest.mark.parametrize("vs_id", sorted(R2_ICD_FAMILIES))
def test_r2_snomed_includes_name_their_parent(vs_id: str) -> None:
    """R2.3: each SNOMED CT include says which parent concept it enumerates."""
    for inc in vs(vs_id)["compose"]["include"]:
        if inc["system"] == SCT:
            parents = [e for e in inc.get("extension", []) if e["url"] == PARENT_EXT]
            assert len(parents) == 1, inc
            coding = parents[0]["valueCoding"]
            assert coding["system"] == SCT and coding["code"] and coding["display"]


# Descendants the spec names only by their category (or SNOMED codes R2.2/R2.3 name): members.
R2_MEMBERS = (
    [
        ("vs-injury-head-neck-back", ICD, c)
        for c in ("S22.009A", "S24.109A", "S23.3XXA", "S29.012A", "S32.009A", "S34.109A")
        + ("S06.0X0A", "S13.4XXA", "S39.92XA", "S33.5XXA", "S31.000A", "S30.0XXA")
    ]
    + [
        ("vs-neuro-symptoms", ICD, c)
        for c in ("G83.4", "G95.20", "R20.2", "R26.1", "R29.810", "R29.818", "R53.1", "M62.81")
    ]
    + [
        ("vs-swelling-skin", ICD, c)
        for c in ("I82.401", "L03.115", "I80.10", "T79.A11A", "M79.A21", "R22.41", "R60.0", "L53.9")
    ]
    + [
        ("vs-arrhythmia", ICD, "I48.91"),
        ("vs-arrhythmia", ICD, "I49.9"),
        ("vs-arrhythmia", ICD, "I47.10"),
        ("vs-heart-block", ICD, "I45.81"),
        ("vs-heart-block", ICD, "I44.2"),
        ("vs-heart-failure", ICD, "I50.32"),
        ("vs-hyperthyroidism", ICD, "E05.00"),
        ("vs-myocardial-infarction", ICD, "I21.01"),
        ("vs-myocardial-infarction", ICD, "I22.0"),
    ]
    + [
        ("vs-pregnancy", ICD, c)
        for c in ("O09.90", "Z34.90", "O24.410", "Z3A.20", "Z33.1", "O36.80X0", "O10.011", "O48.0")
    ]
    + [("vs-stroke", ICD, c) for c in ("I61.9", "I60.9", "I62.00", "I63.9")]
    + [
        ("vs-stroke-sequela", ICD, "I69.354"),
        # SNOMED CT codes R2.2 names, and the spec's own §3.1 codes
        ("vs-swelling-skin", SCT, "128053003"),
        ("vs-swelling-skin", SCT, "128045006"),
        ("vs-swelling-skin", SCT, "65124004"),
        ("vs-swelling-skin", SCT, "247441003"),
        ("vs-arrhythmia", SCT, "49436004"),
        ("vs-arrhythmia", SCT, "698247007"),
        ("vs-heart-failure", SCT, "84114007"),
        ("vs-heart-failure", SCT, "42343007"),
        ("vs-myocardial-infarction", SCT, "401303003"),
        ("vs-myocardial-infarction", SCT, "22298006"),
        ("vs-hyperthyroidism", SCT, "353295004"),
        ("vs-hyperthyroidism", SCT, "34486009"),
        ("vs-heart-block", SCT, "233916004"),
        ("vs-injury-head-neck-back", SCT, "712893003"),
        ("vs-injury-head-neck-back", SCT, "39848009"),
        ("vs-neuro-symptoms", SCT, "44077006"),
        ("vs-pregnancy", SCT, "77386006"),
        ("vs-pregnancy", SCT, "72892002"),
        ("vs-stroke", SCT, "230690007"),
        ("vs-stroke", SCT, "274100004"),
    ]
)

# Close negatives: neighbours of each family that R2.2 leaves out.
R2_NOT_MEMBERS = (
    [
        ("vs-injury-head-neck-back", ICD, c)
        for c in (
            "S36.116A",
            "S37.001A",
            "S30.11XA",
            "S31.100A",
            "S32.10XA",
            "S20.219A",
            "S22.31XA",
        )
        + ("S33.6XXA",)
    ]
    + [("vs-neuro-symptoms", ICD, c) for c in ("R26.2", "R29.6", "G83.5")]
    + [("vs-swelling-skin", ICD, c) for c in ("I82.501", "I82.90", "I83.90", "R23.2")]
    + [
        ("vs-arrhythmia", ICD, "R00.0"),
        ("vs-arrhythmia", ICD, "I46.9"),
        ("vs-heart-failure", ICD, "I11.9"),
        ("vs-heart-failure", ICD, "I51.7"),
        ("vs-myocardial-infarction", ICD, "I25.2"),
        ("vs-hyperthyroidism", ICD, "E03.9"),
    ]
    + [
        ("vs-pregnancy", ICD, c)
        for c in ("O03.9", "O80", "O90.89", "O99.89", "Z39.2", "O00.90", "O08.9", "O9A.119")
    ]
    + [
        ("vs-stroke", ICD, "G45.9"),
        ("vs-stroke", ICD, "S06.5X0A"),
        ("vs-stroke", ICD, "I67.89"),
        ("vs-pregnancy", SCT, "34801009"),  # ectopic pregnancy
        ("vs-pregnancy", SCT, "60001007"),  # not pregnant
        ("vs-arrhythmia", SCT, "11092001"),  # sinus tachycardia
        ("vs-myocardial-infarction", SCT, "32574007"),  # past MI without current symptoms
    ]
)


@pytest.mark.parametrize(("vs_id", "system", "code"), R2_MEMBERS)
def test_r2_required_members(vs_id: str, system: str, code: str) -> None:
    assert (system, code) in members(vs_id)


@pytest.mark.parametrize(("vs_id", "system", "code"), R2_NOT_MEMBERS)
def test_r2_close_negatives(vs_id: str, system: str, code: str) -> None:
    assert (system, code) not in members(vs_id)


def test_r2_codes_of_these_tests_are_real_icd10cm_codes() -> None:
    """A close negative that is not a code at all would pass for nothing."""
    icd10cm = pytest.importorskip("fhir_service.tools.icd10cm").icd10cm()
    for _vs, system, code in R2_MEMBERS + R2_NOT_MEMBERS:
        if system == ICD:
            assert icd10cm.display(code), code


# R2.4: ingredient (IN) codes, matched without display
R2_INGREDIENTS = [
    ("vs-maoi", "8123", "phenelzine"),
    ("vs-maoi", "10734", "tranylcypromine"),
    ("vs-maoi", "6011", "isocarboxazid"),
    ("vs-maoi", "9639", "selegiline"),
    ("vs-maoi", "6878", "methylene blue"),
    ("vs-cns-active", "39786", "venlafaxine"),
    ("vs-cns-active", "734064", "desvenlafaxine"),
    ("vs-cns-active", "72625", "duloxetine"),
    ("vs-cns-active", "1433212", "levomilnacipran"),
    ("vs-cns-active", "15996", "mirtazapine"),
    ("vs-cns-active", "10737", "trazodone"),
    ("vs-cns-active", "31565", "nefazodone"),
    ("vs-cns-active", "42347", "bupropion"),
    ("vs-cns-active", "704", "amitriptyline"),
    ("vs-cns-active", "36437", "sertraline"),
    ("vs-cns-active", "8123", "phenelzine"),
    ("vs-cyp1a2-strong-inhibitors", "2551", "ciprofloxacin"),
]


@pytest.mark.parametrize(("vs_id", "code", "ingredient"), R2_INGREDIENTS)
def test_r2_ingredient_codes(vs_id: str, code: str, ingredient: str) -> None:
    assert members_ingredients(vs_id)[code] == ingredient
    assert members(vs_id)[(RX, code)] in {"V1", "V2"}


def test_r2_maoi_names() -> None:
    names = set(ingredient_names(vs("vs-maoi")))
    assert names >= {"phenelzine", "tranylcypromine", "isocarboxazid", "selegiline"}
    assert names >= {"rasagiline", "safinamide", "linezolid", "methylene blue"}


def test_r2_antidepressants_are_cns_active() -> None:
    """Every SCD of VSAC Antidepressant Medication 196.12.1213 read (incl. SNRIs) is a member."""
    cns = members_ingredients("vs-cns-active")
    for code, ingredient in {
        "313581": "venlafaxine",
        "790264": "desvenlafaxine",
        "1433217": "levomilnacipran",
        "311725": "mirtazapine",
        "856377": "trazodone",
        "1098649": "nefazodone",
        "993541": "bupropion",
        "856834": "amitriptyline",
        "403970": "fluoxetine",  # fluoxetine/olanzapine counts as the antidepressant
    }.items():
        assert cns[code] == ingredient


def test_r2_ciprofloxacin_systemic_forms_only() -> None:
    res = vs("vs-cyp1a2-strong-inhibitors")
    cipro = {c["code"]: c["display"] for c in res["expansion"]["contains"]}
    for code in ("309309", "197511", "197512", "199370", "309308", "309310", "359383", "403921"):
        assert "ciprofloxacin" in cipro[code]
    assert not [d for d in cipro.values() if re.search(r"ophthalmic|otic|topical", d, re.I)]
