"""``PlanDefinition/$apply`` (R4): walk the actions, gate them, build a RequestGroup.

Steps (https://hl7.org/fhir/R4/plandefinition-operation-apply.html; cqframework ApplyProcessor):

1. bind the call's variables (``evaluation.Scope``) and the PlanDefinition's own variables;
2. for each action (in order): skip it when its ``named-event`` triggers do not name the hook
   being served (``$apply`` serves every hook); evaluate its ``applicability`` conditions (all
   must be ``true``; an error or a non-boolean result records an issue and the action does not
   apply);
3. copy the card-relevant elements onto a RequestGroup action (id, title, description,
   textEquivalent, code, documentation, priority, behaviours, relatedAction, timing, type,
   extension);
4. resolve ``definitionCanonical`` (ActivityDefinition → request resource; PlanDefinition →
   nested RequestGroup), or the ``action-target`` extension for ``update``/``remove`` actions
   (the draft order to change), then apply the action's dynamicValues: ``action.*`` paths set
   the RequestGroup action (e.g. a templated title), other paths the resource;
5. recurse into child actions (suggestions and their alternatives);
6. an ``override-reasons`` extension (``valueCanonical`` → a CodeSystem of ours) becomes one
   ``override-reason`` Coding extension per concept of that CodeSystem (the card's CDS Hooks 2.0
   ``overrideReasons``, docs/authoring.md): the reasons live in one guideline CodeSystem, each
   warning and critical action names it.

Nothing here knows any rule: the rule lives in ``definitions/``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhir_service.canonical import EXT_BASE
from fhir_service.engine.apply.activity_definition import apply_activity, apply_dynamic_values
from fhir_service.engine.apply.evaluation import CallInput, Scope, VariableDef, parameter_value
from fhir_service.engine.apply.values import result_value, set_path
from fhir_service.engine.fhirpath import CompiledExpression, FhirPathCompiler, as_boolean
from fhir_service.engine.fhirpath.expressions import FHIRPATH, parameter_defaults, variables_of
from fhir_service.errors import IssueLog

ACTION_TARGET_EXT = f"{EXT_BASE}/action-target"
OVERRIDE_REASONS_EXT = f"{EXT_BASE}/override-reasons"
OVERRIDE_REASON_EXT = f"{EXT_BASE}/override-reason"
COPIED_ELEMENTS = (
    "id",
    "prefix",
    "title",
    "description",
    "textEquivalent",
    "priority",
    "code",
    "documentation",
    "relatedAction",
    "timingDateTime",
    "timingDuration",
    "timingPeriod",
    "timingTiming",
    "type",
    "groupingBehavior",
    "selectionBehavior",
    "requiredBehavior",
    "precheckBehavior",
    "cardinalityBehavior",
    "extension",
)


def hooks_of(action: Mapping[str, Any]) -> set[str]:
    """The hook names of an action's ``named-event`` triggers."""
    return {
        str(t.get("name"))
        for t in action.get("trigger") or ()
        if t.get("type") == "named-event" and t.get("name")
    }


def plan_hooks(plan: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for action in plan.get("action") or ():
        out |= hooks_of(action)
    return out


@dataclass
class ApplyResult:
    """The outcome of applying one PlanDefinition."""

    plan: dict[str, Any]
    request_group: dict[str, Any]
    resources: list[dict[str, Any]] = field(default_factory=list)
    issues: IssueLog = field(default_factory=IssueLog)


class Definition(Protocol):
    """A knowledge artifact as the engine reads it (``knowledge.loader.Artifact``)."""

    @property
    def resource_type(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def resource(self) -> dict[str, Any]: ...


class Definitions(Protocol):
    """The knowledge the engine applies (``knowledge.repository.KnowledgeBase``): the engine
    depends on this shape, never on the knowledge package."""

    @property
    def compiler(self) -> FhirPathCompiler: ...
    def of_type(self, resource_type: str) -> Sequence[Definition]: ...
    def by_canonical(
        self, canonical: str, resource_type: str | None = None
    ) -> Definition | None: ...


class PlanEngine:
    """Applies the PlanDefinitions of a knowledge base; shared by every call (read-only)."""

    def __init__(self, knowledge: Definitions) -> None:
        self.knowledge = knowledge
        self.compiler: FhirPathCompiler = knowledge.compiler
        self.library_variables: dict[str, VariableDef] = {}
        self.defaults: dict[str, Any] = {}
        #: every Library ``in`` parameter (name → declared type), overridable per ``$apply``
        self.parameter_types: dict[str, str | None] = {}
        for lib in knowledge.of_type("Library"):
            for param in lib.resource.get("parameter") or ():
                if param.get("use") == "in" and isinstance(param.get("name"), str):
                    declared = param.get("type")
                    self.parameter_types[param["name"]] = (
                        declared if isinstance(declared, str) else None
                    )
            for name, (key, value) in parameter_defaults(lib.resource).items():
                self.defaults[name] = parameter_value(key, value)
            for var in variables_of(lib.resource):
                self._add_variable(self.library_variables, var, f"Library/{lib.id}")
        #: CodeSystem canonical (``url`` and ``url|version``) → its concepts as override reasons
        self.override_reasons: dict[str, list[dict[str, Any]]] = {}
        for code_system in knowledge.of_type("CodeSystem"):
            reasons = override_reason_extensions(code_system.resource)
            url = str(code_system.resource.get("url") or "")
            self.override_reasons[url] = reasons
            self.override_reasons[canonical_of(code_system.resource)] = reasons
        self.plan_variables: dict[str, dict[str, VariableDef]] = {}
        for plan in knowledge.of_type("PlanDefinition"):
            scope: dict[str, VariableDef] = {}
            for var in variables_of(plan.resource):
                self._add_variable(scope, var, f"PlanDefinition/{plan.id}")
            self.plan_variables[plan.id] = scope

    def _add_variable(
        self, into: dict[str, VariableDef], var: Mapping[str, Any], source: str
    ) -> None:
        name = str(var.get("name"))
        compiled = self.compiler.compile(str(var.get("expression")))
        into[name] = VariableDef(name, compiled, f"{source}.variable[{name}]")

    def new_scope(self, call: CallInput, issues: IssueLog) -> Scope:
        """The call-wide scope: library variables are computed once and shared by all plans."""
        return Scope(call, self.library_variables, self.defaults, issues)

    def apply(
        self,
        plan: dict[str, Any],
        scope: Scope,
        subject: str,
        new_id: Callable[[], str],
        hook: str | None = None,
    ) -> ApplyResult:
        """Apply ``plan`` for ``subject``; ``hook`` limits top-level actions to that trigger."""
        issues = IssueLog()
        plan_scope = Scope(
            scope.call,
            self.plan_variables.get(str(plan.get("id")), {}),
            {},
            issues,
            parent=scope,
        )
        walker = _Walker(self, plan, plan_scope, subject, new_id, hook)
        actions = walker.actions(plan.get("action") or [], "PlanDefinition.action", top=True)
        group = request_group(plan, subject, new_id(), actions)
        scope.issues.issues.extend(issues.issues)
        return ApplyResult(plan, group, walker.resources, issues)


def canonical_of(resource: Mapping[str, Any]) -> str:
    url = str(resource.get("url", ""))
    return f"{url}|{resource['version']}" if resource.get("version") else url


def request_group(
    plan: Mapping[str, Any], subject: str, group_id: str, actions: list[dict[str, Any]]
) -> dict[str, Any]:
    group: dict[str, Any] = {
        "resourceType": "RequestGroup",
        "id": group_id,
        "instantiatesCanonical": [canonical_of(plan)],
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": subject},
    }
    if actions:
        group["action"] = actions
    return group


class _Walker:
    """One PlanDefinition walk (holds the resources it creates)."""

    def __init__(
        self,
        engine: PlanEngine,
        plan: dict[str, Any],
        scope: Scope,
        subject: str,
        new_id: Callable[[], str],
        hook: str | None,
    ) -> None:
        self.engine = engine
        self.plan = plan
        self.scope = scope
        self.subject = subject
        self.new_id = new_id
        self.hook = hook
        self.resources: list[dict[str, Any]] = []
        self.source = f"PlanDefinition/{plan.get('id')}"

    def actions(self, actions: list[dict[str, Any]], path: str, top: bool) -> list[dict[str, Any]]:
        out = []
        for index, action in enumerate(actions):
            here = f"{path}[{index}]"
            if top and self.hook is not None and self.hook not in hooks_of(action):
                continue
            built = self.action(action, here)
            if built is not None:
                out.append(built)
        return out

    def applicable(self, action: Mapping[str, Any], path: str) -> bool:
        for index, condition in enumerate(action.get("condition") or ()):
            if condition.get("kind") != "applicability":
                continue
            where = f"{self.source}.{path}.condition[{index}]"
            expr = condition.get("expression") or {}
            compiled = self.compiled(expr, where)
            if compiled is None:
                return False
            result = self.scope.evaluate(compiled, where)
            verdict = as_boolean(result)
            if verdict is None:
                if result:
                    self.scope.issues.warning("condition did not return a boolean", where)
                return False
            if not verdict:
                return False
        return True

    def action(self, action: dict[str, Any], path: str) -> dict[str, Any] | None:
        if not self.applicable(action, path):
            return None
        built: dict[str, Any] = {
            k: copy.deepcopy(action[k]) for k in COPIED_ELEMENTS if k in action
        }
        if "extension" in built:
            built["extension"] = self.with_override_reasons(built["extension"])
        resource = self.resolve_definition(action, path)
        for index, dv in enumerate(action.get("dynamicValue") or ()):
            self.dynamic_value(dv, built, resource, f"{self.source}.{path}.dynamicValue[{index}]")
        if resource is not None:
            built["resource"] = {"reference": self.reference_to(resource, action)}
        children = self.actions(action.get("action") or [], f"{path}.action", top=False)
        if children:
            built["action"] = children
        return built

    def with_override_reasons(self, extensions: list[Any]) -> list[Any]:
        """``override-reasons`` (a CodeSystem canonical) → one ``override-reason`` per concept."""
        out: list[Any] = []
        for ext in extensions:
            if isinstance(ext, Mapping) and ext.get("url") == OVERRIDE_REASONS_EXT:
                out.extend(
                    copy.deepcopy(
                        self.engine.override_reasons.get(str(ext.get("valueCanonical")), [])
                    )
                )
            else:
                out.append(ext)
        return out

    def reference_to(self, resource: dict[str, Any], action: Mapping[str, Any]) -> str:
        if action_type(action) == "remove":
            return f"{resource['resourceType']}/{resource.get('id')}"
        return f"#{resource['id']}"

    def compiled(self, expression: Any, where: str) -> CompiledExpression | None:
        """The compiled FHIRPath of an ``Expression`` (an issue and None when unusable)."""
        if not isinstance(expression, Mapping) or expression.get("language") != FHIRPATH:
            self.scope.issues.warning("expression language not supported (text/fhirpath)", where)
            return None
        try:
            return self.engine.compiler.compile(str(expression.get("expression")))
        except ValueError as exc:
            self.scope.issues.error(str(exc), where)
            return None

    def resolve_definition(self, action: Mapping[str, Any], path: str) -> dict[str, Any] | None:
        where = f"{self.source}.{path}"
        canonical = action.get("definitionCanonical")
        if isinstance(canonical, str):
            target = self.engine.knowledge.by_canonical(canonical)
            if target is None:
                self.scope.issues.error(f"definition {canonical} not found", where)
                return None
            if target.resource_type == "ActivityDefinition":
                resource = apply_activity(
                    target.resource,
                    self.subject,
                    self.scope,
                    self.engine.compiler,
                    self.new_id,
                    f"ActivityDefinition/{target.id}",
                )
                self.resources.append(resource)
                return resource
            nested = self.engine.apply(
                target.resource, self.scope, self.subject, self.new_id, hook=None
            )
            self.resources.extend(nested.resources)
            self.resources.append(nested.request_group)
            return nested.request_group
        for ext in action.get("extension") or ():
            if ext.get("url") == ACTION_TARGET_EXT:
                return self.action_target(action, ext.get("valueExpression"), where)
        return None

    def action_target(
        self, action: Mapping[str, Any], expression: Any, where: str
    ) -> dict[str, Any] | None:
        """``update``/``remove``: the draft order the ``action-target`` expression selects.

        ``update`` works on a copy (contained in the result, so it needs an id); ``remove``
        names the draft itself, so a draft without an id cannot be removed.
        """
        compiled = self.compiled(expression, f"{where}.extension[action-target]")
        if compiled is None:
            return None
        found = [r for r in self.scope.evaluate(compiled, where) if isinstance(r, dict)]
        if not found:
            return None
        target: dict[str, Any] = copy.deepcopy(found[0])
        if not isinstance(target.get("resourceType"), str):
            self.scope.issues.error("action-target did not select a resource", where)
            return None
        if action_type(action) == "remove":
            if not isinstance(target.get("id"), str):
                self.scope.issues.error("the draft to remove has no id", where)
                return None
            return target
        if not isinstance(target.get("id"), str):
            target["id"] = self.new_id()
        self.resources.append(target)
        return target

    def dynamic_value(
        self,
        dv: Mapping[str, Any],
        built: dict[str, Any],
        resource: dict[str, Any] | None,
        where: str,
    ) -> None:
        path = str(dv.get("path", "")).lstrip("%")
        if path.startswith("action."):
            compiled = self.compiled(dv.get("expression"), where)
            if compiled is None:
                return
            value = result_value(self.scope.evaluate(compiled, where))
            if value is None:
                return
            try:
                set_path(built, path[len("action.") :], value)
            except ValueError as exc:
                self.scope.issues.error(str(exc), where)
        elif resource is not None:
            apply_dynamic_values(resource, [dict(dv)], self.scope, self.engine.compiler, where)
        else:
            self.scope.issues.warning("dynamicValue has no resource to set", where)


def override_reason_extensions(code_system: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One ``override-reason`` extension (a full Coding) per concept of ``code_system``."""
    system = code_system.get("url")
    return [
        {
            "url": OVERRIDE_REASON_EXT,
            "valueCoding": {"system": system, "code": c["code"], "display": c["display"]},
        }
        for c in code_system.get("concept") or ()
        if isinstance(c, Mapping) and c.get("code") and c.get("display")
    ]


def action_type(action: Mapping[str, Any]) -> str | None:
    """The ``action-type`` code of an action (``create``, ``update``, ``remove``...)."""
    action_kind = action.get("type")
    codings = action_kind.get("coding") if isinstance(action_kind, Mapping) else None
    for coding in codings or ():
        if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None
