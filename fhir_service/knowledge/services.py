"""CDS Hooks services derived from the PlanDefinitions (never hand-written).

* A **service** is a PlanDefinition carrying the CDS-on-FHIR extension ``cqf-cdsHooksEndpoint``
  (value = the service id); its ``title``/``description`` are the discovery entry's, its
  action's ``named-event`` trigger is the hook, and ``usageRequirements`` comes from the
  ``usage`` element.
* The **rules** a service runs are the ``eca-rule`` PlanDefinitions with an action triggered by
  the same hook (one rule per PlanDefinition).
* Its **prefetch** is the set of Library ``dataRequirement`` query patterns
  (``cqf-fhirQueryPattern``, key from our ``prefetch-key`` extension) whose type the service's
  rules actually read — found by following every ``%variable`` their expressions use.

Spec: HL7 cds-hooks-clinical-reasoning (CDS on FHIR), CDS Hooks 2.0 discovery and prefetch
(https://cds-hooks.hl7.org/2.0/#discovery).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_service import fhir
from fhir_service.canonical import EXT_BASE
from fhir_service.engine.apply.plan_definition import hooks_of, plan_hooks
from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.engine.fhirpath.expressions import iter_expressions, variables_of
from fhir_service.knowledge.loader import Artifact
from fhir_service.knowledge.repository import KnowledgeBase

CDS_ENDPOINT_EXT = "http://hl7.org/fhir/StructureDefinition/cqf-cdsHooksEndpoint"
QUERY_PATTERN_EXT = "http://hl7.org/fhir/StructureDefinition/cqf-fhirQueryPattern"
PREFETCH_KEY_EXT = f"{EXT_BASE}/prefetch-key"


@dataclass(frozen=True)
class PrefetchTemplate:
    key: str
    query: str
    resource_type: str


@dataclass
class CdsService:
    """One discovery entry and what it evaluates."""

    id: str
    hook: str
    title: str
    description: str
    usage_requirements: str | None
    rules: list[Artifact] = field(default_factory=list)
    prefetch: list[PrefetchTemplate] = field(default_factory=list)

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
        }
        if self.prefetch:
            entry["prefetch"] = {t.key: t.query for t in self.prefetch}
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry


def _extension(resource: dict[str, Any], url: str) -> Any:
    for ext in resource.get("extension") or ():
        if ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


def data_requirements(knowledge: KnowledgeBase) -> list[PrefetchTemplate]:
    out = []
    for lib in knowledge.of_type("Library"):
        for req in lib.resource.get("dataRequirement") or ():
            query = _extension(req, QUERY_PATTERN_EXT)
            key = _extension(req, PREFETCH_KEY_EXT)
            if isinstance(query, str) and isinstance(key, str):
                out.append(PrefetchTemplate(key, query, str(req.get("type"))))
    return out


def local_variables(resource: dict[str, Any]) -> dict[str, str]:
    """An artifact's own ``variable`` extensions: name → FHIRPath text."""
    return {str(v.get("name")): str(v.get("expression")) for v in variables_of(resource)}


class VariableReads:
    """Which %variables (transitively) an artifact's expressions read."""

    def __init__(self, knowledge: KnowledgeBase, compiler: FhirPathCompiler) -> None:
        self.knowledge = knowledge
        self.compiler = compiler
        self.definitions: dict[str, str] = {}
        for lib in knowledge.of_type("Library"):
            for var in variables_of(lib.resource):
                self.definitions[str(var.get("name"))] = str(var.get("expression"))

    def names(self, resource: dict[str, Any], local: dict[str, str]) -> set[str]:
        pending = [e["expression"] for _, e in iter_expressions(resource, "x")]
        for action_path, action in _definition_targets(resource):
            target = self.knowledge.by_canonical(action)
            if target is not None and action_path:
                pending += [e["expression"] for _, e in iter_expressions(target.resource, "x")]
        seen: set[str] = set()
        while pending:
            for name in self.compiler.compile(pending.pop()).variables:
                if name in seen:
                    continue
                seen.add(name)
                expr = local.get(name) or self.definitions.get(name)
                if expr:
                    pending.append(expr)
        return seen


def _definition_targets(resource: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def walk(actions: list[dict[str, Any]]) -> None:
        for action in actions:
            if isinstance(action.get("definitionCanonical"), str):
                out.append(("action", action["definitionCanonical"]))
            walk(action.get("action") or [])

    walk(resource.get("action") or [])
    return out


def build_services(knowledge: KnowledgeBase) -> dict[str, CdsService]:
    """Every CDS service of the knowledge base, by id."""
    templates = data_requirements(knowledge)
    reads = VariableReads(knowledge, knowledge.compiler)
    rules = [
        p
        for p in knowledge.of_type("PlanDefinition")
        if _extension(p.resource, CDS_ENDPOINT_EXT) is None
    ]
    services: dict[str, CdsService] = {}
    for plan in knowledge.of_type("PlanDefinition"):
        service_id = _extension(plan.resource, CDS_ENDPOINT_EXT)
        if not isinstance(service_id, str):
            continue
        hooks = sorted(plan_hooks(plan.resource))
        if len(hooks) != 1:
            continue
        hook = hooks[0]
        members = [
            r for r in rules if any(hook in hooks_of(a) for a in r.resource.get("action") or ())
        ]
        needed: set[str] = set()
        for rule in members:
            for name in reads.names(rule.resource, local_variables(rule.resource)):
                if name == "patient":
                    needed.add("Patient")
                elif fhir.is_resource_type(name):
                    needed.add(name)
        services[service_id] = CdsService(
            id=service_id,
            hook=hook,
            title=str(plan.resource.get("title") or service_id),
            description=str(plan.resource.get("description") or plan.resource.get("title")),
            usage_requirements=plan.resource.get("usage"),
            rules=members,
            prefetch=[t for t in templates if t.resource_type in needed],
        )
    return services
