"""docs/rules.md is generated from definitions/ and must be up to date.

Regenerate with ``.venv/bin/python scripts/gen_rule_catalogue.py``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_rule_catalogue", ROOT / "scripts" / "gen_rule_catalogue.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rule_plans() -> list[dict]:
    out = []
    for path in sorted((ROOT / "definitions").glob("PlanDefinition-*.json")):
        plan = json.loads(path.read_text(encoding="utf-8"))
        codes = {c.get("code") for c in (plan.get("type") or {}).get("coding") or ()}
        if "eca-rule" in codes:
            out.append(plan)
    return out


def test_rule_catalogue_is_up_to_date() -> None:
    expected = _generator().render(ROOT / "definitions")
    current = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/rules.md is out of date with definitions/: "
        "run .venv/bin/python scripts/gen_rule_catalogue.py"
    )


def test_rule_catalogue_has_one_row_per_rule_plan_definition() -> None:
    text = _generator().render(ROOT / "definitions")
    table = [line for line in text.splitlines() if line.startswith("| [")]
    plans = _rule_plans()
    assert len(table) == len(plans)
    for plan in plans:
        assert f"(#{plan['id']})" in text


def test_rule_catalogue_finds_inputs_through_library_variables(tmp_path: Path) -> None:
    library = {
        "resourceType": "Library",
        "id": "lib",
        "parameter": [{"name": "P_DAYS", "use": "in", "type": "integer"}],
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/variable",
                "valueExpression": {
                    "name": "recent",
                    "language": "text/fhirpath",
                    "expression": "%Condition.where(code.memberOf('http://x.org/ValueSet/vs-a') "
                    "and clinicalDate().duration(today(), 'days') <= %P_DAYS)",
                },
            }
        ],
    }
    value_set = {"resourceType": "ValueSet", "id": "vs-a", "url": "http://x.org/ValueSet/vs-a"}
    plan = {
        "resourceType": "PlanDefinition",
        "id": "x-01",
        "title": "X-01 Example",
        "type": {"coding": [{"code": "eca-rule"}]},
        "relatedArtifact": [{"type": "citation", "display": "Seed", "url": "https://x.org/s"}],
        "action": [
            {
                "title": "Example | summary",
                "priority": "urgent",
                "code": [
                    {
                        "coding": [
                            {
                                "system": "http://example.org/fhir/muscle-spasm/CodeSystem/rule",
                                "code": "X-01",
                            }
                        ]
                    }
                ],
                "trigger": [{"type": "named-event", "name": "patient-view"}],
                "condition": [
                    {
                        "kind": "applicability",
                        "expression": {
                            "language": "text/fhirpath",
                            "expression": "%recent.exists()",
                        },
                    }
                ],
            }
        ],
    }
    for name, resource in (
        ("Library-lib", library),
        ("ValueSet-vs-a", value_set),
        ("PlanDefinition-x-01", plan),
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps(resource), encoding="utf-8")
    text = _generator().render(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| [X-01]"))
    assert "`vs-a`" in row and "`P_DAYS`" in row and "data: Condition" in row
    assert (
        "| warning |" in row and "Example \\| summary" in row and "[Seed](https://x.org/s)" in row
    )
