"""Generate ``docs/rules.md``, the rule catalogue, from the knowledge artifacts in ``definitions/``.

One row per rule PlanDefinition (``type`` ``eca-rule``): rule id, title, hooks, indicator, card
summary, inputs (the ValueSets, parameters and record data its applicability conditions use,
found by scanning the condition expressions and, transitively, the Library and PlanDefinition
variables they read) and the sources it cites (``relatedArtifact``). A section per rule then lists
its conditions as written.

Usage (from the project root)::

    .venv/bin/python scripts/gen_rule_catalogue.py          # rewrite docs/rules.md
    .venv/bin/python scripts/gen_rule_catalogue.py --check  # exit 1 when docs/rules.md is stale

``tests/unit/test_rule_catalogue.py`` regenerates the page in memory and fails when it differs.
Pure JSON + regular expressions: no engine import, so the page can be rebuilt even when the
knowledge base does not load.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = ROOT / "definitions"
OUTPUT = ROOT / "docs" / "rules.md"
COMMAND = ".venv/bin/python scripts/gen_rule_catalogue.py"

VARIABLE_EXT = "http://hl7.org/fhir/StructureDefinition/variable"
CDS_ENDPOINT_EXT = "http://hl7.org/fhir/StructureDefinition/cqf-cdsHooksEndpoint"
RULE_SYSTEM = "http://example.org/fhir/muscle-spasm/CodeSystem/rule"
VARIABLE_RE = re.compile(r"%(?:`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*))")
VALUESET_RE = re.compile(r"'(https?://[^'|]+/ValueSet/[^'|]+)(?:\|[^']*)?'")
INDICATORS = {"routine": "info", "urgent": "warning", "asap": "warning", "stat": "critical"}
ENGINE_NAMES = {
    "patient",
    "now",
    "today",
    "draftOrders",
    "triggers",
    "context",
    "resource",
    "rootResource",
    "ucum",
    "sct",
    "loinc",
}


def _load(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            out.append(data)
    return out


def _variables(resource: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for ext in resource.get("extension") or ():
        value = ext.get("valueExpression") if isinstance(ext, Mapping) else None
        if ext.get("url") == VARIABLE_EXT and isinstance(value, Mapping):
            out[str(value.get("name"))] = str(value.get("expression") or "")
    return out


def _is_rule(resource: Mapping[str, Any]) -> bool:
    if resource.get("resourceType") != "PlanDefinition":
        return False
    if any(e.get("url") == CDS_ENDPOINT_EXT for e in resource.get("extension") or ()):
        return False
    codes = {c.get("code") for c in (resource.get("type") or {}).get("coding") or ()}
    return "eca-rule" in codes


def _conditions(action: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(description, expression) of every applicability condition of an action and its children."""
    for condition in action.get("condition") or ():
        expr = condition.get("expression") or {}
        if condition.get("kind") == "applicability" and isinstance(expr.get("expression"), str):
            yield str(expr.get("description") or ""), expr["expression"]
    for child in action.get("action") or ():
        yield from _conditions(child)


def _rule_id(plan: Mapping[str, Any], action: Mapping[str, Any]) -> str:
    for concept in action.get("code") or ():
        for coding in concept.get("coding") or ():
            if coding.get("system") == RULE_SYSTEM and coding.get("code"):
                return str(coding["code"])
    return str(plan.get("id", "")).upper()


def _hooks(action: Mapping[str, Any]) -> list[str]:
    return [
        str(t["name"])
        for t in action.get("trigger") or ()
        if t.get("type") == "named-event" and t.get("name")
    ]


def _templated(action: Mapping[str, Any], path: str) -> bool:
    return any(
        str(dv.get("path", "")).lstrip("%") == path for dv in action.get("dynamicValue") or ()
    )


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


class Catalogue:
    """The knowledge base as the catalogue sees it."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.library_variables: dict[str, str] = {}
        self.parameters: set[str] = set()
        self.value_sets: dict[str, str] = {}
        self.rule_order: list[str] = []
        self.rules: list[dict[str, Any]] = []
        for res in resources:
            rtype = res.get("resourceType")
            if rtype == "Library":
                self.library_variables.update(_variables(res))
                self.parameters |= {str(p.get("name")) for p in res.get("parameter") or ()}
            elif rtype == "ValueSet" and res.get("url"):
                self.value_sets[str(res["url"])] = str(res.get("id"))
            elif rtype == "CodeSystem" and res.get("url") == RULE_SYSTEM:
                self.rule_order = [str(c.get("code")) for c in res.get("concept") or ()]
            elif _is_rule(res):
                self.rules.append(res)

    def inputs(self, expressions: list[str], local: Mapping[str, str]) -> tuple[set[str], ...]:
        """ValueSet ids, parameter names and record types the expressions read, transitively."""
        value_sets: set[str] = set()
        parameters: set[str] = set()
        data: set[str] = set()
        seen: set[str] = set()
        pending = list(expressions)
        while pending:
            expression = pending.pop()
            for url in VALUESET_RE.findall(expression):
                value_sets.add(self.value_sets.get(url, url.rsplit("/", 1)[-1]))
            for a, b in VARIABLE_RE.findall(expression):
                name = a or b
                if name in seen:
                    continue
                seen.add(name)
                if name in local:
                    pending.append(local[name])
                elif name in self.library_variables:
                    pending.append(self.library_variables[name])
                elif name in self.parameters:
                    parameters.add(name)
                elif name not in ENGINE_NAMES:
                    data.add(name)
        return value_sets, parameters, data

    def sort_key(self, rule_id: str) -> tuple[int, str]:
        order = (
            self.rule_order.index(rule_id) if rule_id in self.rule_order else len(self.rule_order)
        )
        return order, rule_id

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for plan in self.rules:
            actions = [a for a in plan.get("action") or () if isinstance(a, Mapping)]
            if not actions:
                continue
            local = _variables(plan)
            conditions = [c for a in actions for c in _conditions(a)]
            value_sets, parameters, data = self.inputs([e for _, e in conditions], local)
            hooks: list[str] = []
            for action in actions:
                hooks += [h for h in _hooks(action) if h not in hooks]
            summaries = []
            for action in actions:
                title = _cell(action.get("title") or "")
                summaries.append(
                    title + (" *(templated)*" if _templated(action, "action.title") else "")
                )
            sources = []
            for art in plan.get("relatedArtifact") or ():
                if art.get("type") != "citation":
                    continue
                label = _cell(art.get("display") or art.get("label") or art.get("citation") or "")
                sources.append(f"[{label}]({art['url']})" if art.get("url") else label)
            rows.append(
                {
                    "id": _rule_id(plan, actions[0]),
                    "plan": str(plan.get("id")),
                    "title": _cell(plan.get("title") or ""),
                    "description": _cell(plan.get("description") or ""),
                    "hooks": hooks,
                    "indicators": list(
                        dict.fromkeys(
                            INDICATORS.get(str(a.get("priority")), "info") for a in actions
                        )
                    ),
                    "summaries": summaries,
                    "value_sets": sorted(value_sets),
                    "parameters": sorted(parameters),
                    "data": sorted(data),
                    "sources": sources,
                    "conditions": conditions,
                }
            )
        return sorted(rows, key=lambda r: self.sort_key(r["id"]))


def render(directory: Path = DEFINITIONS) -> str:
    """The whole ``docs/rules.md`` for the artifacts in ``directory``."""
    catalogue = Catalogue(_load(directory))
    rows = catalogue.rows()
    lines = [
        "# Rule catalogue",
        "",
        "<!-- Generated from definitions/ by scripts/gen_rule_catalogue.py: "
        "do not edit by hand. -->",
        "",
        f"Generated from the rule PlanDefinitions in `definitions/` ({len(rows)} rules). "
        f"Regenerate with `{COMMAND}`; `tests/unit/test_rule_catalogue.py` fails when this "
        "page is out of date.",
        "",
        "Columns: **Hooks** = the `named-event` triggers; **Indicator** = the card indicator "
        "(`priority` routine → info, urgent → warning, stat → critical); **Summary** = the card "
        "summary (*templated*: filled in per call); **Inputs** = the ValueSets (`memberOf`), "
        "parameters (§1.3, Library `parameter`) and record data (`%Condition`, ...) read by the "
        "applicability conditions, following every Library/PlanDefinition variable they use; "
        "**Sources** = the citations of the PlanDefinition (`relatedArtifact`).",
        "",
        "| Rule | Title | Hooks | Indicator | Summary | Inputs | Sources |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        inputs = []
        if row["value_sets"]:
            inputs.append("ValueSets: " + ", ".join(f"`{v}`" for v in row["value_sets"]))
        if row["parameters"]:
            inputs.append("parameters: " + ", ".join(f"`{p}`" for p in row["parameters"]))
        if row["data"]:
            inputs.append("data: " + ", ".join(row["data"]))
        lines.append(
            f"| [{row['id']}](#{row['plan']}) | {row['title']} | {', '.join(row['hooks'])} | "
            f"{' / '.join(row['indicators'])} | {'<br>'.join(row['summaries'])} | "
            f"{'<br>'.join(inputs)} | {'<br>'.join(row['sources'])} |"
        )
    precedence: dict[str, list[str]] = {}
    for row in rows:
        for description, _ in row["conditions"]:
            if description.startswith("§1.4"):
                precedence.setdefault(_cell(description), []).append(row["id"])
    if precedence:
        lines += [
            "",
            "## Precedence (clinical-rules §1.4)",
            "",
            "Each rule carries its precedence as an applicability condition (descriptions "
            "starting with §1.4), so a suppressed rule simply does not apply:",
            "",
        ]
        for description in sorted(precedence):
            lines.append(f"- {description} — in {', '.join(precedence[description])}")
    lines.append("")
    lines.append("## Conditions by rule")
    for row in rows:
        lines += ["", f"### {row['plan']}", "", f"**{row['title']}** — {row['description']}", ""]
        for description, expression in row["conditions"]:
            label = f"{_cell(description)}: " if description else ""
            lines.append(f"- {label}`{' '.join(expression.split())}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/rules.md is stale")
    parser.add_argument("--definitions", type=Path, default=DEFINITIONS)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(args.definitions)
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            print(f"{args.output} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
