"""Stored expansions against the ICD-10-CM hierarchy: the drift test and the expansion command.

Every ``definitions/ValueSet-*.json`` (and the test fixtures') stores the expansion its compose
defines; this test recomputes each one from the FY2026 tabular list (``simple-icd-10-cm``) and
fails on any difference. Fix with ``make valuesets`` (``python -m
fhir_service.tools.expand_valuesets``) and review the diff. The start-up check
(``valueset_compose.expansion_problems``) catches an expansion its compose cannot have produced;
only this test can see a descendant that is missing.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fhir_service.engine.terminology.valueset_compose import ICD10CM
from fhir_service.tools.expand_valuesets import (
    ExpansionError,
    compute_expansion,
    drift,
    main,
    run,
)
from fhir_service.tools.icd10cm import Icd10Cm, icd10cm

ROOT = Path(__file__).resolve().parents[2]
SCT = "http://snomed.info/sct"
VER = "http://example.org/fhir/muscle-spasm/StructureDefinition/verification-status"
PARENT = "http://example.org/fhir/muscle-spasm/StructureDefinition/enumerated-parent"
STORED = [
    *sorted(ROOT.glob("definitions/ValueSet-*.json")),
    *sorted(ROOT.glob("tests/fixtures/definitions-mini/ValueSet-*.json")),
    *sorted(ROOT.glob("tests/fixtures/terminology-server/ValueSet-*.json")),
]


@pytest.fixture(scope="module")
def icd() -> Icd10Cm:
    return icd10cm()


@pytest.mark.parametrize("path", STORED, ids=[p.stem for p in STORED])
def test_stored_expansion_is_the_one_its_compose_defines(path: Path, icd: Icd10Cm) -> None:
    vs = json.loads(path.read_text(encoding="utf-8"))
    computed = drift(vs, icd)
    if computed is not None:
        stored = {c.get("code") for c in (vs.get("expansion") or {}).get("contains", [])}
        wanted = set(codes(computed))
        pytest.fail(
            f"{path.name}: the stored expansion differs from its compose (missing "
            f"{sorted(wanted - stored)[:10]}, not wanted {sorted(stored - wanted)[:10]}); run "
            "`make valuesets` (python -m fhir_service.tools.expand_valuesets) and review the diff"
        )


def test_the_package_ships_the_fy2026_tabular_list(icd: Icd10Cm) -> None:
    assert icd.version == "2026"
    assert icd.is_code("I48.91") and icd.display("I48.91") == "Unspecified atrial fibrillation"
    assert "S22.009A" in icd.descendants("S22.0")  # 7th-character codes are descendants
    assert not icd.is_code("S00-S09")  # a block
    assert not icd.is_code("I4891")  # the tabular list prints the dot


# --- compute_expansion --------------------------------------------------------------------------


def include(value: str, op: str = "is-a", **extra: Any) -> dict[str, Any]:
    return {
        "system": ICD10CM,
        "filter": [{"property": "concept", "op": op, "value": value}],
        **extra,
    }


def vs(*includes: dict[str, Any], exclude: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    compose: dict[str, Any] = {"include": list(includes)}
    if exclude:
        compose["exclude"] = exclude
    return {"resourceType": "ValueSet", "url": "http://x/ValueSet/v", "compose": compose}


def codes(expansion: dict[str, Any]) -> list[str]:
    return [c["code"] for c in expansion["contains"]]


def test_is_a_lists_the_code_and_every_descendant_in_tabular_order(icd: Icd10Cm) -> None:
    expansion = compute_expansion(vs(include("I48")), icd)
    assert codes(expansion) == ["I48", *icd.descendants("I48")]
    assert "I48.91" in codes(expansion)
    assert expansion["total"] == len(expansion["contains"])
    assert expansion["parameter"] == [
        {"name": "used-codesystem", "valueUri": "http://hl7.org/fhir/sid/icd-10-cm|2026"}
    ]
    af = next(c for c in expansion["contains"] if c["code"] == "I48.91")
    assert af == {"system": ICD10CM, "code": "I48.91", "display": "Unspecified atrial fibrillation"}


def test_descendent_of_leaves_out_the_code_itself(icd: Icd10Cm) -> None:
    assert codes(compute_expansion(vs(include("I48.1", "descendent-of")), icd)) == [
        "I48.11",
        "I48.19",
    ]


def test_excludes_and_duplicates(icd: Icd10Cm) -> None:
    value_set = vs(
        include("I48"),
        include("I48.9"),  # already in: listed once
        {"system": ICD10CM, "concept": [{"code": "I10"}]},
        exclude=[include("I48.1"), {"system": ICD10CM, "concept": [{"code": "I48.0"}]}],
    )
    listed = codes(compute_expansion(value_set, icd))
    assert listed[0] == "I48" and listed[-1] == "I10"
    assert not {"I48.0", "I48.1", "I48.11", "I48.19"} & set(listed)
    assert len(listed) == len(set(listed))


def test_filters_of_one_include_are_and_ed(icd: Icd10Cm) -> None:
    both = vs(
        {
            "system": ICD10CM,
            "filter": [
                {"property": "concept", "op": "is-a", "value": "I48"},
                {"property": "concept", "op": "is-a", "value": "I48.2"},
            ],
        }
    )
    assert codes(compute_expansion(both, icd)) == ["I48.2", "I48.20", "I48.21"]


def test_extensions_carried_to_the_entries(icd: Icd10Cm) -> None:
    tier = [{"url": VER, "valueCode": "V1"}]
    value_set = vs(
        include("T67.2", extension=[*tier, {"url": PARENT, "valueCoding": {"code": "x"}}]),
        {
            "system": SCT,
            "concept": [{"code": "87108006", "display": "Heat cramp", "extension": tier}],
        },
        {"system": ICD10CM, "concept": [{"code": "R25.2", "display": "Cramps"}]},
    )
    contains = compute_expansion(value_set, icd)["contains"]
    assert [c["code"] for c in contains] == [
        "T67.2",
        "T67.2XXA",
        "T67.2XXD",
        "T67.2XXS",
        "87108006",
        "R25.2",
    ]
    assert all(c["extension"] == tier for c in contains[:5])  # not the enumerated-parent
    assert contains[4]["display"] == "Heat cramp"
    assert contains[5] == {"system": ICD10CM, "code": "R25.2", "display": "Cramps"}  # as listed
    no_display = vs({"system": ICD10CM, "concept": [{"code": "R25.2"}]})
    assert compute_expansion(no_display, icd)["contains"][0]["display"] == "Cramp and spasm"


def test_the_identifier_follows_the_content(icd: Icd10Cm) -> None:
    first = compute_expansion(vs(include("I48")), icd)
    assert compute_expansion(vs(include("I48")), icd)["identifier"] == first["identifier"]
    assert compute_expansion(vs(include("I49")), icd)["identifier"] != first["identifier"]


@pytest.mark.parametrize(
    ("value_set", "words"),
    [
        (vs(include("I4891")), "is not an ICD-10-CM code or category"),
        (vs(include("S00-S09")), "is not an ICD-10-CM code or category"),
        (vs(include("S18")), "'S18' is not an ICD-10-CM code"),
        (vs({"system": ICD10CM, "concept": [{"code": "I48.99"}]}), "'I48.99'"),
        (
            vs({"system": SCT, "filter": [{"property": "concept", "op": "is-a", "value": "1"}]}),
            "filters on",
        ),
        (vs({"valueSet": ["http://x/ValueSet/other"]}), "valueSet"),
    ],
)
def test_what_cannot_be_expanded_is_refused(
    icd: Icd10Cm, value_set: dict[str, Any], words: str
) -> None:
    with pytest.raises(ExpansionError, match=words):
        compute_expansion(value_set, icd)


# --- the command ----------------------------------------------------------------------------------


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    for name in ("ValueSet-vs-arrhythmia.json", "ValueSet-vs-pain-score.json"):
        shutil.copy(ROOT / "definitions" / name, tmp_path / name)
    return tmp_path


def test_check_passes_on_stored_expansions_and_writes_nothing(definitions: Path) -> None:
    before = {p.name: p.read_bytes() for p in definitions.iterdir()}
    assert run(definitions, check=True, out=io.StringIO()) == 0
    assert run(definitions, out=io.StringIO()) == 0
    assert {p.name: p.read_bytes() for p in definitions.iterdir()} == before


def test_a_compose_edit_is_drift_until_the_command_runs(definitions: Path) -> None:
    path = definitions / "ValueSet-vs-arrhythmia.json"
    resource = json.loads(path.read_text())
    resource["compose"]["include"].append(include("I44.2"))
    path.write_text(json.dumps(resource, indent=2) + "\n")
    report = io.StringIO()
    assert run(definitions, check=True, out=report) == 1
    assert "ValueSet-vs-arrhythmia.json: stored expansion differs" in report.getvalue()
    assert main(["--definitions", str(definitions), "vs-arrhythmia"]) == 0
    written = json.loads(path.read_text())
    assert "I44.2" in codes(written["expansion"])
    assert written["expansion"]["timestamp"] != resource["expansion"]["timestamp"]
    assert written["compose"] == resource["compose"]  # only the expansion is rewritten
    assert run(definitions, check=True, out=io.StringIO()) == 0


def test_an_unknown_code_fails_the_command(definitions: Path) -> None:
    path = definitions / "ValueSet-vs-pain-score.json"
    resource = json.loads(path.read_text())
    resource["compose"]["include"].append(include("Z99.999"))
    path.write_text(json.dumps(resource))
    report = io.StringIO()
    assert run(definitions, out=report) == 2
    assert "'Z99.999' is not an ICD-10-CM code" in report.getvalue()
    assert json.loads(path.read_text()) == resource  # nothing written
