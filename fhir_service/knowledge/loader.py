"""Load ``definitions/`` at start-up, validate every artifact strictly, or refuse to start.

Checks (each failure names the file and the problem; all problems are reported at once):

1. the file parses as JSON and holds one knowledge resource (PlanDefinition, ActivityDefinition,
   Questionnaire, Library, ValueSet, CodeSystem);
2. it validates as FHIR R4 (``fhir.validate_resource``: R4B models, R4B-only elements refused);
3. the file is named ``<ResourceType>-<id>.json`` and ``url`` ends in ``/<ResourceType>/<id>``;
4. ``url|version`` is unique;
5. canonical references resolve: ``PlanDefinition.library``, ``action.definitionCanonical``,
   ``memberOf()``/``ingredients()`` value sets, ``answerValueSet``;
6. every FHIRPath expression compiles, and every ``%variable`` of a PlanDefinition or Library
   expression is defined (engine variable, resource-type collection, a parameter or variable of
   any Library — names are global and must be unique — or a variable of that PlanDefinition).

See design-anchors.md lesson 5 and https://hl7.org/fhir/R4/plandefinition.html.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_service import fhir
from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.engine.questionnaire_populate import compile_questionnaire
from fhir_service.engine.terminology import Terminology
from fhir_service.knowledge.expressions import iter_expressions, parameter_defaults, variables_of

KNOWLEDGE_TYPES = (
    "PlanDefinition",
    "ActivityDefinition",
    "Questionnaire",
    "Library",
    "ValueSet",
    "CodeSystem",
)
#: Variables the engine binds for every PlanDefinition evaluation (README "Writing rules").
ENGINE_VARIABLES = frozenset({"patient", "now", "today", "draftOrders", "triggers"})
VALUESET_ARG_RE = re.compile(r"\.(?:memberOf|ingredients)\(\s*'([^']+)'\s*\)")


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


def _is_resource_type(name: str) -> bool:
    try:
        fhir.model_class(name)
    except KeyError:
        return False
    return True


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
            fhir.validate_resource(data)
        except ValueError as exc:
            problems.append(f"{name}: invalid {data['resourceType']}: {exc}")
            continue
        rtype, rid = data["resourceType"], data.get("id")
        if not isinstance(rid, str) or name != f"{rtype}-{rid}.json":
            problems.append(f"{name}: file name must be {rtype}-<id>.json with id {rid!r}")
            continue
        url = data.get("url")
        if not isinstance(url, str) or not url.endswith(f"/{rtype}/{rid}"):
            problems.append(f"{name}: url must end with /{rtype}/{rid} (got {url!r})")
            continue
        artifacts.append(Artifact(rtype, rid, url, data.get("version"), data, name))
    return artifacts, problems


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
        for path, expr in iter_expressions(res, art.resource_type):
            for vs in VALUESET_ARG_RE.findall(expr["expression"]):
                need(art, f"{path} value set", vs, ("ValueSet",))
        if art.resource_type == "Questionnaire":
            contained = {f"#{c.get('id')}" for c in res.get("contained") or ()}
            for path, node in _iter_key(res, "answerValueSet", "Questionnaire"):
                if node not in contained:
                    need(art, path, node, ("ValueSet",))
    return problems


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


def check_expressions(artifacts: list[Artifact], compiler: FhirPathCompiler) -> list[str]:
    """Check 6: expressions compile; PlanDefinition/Library variables are all defined."""
    problems: list[str] = []
    libraries = {a.url: a for a in artifacts if a.resource_type == "Library"}
    type_names: dict[str, bool] = {}

    def known(name: str, defined: set[str]) -> bool:
        if name in defined or name in ENGINE_VARIABLES:
            return True
        if name not in type_names:
            type_names[name] = _is_resource_type(name)
        return type_names[name]

    library_names: set[str] = set()
    for lib in libraries.values():
        names = set(parameter_defaults(lib.resource)) | {
            str(v.get("name")) for v in variables_of(lib.resource)
        }
        clash = names & library_names
        if clash:
            problems.append(
                f"{lib.source}: names already defined by another Library: {sorted(clash)}"
            )
        library_names |= names
    for art in artifacts:
        if art.resource_type == "Questionnaire":
            try:  # SDC population expressions: launch contexts and variables in scope
                compile_questionnaire(art.resource, compiler)
            except ValueError as exc:
                problems.append(f"{art.source}: {exc}")
        defined = set(library_names)
        if art.resource_type == "PlanDefinition":
            defined |= {str(v.get("name")) for v in variables_of(art.resource)}
        check_vars = art.resource_type in ("PlanDefinition", "Library")
        for path, expr in iter_expressions(art.resource, art.resource_type):
            try:
                compiled = compiler.compile(expr["expression"])
            except ValueError as exc:
                problems.append(f"{art.source}: {path}: {exc}")
                continue
            if check_vars:
                missing = sorted(n for n in compiled.variables if not known(n, defined))
                if missing:
                    problems.append(f"{art.source}: {path}: undefined variable(s) %{missing}")
    return problems


def load_definitions(directory: Path) -> tuple[list[Artifact], Terminology, FhirPathCompiler]:
    """Load, validate and compile ``directory``; raise ``KnowledgeError`` listing all problems."""
    artifacts, problems = read_artifacts(directory)
    problems += check_unique(artifacts)
    problems += check_references(artifacts)
    terminology = Terminology(a.resource for a in artifacts if a.resource_type == "ValueSet")
    compiler = FhirPathCompiler(terminology)
    problems += check_expressions(artifacts, compiler)
    if problems:
        raise KnowledgeError(problems)
    return artifacts, terminology, compiler
