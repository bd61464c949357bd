"""SDC ``$extract``: QuestionnaireResponse → transaction Bundle of POST entries (not executed).

Two SDC mechanisms (https://hl7.org/fhir/uv/sdc/extraction.html), both driven only by the
Questionnaire's metadata — this module knows no linkId or code:

**Observation-based.** A question whose item, an ancestor item or the Questionnaire root carries
``sdc-questionnaire-observationExtract`` = true (the nearest flag wins; ``false`` switches a
subtree off) and which has ``item.code`` gives one Observation per answer: ``status`` final,
``code`` = every ``item.code`` (only the codings flagged true when some are flagged), ``category``
from ``sdc-questionnaire-observation-extract-category`` (nearest wins), ``subject``/
``encounter``/``basedOn``/``partOf`` from the response, ``effectiveDateTime`` = ``issued`` =
``QuestionnaireResponse.authored`` (the extraction instant when it is absent), ``performer`` =
the response's ``author``, ``derivedFrom`` = the response when it has an ``id``, and ``value[x]``
= the answer (Coding → CodeableConcept, date → dateTime, decimal → Quantity; integer/decimal →
Quantity in the ``questionnaire-unit`` unit when the item has one).

**Template-based** (chosen over definition-based: it can make one resource per answer, filter
answers and fix values such as ``verificationStatus`` without hidden items).
``sdc-questionnaire-templateExtract`` on an item (or the root) names a contained template
resource (``template`` = ``#id``); the template is instantiated once per response item with that
``linkId`` (any depth), with that item as the FHIRPath focus (``%context``) and ``%resource`` =
the response, ``%questionnaire`` = the Questionnaire. Inside the template:

* ``sdc-questionnaire-templateExtractContext`` (valueString FHIRPath) on an element repeats it
  once per result, with the result as the new focus, and removes it when there is none; on the
  template root it makes one resource per result (none when empty);
* ``sdc-questionnaire-templateExtractValue`` (valueString FHIRPath) replaces the element with
  the result(s) (on ``_element`` for a primitive); an empty result removes the element.

The template ``id`` and the SDC extensions are dropped; every extracted resource gets a
``urn:uuid`` fullUrl from the id factory and ``request`` ``POST <type>``. Resources are checked
as R4: one that is not valid (e.g. a Condition when the response has no ``subject``) is reported
as an error issue. Answers of items disabled by ``enableWhen`` are never extracted.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhirpathpy.engine.nodes import ResourceNode

from fhir_service import fhir
from fhir_service.engine.data.patient_data import (
    patient_id_of,
    patients_own,
    resolve_reference,
    to_json,
)
from fhir_service.engine.fhirpath import EvaluationSession, FhirPathCompiler
from fhir_service.engine.sdc.questionnaire_populate import fhir_instant
from fhir_service.engine.sdc.questionnaire_response import (
    Enablement,
    answer_value,
    answers_by_link_id,
    index_questionnaire,
    iter_items,
)
from fhir_service.errors import Issue

log = logging.getLogger(__name__)

SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition"
OBSERVATION_EXTRACT_URL = f"{SDC}/sdc-questionnaire-observationExtract"
CATEGORY_URL = f"{SDC}/sdc-questionnaire-observation-extract-category"
TEMPLATE_EXTRACT_URL = f"{SDC}/sdc-questionnaire-templateExtract"
TEMPLATE_CONTEXT_URL = f"{SDC}/sdc-questionnaire-templateExtractContext"
TEMPLATE_VALUE_URL = f"{SDC}/sdc-questionnaire-templateExtractValue"
UNIT_URL = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
TEMPLATE_URLS = frozenset({TEMPLATE_CONTEXT_URL, TEMPLATE_VALUE_URL})
INSTANT_LENGTH = len("2024-01-01T00:00:00Z")

#: Answer value[x] → Observation value[x] (R4 Observation has no valueCoding/valueDate/...).
OBSERVATION_VALUE = {
    "valueBoolean": "valueBoolean",
    "valueInteger": "valueInteger",
    "valueString": "valueString",
    "valueDateTime": "valueDateTime",
    "valueDate": "valueDateTime",
    "valueTime": "valueTime",
    "valueQuantity": "valueQuantity",
    "valueCoding": "valueCodeableConcept",
    "valueDecimal": "valueQuantity",
}


def _extensions(node: Mapping[str, Any], url: str) -> list[Mapping[str, Any]]:
    return [
        e for e in node.get("extension") or () if isinstance(e, Mapping) and e.get("url") == url
    ]


def _flag(node: Mapping[str, Any], url: str) -> bool | None:
    for ext in _extensions(node, url):
        if isinstance(ext.get("valueBoolean"), bool):
            return bool(ext["valueBoolean"])
    return None


# --------------------------------------------------------------------------------------------
# Observation-based


def _observation_value(item: Mapping[str, Any], key: str, value: Any) -> tuple[str, Any] | None:
    unit = next((e.get("valueCoding") for e in _extensions(item, UNIT_URL)), None)
    if key in ("valueInteger", "valueDecimal") and isinstance(unit, Mapping):
        quantity = {"value": value, "unit": unit.get("display") or unit.get("code")}
        quantity |= {k: unit[k] for k in ("system", "code") if k in unit}
        return "valueQuantity", quantity
    target = OBSERVATION_VALUE.get(key)
    if target is None:
        return None
    if key == "valueCoding":
        return target, {"coding": [value]}
    if key == "valueDecimal":
        return target, {"value": value}
    return target, value


def _codings(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    codes = [c for c in item.get("code") or () if isinstance(c, Mapping)]
    flagged = [c for c in codes if _flag(c, OBSERVATION_EXTRACT_URL) is True]
    chosen = flagged or [c for c in codes if _flag(c, OBSERVATION_EXTRACT_URL) is not False]
    return [{k: v for k, v in c.items() if k != "extension"} for c in chosen]


@dataclass
class _Extraction:
    questionnaire: Mapping[str, Any]
    qr: Mapping[str, Any]
    now: datetime
    id_factory: Callable[[], str]
    compiler: FhirPathCompiler
    enablement: Enablement
    answers: Mapping[str, list[dict[str, Any]]]
    #: the call's one clock, and ``resolve()`` over the response's own contained resources
    session: EvaluationSession
    entries: list[dict[str, Any]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    # ---- common

    def add(self, resource: dict[str, Any], location: str) -> None:
        try:
            fhir.validate_resource(resource)
        except ValueError as exc:
            self.issues.append(
                Issue(
                    "error",
                    "business-rule",
                    f"extracted {resource.get('resourceType')} is not valid R4: {exc}",
                    (location,),
                )
            )
        self.entries.append(
            {
                "fullUrl": f"urn:uuid:{self.id_factory()}",
                "resource": resource,
                "request": {"method": "POST", "url": str(resource.get("resourceType"))},
            }
        )

    def walk(self, items: Any, location: str, observe: bool, category: list[Any]) -> None:
        for index, item in enumerate(items or ()):
            if not isinstance(item, Mapping):
                continue
            here = f"{location}.item[{index}]"
            flag = _flag(item, OBSERVATION_EXTRACT_URL)
            item_observe = observe if flag is None else flag
            item_category = [e["valueCodeableConcept"] for e in _extensions(item, CATEGORY_URL)]
            item_category = item_category or category
            link_id = str(item.get("linkId"))
            if self.enablement.enabled(link_id):
                if (
                    item_observe
                    and item.get("code")
                    and item.get("type") not in ("group", "display")
                ):
                    self.observations(item, here, item_category)
                for ext in _extensions(item, TEMPLATE_EXTRACT_URL):
                    for path, qr_item in iter_items(self.qr):
                        if qr_item.get("linkId") == link_id:
                            self.template(ext, qr_item, f"{path}", here)
            self.walk(item.get("item"), here, item_observe, item_category)

    # ---- Observation-based

    def observations(self, item: Mapping[str, Any], location: str, category: list[Any]) -> None:
        authored = self.qr.get("authored")
        when = authored if isinstance(authored, str) else fhir_instant(self.now)
        issued = when if len(when) >= INSTANT_LENGTH else fhir_instant(self.now)
        for answer in self.answers.get(str(item.get("linkId")), []):
            found = answer_value(answer)
            value = _observation_value(item, *found) if found else None
            if value is None:
                self.issues.append(
                    Issue(
                        "warning",
                        "not-supported",
                        f"{item.get('linkId')}: {found[0] if found else 'no value'} cannot be "
                        "an Observation value",
                        (location,),
                    )
                )
                continue
            self.add(self.observation(item, category, when, issued, value), location)

    def observation(
        self,
        item: Mapping[str, Any],
        category: list[Any],
        when: str,
        issued: str,
        value: tuple[str, Any],
    ) -> dict[str, Any]:
        qr = self.qr
        obs: dict[str, Any] = {"resourceType": "Observation"}
        for element in ("basedOn", "partOf"):
            if qr.get(element):
                obs[element] = copy.deepcopy(qr[element])
        obs["status"] = "final"
        if category:
            obs["category"] = copy.deepcopy(category)
        obs["code"] = {"coding": _codings(item)}
        for element in ("subject", "encounter"):
            if isinstance(qr.get(element), Mapping):
                obs[element] = copy.deepcopy(qr[element])
        obs["effectiveDateTime"] = when
        obs["issued"] = issued
        author = qr.get("author")
        if isinstance(author, Mapping) and not str(author.get("reference", "")).startswith(
            "Device/"
        ):
            obs["performer"] = [copy.deepcopy(author)]
        obs[value[0]] = copy.deepcopy(value[1])
        if qr.get("id"):
            obs["derivedFrom"] = [{"reference": f"QuestionnaireResponse/{qr['id']}"}]
        return obs

    # ---- Template-based

    def template(self, ext: Mapping[str, Any], focus: Any, focus_path: str, location: str) -> None:
        ref = next(
            (
                p.get("valueReference", {}).get("reference")
                for p in ext.get("extension") or ()
                if p.get("url") == "template"
            ),
            None,
        )
        template = next(
            (
                c
                for c in self.questionnaire.get("contained") or ()
                if isinstance(ref, str) and f"#{c.get('id')}" == ref
            ),
            None,
        )
        if template is None:
            self.issues.append(
                Issue("error", "not-found", f"template {ref!r} is not contained", (location,))
            )
            return
        node = typed_focus(focus)
        filler = _TemplateFiller(self, f"{location} template {ref}")
        for resource in filler.expand(copy.deepcopy(template), node, root=True):
            if isinstance(resource, dict):
                resource.pop("id", None)
                self.add(resource, f"{focus_path} ({ref})")


def typed_focus(value: Any) -> Any:
    """Give a QuestionnaireResponse fragment back its FHIRPath type.

    Expression results come back as plain JSON, and fhirpathpy needs the element's path to
    navigate choice elements (``answer.value``). Template contexts select response content, so
    an object with a ``linkId`` is a response item and one with a ``value[x]`` an answer.
    """
    if isinstance(value, dict) and "resourceType" not in value:
        if "linkId" in value:
            return ResourceNode.create_node(value, "QuestionnaireResponse.item")
        if any(k.startswith("value") and k[5:6].isupper() for k in value):
            return ResourceNode.create_node(value, "QuestionnaireResponse.item.answer")
    return value


@dataclass
class _TemplateFiller:
    """Instantiates one template (``templateExtractContext``/``templateExtractValue``)."""

    work: _Extraction
    location: str

    def evaluate(self, expression: str, focus: Any) -> list[Any]:
        env = {"resource": self.work.qr, "questionnaire": self.work.questionnaire}
        try:
            compiled = self.work.compiler.compile(expression)
            return [to_json(v) for v in compiled.evaluate(focus, env, self.work.session)]
        except Exception as exc:  # a template problem becomes an issue, never an error
            self.work.issues.append(
                Issue("error", "processing", f"{expression!r} failed: {exc}", (self.location,))
            )
            return []

    def contexts(self, context: str | None, focus: Any) -> list[Any]:
        if context is None:
            return [focus]
        return [typed_focus(v) for v in self.evaluate(context, focus)]

    @staticmethod
    def directive(node: dict[str, Any], url: str) -> str | None:
        for ext in node.get("extension") or ():
            if isinstance(ext, Mapping) and ext.get("url") == url:
                return str(ext.get("valueString", ""))
        return None

    def expand(self, node: Any, focus: Any, root: bool = False) -> list[Any]:
        """The instances of one template element for ``focus`` (0, 1 or more)."""
        if not isinstance(node, dict):
            return [node]
        context = self.directive(node, TEMPLATE_CONTEXT_URL)
        value = self.directive(node, TEMPLATE_VALUE_URL)
        extensions = [
            e
            for e in node.get("extension") or ()
            if not (isinstance(e, Mapping) and e.get("url") in TEMPLATE_URLS)
        ]
        if extensions:
            node["extension"] = extensions
        else:
            node.pop("extension", None)
        focuses = self.contexts(context, focus)
        out: list[Any] = []
        for each in focuses:
            if value is not None and not root:
                out.extend(self.evaluate(value, each))
            else:
                filled = self.fill(copy.deepcopy(node), each)
                if filled:
                    out.append(filled)
        return out

    def fill(self, node: dict[str, Any], focus: Any) -> dict[str, Any]:
        """Fill every child of ``node`` (primitive carriers ``_x`` set ``x``)."""
        for key in list(node):
            if key == "resourceType" or key not in node:
                continue
            child = node[key]
            if key.startswith("_"):
                self.primitive(node, key, focus)
            elif isinstance(child, list):
                items = [v for element in child for v in self.expand(element, focus)]
                if items:
                    node[key] = items
                else:
                    del node[key]
            elif isinstance(child, dict):
                found = self.expand(child, focus)
                if found:
                    node[key] = found[0]
                else:
                    del node[key]
        return node

    def primitive(self, node: dict[str, Any], key: str, focus: Any) -> None:
        carrier = node[key]
        name = key[1:]
        if isinstance(carrier, list):
            values = [v for element in carrier for v in self.expand(element, focus)]
            del node[key]
            if values:
                node[name] = values
            return
        if not isinstance(carrier, dict):
            return
        value = self.directive(carrier, TEMPLATE_VALUE_URL)
        context = self.directive(carrier, TEMPLATE_CONTEXT_URL)
        if value is None and context is None:
            return
        del node[key]
        focuses = self.contexts(context, focus)
        results = [r for f in focuses for r in (self.evaluate(value, f) if value else [])]
        if results:
            node[name] = results[0]
        else:
            node.pop(name, None)


def _contained_resolver(qr: Mapping[str, Any]) -> Callable[[str], dict[str, Any] | None]:
    """``resolve()`` inside templates: the response's own contained resources (``#id``), less
    any about a patient other than the response's subject (``patient_data``)."""
    subject = qr.get("subject")
    patient_id = patient_id_of(subject.get("reference") if isinstance(subject, Mapping) else None)
    inner = [c for c in qr.get("contained") or () if isinstance(c, Mapping)]
    kept, _ = patients_own(inner, patient_id)
    by_id = {f"#{c['id']}": dict(c) for c in kept if isinstance(c.get("id"), str)}
    return lambda reference: resolve_reference(reference, {}, by_id)


def extract_with_issues(
    questionnaire: Mapping[str, Any],
    qr: Mapping[str, Any],
    now: datetime,
    id_factory: Callable[[], str],
    compiler: FhirPathCompiler | None = None,
) -> tuple[dict[str, Any], list[Issue]]:
    """Extract ``qr`` into a transaction Bundle; also return the issues met.

    Steps:
        1. index the Questionnaire, gather the answers (any depth), compute enablement;
        2. walk the Questionnaire items in order: Observation-based items first within each
           item, then its ``templateExtract`` templates (root templates last);
        3. check each resource as R4 (invalid → error issue).

    Args:
        questionnaire: the Questionnaire the response answers (FHIR JSON).
        qr: the QuestionnaireResponse (structurally valid, for this Questionnaire).
        now: the extraction instant (used when ``authored`` is absent).
        id_factory: returns a fresh UUID string per entry (``fullUrl`` ``urn:uuid:<id>``).
        compiler: FHIRPath compiler for templates (a plain one when omitted).
    """
    answers = answers_by_link_id(qr)
    work = _Extraction(
        questionnaire=questionnaire,
        qr=qr,
        now=now,
        id_factory=id_factory,
        compiler=compiler or FhirPathCompiler(),
        enablement=Enablement(index_questionnaire(questionnaire), answers),
        answers=answers,
        session=EvaluationSession(now, _contained_resolver(qr)),
    )
    root_observe = _flag(questionnaire, OBSERVATION_EXTRACT_URL) is True
    root_category = [e["valueCodeableConcept"] for e in _extensions(questionnaire, CATEGORY_URL)]
    work.walk(questionnaire.get("item"), "Questionnaire", root_observe, root_category)
    for ext in _extensions(questionnaire, TEMPLATE_EXTRACT_URL):
        work.template(ext, qr, "QuestionnaireResponse", "Questionnaire")
    for issue in work.issues:
        log.info("extraction issue: %s", issue.diagnostics)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": work.entries}
    return bundle, work.issues


def extract(
    questionnaire: Mapping[str, Any],
    qr: Mapping[str, Any],
    now: datetime,
    id_factory: Callable[[], str],
    compiler: FhirPathCompiler | None = None,
) -> dict[str, Any]:
    """The transaction Bundle of ``extract_with_issues`` (issues are logged only)."""
    return extract_with_issues(questionnaire, qr, now, id_factory, compiler)[0]
