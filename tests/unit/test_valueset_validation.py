"""The fast strict validation of large ValueSets agrees with the R4B model, entry by entry.

``validate_value_set`` checks expansion entries by FHIR datatype rules and by one model
validation per distinct shape; whatever an entry holds, it must accept exactly what
``fhir.validate_resource`` accepts (and name the problem when it refuses).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_service import fhir
from fhir_service.knowledge.valueset_validation import share_repeated_values, validate_value_set

ROOT = Path(__file__).resolve().parents[2]
STORED = json.loads((ROOT / "definitions" / "ValueSet-vs-injury-head-neck-back.json").read_text())
#: 400 entries of a stored expansion, SNOMED CT and ICD-10-CM (the model is slow on all 5,000)
LARGE = {
    **STORED,
    "expansion": {
        **STORED["expansion"],
        "total": 400,
        "contains": STORED["expansion"]["contains"][:400],
    },
}
VER = "http://example.org/fhir/muscle-spasm/StructureDefinition/verification-status"


def model_accepts(data: dict[str, Any]) -> bool:
    try:
        fhir.validate_resource(data)
    except ValueError:
        return False
    return True


def fast_accepts(data: dict[str, Any]) -> bool:
    try:
        validate_value_set(data)
    except ValueError:
        return False
    return True


def test_the_stored_large_expansion_is_valid() -> None:
    assert len(STORED["expansion"]["contains"]) > 1000
    assert fast_accepts(STORED)
    assert fast_accepts(LARGE) and model_accepts(LARGE)


@pytest.mark.parametrize(
    "change",
    [
        {"code": " S00.0"},  # leading whitespace: not a FHIR code
        {"code": "S00  0"},  # two spaces
        {"code": ""},
        {"code": 7},
        {"display": ""},
        {"display": ["x"]},
        {"version": ""},
        {"system": "has space"},
        {"system": 3},
        {"inactive": "yes"},
        {"abstract": "no"},
        {"unknownElement": 1},
        {"extension": [{"url": VER}]},  # an extension without a value
        {"extension": [{"valueCode": "V1"}]},  # without its url
        {"extension": {"url": VER, "valueCode": "V1"}},  # not a list
        {"contains": [{"system": "s", "code": " bad"}]},  # nested, invalid
        {"designation": [{"value": ""}]},
        {"code": "S00.0", "display": "Superficial injury\tof scalp"},  # valid
        {"inactive": True},  # valid
        {"extension": [{"url": VER, "valueCode": "V2"}]},  # valid
    ],
)
@pytest.mark.parametrize("position", [0, 399])
def test_one_changed_entry_is_judged_as_the_model_judges_it(
    change: dict[str, Any], position: int
) -> None:
    data = copy.deepcopy(LARGE)
    data["expansion"]["contains"][position].update(change)
    assert fast_accepts(data) is model_accepts(data), change


def test_a_refused_entry_is_named() -> None:
    data = copy.deepcopy(LARGE)
    data["expansion"]["contains"][123]["code"] = "S06  0"
    with pytest.raises(ValueError, match=r"expansion.contains.123.code"):
        validate_value_set(data)
    data = copy.deepcopy(LARGE)
    data["expansion"]["contains"][123]["unknownElement"] = 1
    with pytest.raises(ValueError, match=r"contains.123.unknownElement"):
        validate_value_set(data)


def test_the_rest_of_the_value_set_is_still_validated() -> None:
    data = copy.deepcopy(LARGE)
    data["date"] = "last week"
    assert not fast_accepts(data)
    data = copy.deepcopy(LARGE)
    data["expansion"]["timestamp"] = "yesterday"
    assert not fast_accepts(data)


def test_equal_values_are_shared_and_unchanged() -> None:
    data = copy.deepcopy(LARGE)
    share_repeated_values(data)
    assert data == LARGE
    contains = data["expansion"]["contains"]
    tiers = {id(c["extension"]) for c in contains if "extension" in c}
    assert len(tiers) <= len({json.dumps(c.get("extension")) for c in contains})
    assert len({id(c["system"]) for c in contains}) == len({c["system"] for c in contains}) == 2
