"""RequestGroup → CDS Hooks cards: a pure, total mapping that knows no rule.

Mapping (CDS on FHIR, https://cds-hooks.hl7.org/2.0/#cds-service-response and
https://build.fhir.org/clinicalreasoning-cds-on-fhir.html, with HAPI's two bugs as the warning):

* each top-level RequestGroup action → one card: ``title`` → ``summary`` (cut to 139
  characters), ``description`` → ``detail``, ``priority`` → ``indicator`` (routine → info,
  urgent/asap → warning, stat → critical; absent → info), ``documentation[0]`` → ``source``
  (label from its ``display``, url), the first ``code`` coding → ``source.topic``, every
  documentation entry with a ``url`` → an absolute link (``smart`` when its ``link-type``
  extension says so), a ``resource`` canonical of ours → a link to our FHIR endpoint,
  ``override-reason`` extensions → ``overrideReasons`` (the PlanDefinition engine expands an
  action's ``override-reasons`` CodeSystem into these, clinical-rules R2.6);
* each child action → a suggestion (``label`` = title); its own resource and those of its
  children become the suggestion's actions (``create``/``update`` with the full resource,
  ``remove`` → ``delete`` with ``resourceId``); ``selectionBehavior`` becomes ``at-most-one``
  (``at-most-one``/``exactly-one``) or ``any`` (every other code), present exactly when there
  are suggestions;
* every card and suggestion gets a fresh ``uuid``; no ``null``/``""``/``[]``/``{}`` is emitted;
* only what a client can use is emitted: links and ``source.url`` are absolute ``http(s)`` URLs,
  a link ``type`` is ``absolute`` or ``smart``, an override reason is a full Coding (``system``,
  ``code``, ``display``), and when the call's draft orders are known (``CardContext.drafts``)
  an ``update``/``delete`` action targets one of them (contract: "No suggestion action targets
  a resource outside ``draftOrders``, except a ``create``").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fhir_service.canonical import EXT_BASE
from fhir_service.engine.apply.plan_definition import OVERRIDE_REASON_EXT

LINK_TYPE_EXT = f"{EXT_BASE}/link-type"
INDICATORS = {"routine": "info", "urgent": "warning", "asap": "warning", "stat": "critical"}
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
SUMMARY_MAX = 139
LINK_TYPES = ("absolute", "smart")


@dataclass(frozen=True)
class CardContext:
    """What the card builder needs besides the RequestGroup."""

    new_uuid: Callable[[], str]
    fhir_base: str  # e.g. http://127.0.0.1:8000/fhir
    canonical_base: str  # canonical base of our artifacts
    resources: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # "#id" → resource
    drafts: frozenset[str] | None = None  # "Type/id" of the call's draft orders, when known


def truncate(text: str, limit: int = SUMMARY_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _text(value: Any) -> str:
    """``value`` as one-line-normalised text ("" for None or blank)."""
    return " ".join(str(value).split()) if value is not None else ""


def _absolute_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    parts = urlsplit(value.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return value.strip()


def indicator(priority: Any) -> str:
    return INDICATORS.get(str(priority), "info")


def _first_coding(action: Mapping[str, Any]) -> dict[str, Any] | None:
    for concept in action.get("code") or ():
        for coding in concept.get("coding") or ():
            if coding.get("system") and coding.get("code"):
                return {k: coding[k] for k in ("system", "code", "display") if coding.get(k)}
    return None


def _ext_values(node: Mapping[str, Any], url: str, key: str) -> list[Any]:
    return [e[key] for e in node.get("extension") or () if e.get("url") == url and key in e]


def source_of(action: Mapping[str, Any], fallback_label: str) -> dict[str, Any]:
    docs = action.get("documentation") or []
    first = docs[0] if docs else {}
    label = _text(first.get("display")) or _text(first.get("label")) or _text(fallback_label)
    source: dict[str, Any] = {"label": label or "Muscle spasm guideline"}
    url = _absolute_url(first.get("url"))
    if url:
        source["url"] = url
    topic = _first_coding(action)
    if topic:
        source["topic"] = topic
    return source


def links_of(action: Mapping[str, Any], ctx: CardContext) -> list[dict[str, Any]]:
    links = []
    for doc in action.get("documentation") or ():
        url = _absolute_url(doc.get("url"))
        resource = doc.get("resource")
        if not url and isinstance(resource, str) and resource.startswith(ctx.canonical_base + "/"):
            url = ctx.fhir_base + resource[len(ctx.canonical_base) :].split("|")[0]
        if not url:
            continue
        link_type = (_ext_values(doc, LINK_TYPE_EXT, "valueCode") or ["absolute"])[0]
        if link_type not in LINK_TYPES:
            link_type = "absolute"
        label = _text(doc.get("label")) or _text(doc.get("display")) or url
        links.append({"label": label, "url": url, "type": link_type})
    return links


def _action_kind(action: Mapping[str, Any]) -> str:
    codings = (action.get("type") or {}).get("coding") or [{}]
    code = str(codings[0].get("code") or "create")
    return {"remove": "delete"}.get(code, code)


def suggestion_actions(action: Mapping[str, Any], ctx: CardContext) -> list[dict[str, Any]]:
    out = []
    for node in [action, *(action.get("action") or [])]:
        ref = (node.get("resource") or {}).get("reference")
        if not isinstance(ref, str):
            continue
        kind = _action_kind(node)
        if kind == "fire-event":
            continue
        if kind not in ("create", "update", "delete"):
            continue
        description = _text(node.get("description")) or _text(node.get("title")) or kind
        item: dict[str, Any] = {"type": kind, "description": description}
        if kind == "delete":
            target = ref
            item["resourceId"] = ref
        else:
            resource = ctx.resources.get(ref)
            if not isinstance(resource, dict):
                continue
            target = f"{resource.get('resourceType')}/{resource.get('id')}"
            item["resource"] = resource
        if kind != "create" and ctx.drafts is not None and target not in ctx.drafts:
            continue  # update/delete only on the call's draft orders
        out.append(item)
    return out


def build_card(action: Mapping[str, Any], ctx: CardContext, fallback_label: str) -> dict[str, Any]:
    summary = truncate(_text(action.get("title")) or _text(fallback_label))
    card: dict[str, Any] = {
        "uuid": ctx.new_uuid(),
        "summary": summary or "Muscle spasm guideline",
        "indicator": indicator(action.get("priority")),
        "source": source_of(action, fallback_label),
    }
    detail = action.get("description")
    if isinstance(detail, str) and detail.strip():
        card["detail"] = detail
    suggestions = []
    for child in action.get("action") or ():
        actions = suggestion_actions(child, ctx)
        if not actions:
            continue
        suggestion: dict[str, Any] = {
            "label": truncate(_text(child.get("title")) or actions[0]["description"], 200),
            "uuid": ctx.new_uuid(),
            "actions": actions,
        }
        suggestions.append(suggestion)
    if suggestions:
        card["suggestions"] = suggestions
        behaviour = str(action.get("selectionBehavior") or "at-most-one")
        card["selectionBehavior"] = (
            "at-most-one" if behaviour in ("at-most-one", "exactly-one") else "any"
        )
    reasons = [
        {k: c[k] for k in ("system", "code", "display")}
        for c in _ext_values(action, OVERRIDE_REASON_EXT, "valueCoding")
        if isinstance(c, dict) and all(_text(c.get(k)) for k in ("system", "code", "display"))
    ]
    if reasons:
        card["overrideReasons"] = reasons
    links = links_of(action, ctx)
    if links:
        card["links"] = links
    return card


def build_cards(
    request_group: Mapping[str, Any], ctx: CardContext, fallback_label: str
) -> list[dict[str, Any]]:
    """One card per top-level action of ``request_group``."""
    return [build_card(a, ctx, fallback_label) for a in request_group.get("action") or ()]


def sort_cards(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Critical first, then warning, then info; ties by rule id (deterministic)."""
    return sorted(
        cards,
        key=lambda c: (
            SEVERITY_ORDER.get(c["indicator"], 3),
            c["source"].get("topic", {}).get("code", ""),
        ),
    )
