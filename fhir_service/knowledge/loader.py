"""Load ``definitions/`` at start-up, validate every artifact strictly, or refuse to start.

Checks (each failure names the file and the problem; all problems are reported at once):

1. the file parses as JSON and holds one knowledge resource (PlanDefinition, ActivityDefinition,
   Questionnaire, Library, ValueSet, CodeSystem);
2. it validates as FHIR R4 (``fhir.validate_resource``: R4B models, R4B-only elements refused);
3. the file is named ``<ResourceType>-<id>.json`` and ``url`` is
   ``<canonical base>/<ResourceType>/<id>``;
4. ``url|version`` is unique;
5. canonical references resolve: ``PlanDefinition.library``, ``action.definitionCanonical``
   (without a cycle of nested PlanDefinitions), ``memberOf()``/``ingredients()`` value sets,
   ``answerValueSet``; an ActivityDefinition ``kind`` is a request resource type; a ValueSet's
   compose uses only what membership honours (concept lists, ``concept is-a`` filters,
   excluded concepts); an action's ``override-reasons`` names a CodeSystem, and every top-level
   rule action whose card is a warning or critical (``priority`` urgent/asap/stat) offers
   override reasons (clinical-rules R2.6, docs/authoring.md);
6. every FHIRPath expression compiles; PlanDefinition, ActivityDefinition and Library logic
   (conditions, dynamicValues, variables) is ``text/fhirpath`` with simple dynamicValue paths;
   every ``%variable`` of a PlanDefinition, ActivityDefinition or Library expression is defined
   (engine variable, resource-type collection, a parameter or variable of any Library — names
   are global and must be unique — or a variable of that PlanDefinition), and variables do not
   depend on themselves.

See docs/authoring.md ("Checking your work") and https://hl7.org/fhir/R4/plandefinition.html.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_service import fhir
from fhir_service.canonical import CANONICAL_BASE
from fhir_service.engine.apply.plan_definition import OVERRIDE_REASONS_EXT
from fhir_service.engine.apply.values import is_simple_path
from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.engine.fhirpath.expressions import (
    ENGINE_VARIABLES,
    FHIRPATH,
    VARIABLE_EXT,
    iter_expressions,
    variables_of,
)
from fhir_service.engine.sdc.questionnaire_populate import compile_questionnaire
from fhir_service.engine.terminology.membership import Terminology, unsupported_compose
from fhir_service.knowledge.valueset_validation import share_repeated_values, validate_value_set

KNOWLEDGE_TYPES = (
    "PlanDefinition",
    "ActivityDefinition",
    "Questionnaire",
    "Library",
    "ValueSet",
    "CodeSystem",
)
#: ``memberOf('<url>')``/``ingredients('<url>')``, as a method (``code.memberOf(...)``) or as a
#: bare invocation on ``$this`` (``where(memberOf(...))``).
VALUESET_ARG_RE = re.compile(r"(?<![\w$])(?:memberOf|ingredients)\(\s*'([^']+)'\s*\)")
VARIABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: ``priority`` codes whose card is a warning or a critical (cards.INDICATORS)
OVERRIDABLE_PRIORITIES = frozenset({"urgent", "asap", "stat"})
#: R4 ``ActivityDefinition.kind`` (RequestResourceType) values the engine can build.
REQUEST_KINDS = frozenset(
    {
        "Appointment",
        "AppointmentResponse",
        "CarePlan",
        "Claim",
        "CommunicationRequest",
        "Contract",
        "DeviceRequest",
        "EnrollmentRequest",
        "ImmunizationRecommendation",
        "MedicationRequest",
        "NutritionOrder",
        "ServiceRequest",
        "SupplyRequest",
        "Task",
        "VisionPrescription",
    }
)


class KnowledgeError(Exception):
    """The knowledge base is not valid; ``problems`` lists every ``file: problem``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid knowledge base:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Artifact:
    """One knowledge resource as loaded (the JSON served as-is) and where it came from."""

    resource_type: str
    id: str
    url: str | None
    version: str | None
    resource: dict[str, Any]
    source: str


def read_artifacts(directory: Path) -> tuple[list[Artifact], list[str]]:
    """Read and validate each ``*.json`` file of ``directory`` (checks 1–3)."""
    artifacts: list[Artifact] = []
    problems: list[str] = []
    if not directory.is_dir():
        return [], [f"{directory}: definitions directory not found"]
    for path in sorted(directory.glob("*.json")):
        name = path.name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{name}: not valid JSON ({exc})")
            continue
        if not isinstance(data, dict) or data.get("resourceType") not in KNOWLEDGE_TYPES:
            problems.append(f"{name}: not a knowledge resource ({', '.join(KNOWLEDGE_TYPES)})")
            continue
        try:
            if data["resourceType"] == "ValueSet":  # large stored expansions: same rules, faster
                validate_value_set(data)
                share_repeated_values(data)
            else:
                fhir.validate_resource(data)
        except ValueError as exc:
            problems.append(f"{name}: invalid {data['resourceType']}: {exc}")
            continue
        rtype, rid = data["resourceType"], data.get("id")
        if not isinstance(rid, str) or name != f"{rtype}-{rid}.json":
            problems.append(f"{name}: file name must be {rtype}-<id>.json with id {rid!r}")
            continue
        url = data.get("url")
        expected = f"{CANONICAL_BASE}/{rtype}/{rid}"
        if url != expected:
            problems.append(f"{name}: url must be {expected} (got {url!r})")
            continue
        artifacts.append(Artifact(rtype, rid, url, data.get("version"), data, name))
    return artifacts, problems


def authored(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without a ValueSet's ``expansion``: the expansion command computes it from
    ``compose`` (tools/expand_valuesets.py, checked by the drift test), so walking it for
    expressions again would only cost start-up time on thousands of codes."""
    if resource.get("resourceType") == "ValueSet" and "expansion" in resource:
        return {k: v for k, v in resource.items() if k != "expansion"}
    return resource


def check_unique(artifacts: list[Artifact]) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for art in artifacts:
        key = f"{art.url}|{art.version or ''}"
        if key in seen:
            problems.append(f"{art.source}: url|version {key} already defined by {seen[key]}")
        seen[key] = art.source
    return problems


def _canonical_targets(artifacts: list[Artifact]) -> dict[str, str]:
    targets: dict[str, str] = {}
    for art in artifacts:
        if art.url:
            targets[art.url] = art.resource_type
            if art.version:
                targets[f"{art.url}|{art.version}"] = art.resource_type
    return targets


def _walk_actions(actions: list[dict[str, Any]], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for index, action in enumerate(actions or ()):
        here = f"{path}.action[{index}]"
        out.append((here, action))
        out.extend(_walk_actions(action.get("action") or [], here))
    return out


def check_references(artifacts: list[Artifact]) -> list[str]:
    """Check 5: canonical references resolve to an artifact of the right type."""
    targets = _canonical_targets(artifacts)
    problems: list[str] = []

    def need(art: Artifact, where: str, canonical: Any, types: tuple[str, ...]) -> None:
        found = targets.get(canonical) if isinstance(canonical, str) else None
        if found not in types:
            problems.append(
                f"{art.source}: {where} {canonical!r} does not resolve to a {'/'.join(types)}"
            )

    for art in artifacts:
        res = art.resource
        if art.resource_type == "PlanDefinition":
            for index, lib in enumerate(res.get("library") or ()):
                need(art, f"library[{index}]", lib, ("Library",))
            for path, action in _walk_actions(res.get("action") or [], "PlanDefinition"):
                if "definitionCanonical" in action:
                    need(
                        art,
                        f"{path}.definitionCanonical",
                        action["definitionCanonical"],
                        ("ActivityDefinition", "PlanDefinition"),
                    )
        problems += _content_problems(art) + _override_problems(art, targets)
        for path, expr in iter_expressions(authored(res), art.resource_type):
            for vs in VALUESET_ARG_RE.findall(expr["expression"]):
                need(art, f"{path} value set", vs, ("ValueSet",))
        if art.resource_type == "Questionnaire":
            contained = {f"#{c.get('id')}" for c in res.get("contained") or ()}
            for path, node in _iter_key(res, "answerValueSet", "Questionnaire"):
                if node not in contained:
                    need(art, path, node, ("ValueSet",))
    return problems


def _override_problems(art: Artifact, targets: Mapping[str, str]) -> list[str]:
    """``override-reasons`` names a CodeSystem; a warning/critical action must carry one."""
    if art.resource_type != "PlanDefinition":
        return []
    problems = []
    for path, action in _walk_actions(art.resource.get("action") or [], "PlanDefinition"):
        for ext in action.get("extension") or ():
            canonical = ext.get("valueCanonical")
            if ext.get("url") == OVERRIDE_REASONS_EXT and targets.get(canonical) != "CodeSystem":
                problems.append(
                    f"{art.source}: {path}.override-reasons {canonical!r} does not resolve to"
                    " a CodeSystem"
                )
    for index, action in enumerate(art.resource.get("action") or ()):
        offered = any(e.get("url") == OVERRIDE_REASONS_EXT for e in action.get("extension") or ())
        if action.get("priority") in OVERRIDABLE_PRIORITIES and not offered:
            problems.append(
                f"{art.source}: PlanDefinition.action[{index}] is a warning or critical card"
                " without an override-reasons extension"
            )
    return problems


def _content_problems(art: Artifact) -> list[str]:
    """What the engine could not honour in a ValueSet or an ActivityDefinition."""
    res = art.resource
    if art.resource_type == "ValueSet":
        return [f"{art.source}: {p}" for p in unsupported_compose(res)]
    if art.resource_type == "ActivityDefinition" and res.get("kind") not in REQUEST_KINDS:
        return [f"{art.source}: kind {res.get('kind')!r} is not an R4 request resource type"]
    return []


def check_plan_cycles(artifacts: list[Artifact]) -> list[str]:
    """A PlanDefinition may not reach itself through nested ``definitionCanonical``s."""
    by_canonical: dict[str, Artifact] = {}
    for art in artifacts:
        if art.resource_type == "PlanDefinition" and art.url:
            by_canonical[art.url] = art
            if art.version:
                by_canonical[f"{art.url}|{art.version}"] = art

    def nested(art: Artifact) -> list[Artifact]:
        out = []
        for _, action in _walk_actions(art.resource.get("action") or [], "PlanDefinition"):
            target = by_canonical.get(str(action.get("definitionCanonical")))
            if target is not None:
                out.append(target)
        return out

    problems: list[str] = []
    for start in by_canonical.values():
        seen: set[str] = set()
        pending = nested(start)
        while pending:
            current = pending.pop()
            if current is start:
                problems.append(f"{start.source}: nested PlanDefinitions lead back to itself")
                break
            if current.source not in seen:
                seen.add(current.source)
                pending.extend(nested(current))
    return sorted(set(problems))


def _iter_key(node: Any, key: str, path: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out.append((f"{path}.{k}", v))
            else:
                out.extend(_iter_key(v, key, f"{path}.{k}"))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out.extend(_iter_key(item, key, f"{path}[{i}]"))
    return out


def _logic_expressions(art: Artifact) -> list[tuple[str, Any]]:
    """The Expressions the PlanDefinition engine runs: conditions, dynamicValues, variables."""
    res = art.resource
    out: list[tuple[str, Any]] = []
    if art.resource_type == "PlanDefinition":
        for path, action in _walk_actions(res.get("action") or [], "PlanDefinition"):
            for index, condition in enumerate(action.get("condition") or ()):
                out.append((f"{path}.condition[{index}].expression", condition.get("expression")))
            for index, dv in enumerate(action.get("dynamicValue") or ()):
                out.append((f"{path}.dynamicValue[{index}].expression", dv.get("expression")))
    if art.resource_type == "ActivityDefinition":
        for index, dv in enumerate(res.get("dynamicValue") or ()):
            out.append(
                (f"ActivityDefinition.dynamicValue[{index}].expression", dv.get("expression"))
            )
    for index, ext in enumerate(res.get("extension") or ()):
        if ext.get("url") == VARIABLE_EXT:
            out.append((f"{art.resource_type}.extension[{index}]", ext.get("valueExpression")))
    return out


def _check_logic(art: Artifact) -> list[str]:
    """Engine logic is ``text/fhirpath``, variables are named, dynamicValue paths are simple."""
    problems: list[str] = []
    if art.resource_type not in ("PlanDefinition", "ActivityDefinition", "Library"):
        return problems
    for path, expr in _logic_expressions(art):
        if not isinstance(expr, dict) or not isinstance(expr.get("expression"), str):
            problems.append(f"{art.source}: {path}: an Expression with an expression is needed")
        elif expr.get("language") != FHIRPATH:
            problems.append(
                f"{art.source}: {path}: language {expr.get('language')!r} is not supported "
                f"(only {FHIRPATH})"
            )
        elif ".extension[" in path and not VARIABLE_NAME_RE.fullmatch(str(expr.get("name"))):
            problems.append(f"{art.source}: {path}: a variable needs a name (an identifier)")
    dynamic_values: list[tuple[str, Any]] = []
    if art.resource_type == "PlanDefinition":
        for path, action in _walk_actions(art.resource.get("action") or [], "PlanDefinition"):
            dynamic_values += [
                (f"{path}.dynamicValue[{i}]", dv)
                for i, dv in enumerate(action.get("dynamicValue") or ())
            ]
    elif art.resource_type == "ActivityDefinition":
        dynamic_values += [
            (f"ActivityDefinition.dynamicValue[{i}]", dv)
            for i, dv in enumerate(art.resource.get("dynamicValue") or ())
        ]
    for path, dv in dynamic_values:
        target = str(dv.get("path", "")).lstrip("%")
        if not is_simple_path(target):
            problems.append(f"{art.source}: {path}.path {dv.get('path')!r} is not a simple path")
    return problems


def _names(art: Artifact, kinds: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Names an artifact defines (Library parameters, variables), and the ones defined twice."""
    names: list[str] = []
    if "parameter" in kinds:
        names += [
            str(p.get("name"))
            for p in art.resource.get("parameter") or ()
            if p.get("use") == "in" and p.get("name")
        ]
    names += [str(v.get("name")) for v in variables_of(art.resource) if v.get("name")]
    twice = sorted({n for n in names if names.count(n) > 1})
    return names, twice


def _library_names(artifacts: list[Artifact]) -> tuple[dict[str, str], list[str]]:
    """Every Library parameter and variable name (global, unique) → the file defining it."""
    problems: list[str] = []
    library_names: dict[str, str] = {}
    for lib in (a for a in artifacts if a.resource_type == "Library"):
        names, twice = _names(lib, ("parameter", "variable"))
        if twice:
            problems.append(f"{lib.source}: names defined more than once: {twice}")
        clash = sorted(n for n in set(names) if n in library_names)
        if clash:
            owners = sorted({library_names[n] for n in clash})
            problems.append(
                f"{lib.source}: names already defined by another Library ({', '.join(owners)}): "
                f"{clash}"
            )
        for name in names:
            library_names.setdefault(name, lib.source)
    return library_names, problems


def _plan_names(art: Artifact, library_names: Mapping[str, str]) -> tuple[set[str], list[str]]:
    """A PlanDefinition's own variables (unique, not shadowing a Library name)."""
    problems: list[str] = []
    own, twice = _names(art, ("variable",))
    if twice:
        problems.append(f"{art.source}: variables defined more than once: {twice}")
    shadowing = sorted(set(own) & set(library_names))
    if shadowing:
        problems.append(f"{art.source}: variables already defined by a Library: {shadowing}")
    return set(own), problems


def check_expressions(artifacts: list[Artifact], compiler: FhirPathCompiler) -> list[str]:
    """Check 6: expressions compile; engine logic is FHIRPath; variables are all defined."""

    def known(name: str, defined: set[str]) -> bool:
        return name in defined or name in ENGINE_VARIABLES or fhir.is_resource_type(name)

    library_names, problems = _library_names(artifacts)
    for art in artifacts:
        if art.resource_type == "Questionnaire":
            try:  # SDC population expressions: launch contexts and variables in scope
                compile_questionnaire(art.resource, compiler)
            except ValueError as exc:
                problems.append(f"{art.source}: {exc}")
        problems += _check_logic(art)
        defined = set(library_names)
        if art.resource_type == "PlanDefinition":
            own, found = _plan_names(art, library_names)
            defined |= own
            problems += found
        check_vars = art.resource_type in ("PlanDefinition", "ActivityDefinition", "Library")
        for path, expr in iter_expressions(authored(art.resource), art.resource_type):
            try:
                compiled = compiler.compile(expr["expression"])
            except ValueError as exc:
                problems.append(f"{art.source}: {path}: {exc}")
                continue
            if check_vars:
                missing = sorted(n for n in compiled.variables if not known(n, defined))
                if missing:
                    problems.append(f"{art.source}: {path}: undefined variable(s) %{missing}")
        problems += _variable_cycles(art, compiler)
    return problems


def _variable_cycles(art: Artifact, compiler: FhirPathCompiler) -> list[str]:
    """Variables of one artifact (Library or PlanDefinition) may not depend on themselves."""
    graph: dict[str, frozenset[str]] = {}
    for var in variables_of(art.resource):
        try:
            graph[str(var.get("name"))] = compiler.compile(str(var.get("expression"))).variables
        except ValueError:
            continue  # already reported
    problems: list[str] = []
    for name in sorted(graph):
        pending, seen = list(graph[name]), set()
        while pending:
            current = pending.pop()
            if current == name:
                problems.append(f"{art.source}: variable %{name} depends on itself")
                break
            if current not in seen and current in graph:
                seen.add(current)
                pending.extend(graph[current])
    return problems


def load_definitions(directory: Path) -> tuple[list[Artifact], Terminology, FhirPathCompiler]:
    """Load, validate and compile ``directory``; raise ``KnowledgeError`` listing all problems."""
    artifacts, problems = read_artifacts(directory)
    problems += check_unique(artifacts)
    problems += check_references(artifacts)
    problems += check_plan_cycles(artifacts)
    terminology = Terminology(a.resource for a in artifacts if a.resource_type == "ValueSet")
    compiler = FhirPathCompiler(terminology)
    problems += check_expressions(artifacts, compiler)
    if problems:
        raise KnowledgeError(problems)
    return artifacts, terminology, compiler
