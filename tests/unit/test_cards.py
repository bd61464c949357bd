"""RequestGroup → CDS Hooks cards (``fhir_service/cds/cards.py``), on hand-built RequestGroups.

Checks https://cds-hooks.hl7.org/2.0/#card-attributes (card model; no empty values, uuids
everywhere), the selectionBehavior trap and the contract's
"Every card and every suggestion has a uuid;
selectionBehavior is present exactly when suggestions is".
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from fhir_service.cds.cards import (
    LINK_TYPE_EXT,
    OVERRIDE_REASON_EXT,
    CardContext,
    build_card,
    build_cards,
    indicator,
    sort_cards,
    truncate,
)

BASE = "http://example.org/fhir/muscle-spasm"
FHIR = "https://cds.example.org/fhir"
RULE = "http://example.org/fhir/muscle-spasm/CodeSystem/rule"
CREATE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/action-type", "code": "create"}]
}
UPDATE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/action-type", "code": "update"}]
}
REMOVE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/action-type", "code": "remove"}]
}
FIRE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/action-type", "code": "fire-event"}
    ]
}
REFERRAL = {
    "resourceType": "ServiceRequest",
    "id": "sr-1",
    "status": "draft",
    "intent": "proposal",
    "subject": {"reference": "Patient/p1"},
    "code": {"text": "Physical therapy referral"},
}
EDUCATION = {
    "resourceType": "CommunicationRequest",
    "id": "cr-1",
    "status": "draft",
    "subject": {"reference": "Patient/p1"},
}
UPDATED_DRAFT = {
    "resourceType": "MedicationRequest",
    "id": "draft-1",
    "status": "draft",
    "intent": "proposal",
    "subject": {"reference": "Patient/p1"},
    "dispenseRequest": {"expectedSupplyDuration": {"value": 14, "unit": "d"}},
}
RESOURCES = {"#sr-1": REFERRAL, "#cr-1": EDUCATION, "#draft-1": UPDATED_DRAFT}


def ctx(drafts: frozenset[str] | None = None, **extra: Any) -> CardContext:
    counter = itertools.count(1)
    return CardContext(
        new_uuid=lambda: f"uuid-{next(counter)}",
        fhir_base=FHIR,
        canonical_base=BASE,
        resources=extra.pop("resources", RESOURCES),
        drafts=drafts,
    )


def action(**fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "title": "Muscle spasm after injury — red flag.",
        "code": [{"coding": [{"system": RULE, "code": "RF-01", "display": "Spasm after injury"}]}],
        "documentation": [{"type": "documentation", "display": "Muscle spasm guideline"}],
    }
    out.update(fields)
    return out


def child(title: str, ref: str, kind: dict[str, Any] = CREATE, **fields: Any) -> dict[str, Any]:
    return {"title": title, "type": kind, "resource": {"reference": ref}, **fields}


def empties(value: Any, path: str = "$") -> list[str]:
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += empties(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += empties(item, f"{path}[{index}]")
    return out


# -- indicator ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        ("routine", "info"),
        ("urgent", "warning"),
        ("asap", "warning"),
        ("stat", "critical"),
        (None, "info"),
        ("STAT", "info"),
        ("unknown", "info"),
    ],
)
def test_priority_maps_to_indicator(priority: str | None, expected: str) -> None:
    assert indicator(priority) == expected
    fields = {} if priority is None else {"priority": priority}
    card = build_card(action(**fields), ctx(), "fallback")
    assert card["indicator"] == expected


# -- summary --------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 138, 139, 140, 141, 500])
def test_summary_is_at_most_139_characters(length: int) -> None:
    title = ("word " * 200)[:length].strip() or "x"
    card = build_card(action(title=title), ctx(), "fallback")
    assert len(card["summary"]) <= 139
    if len(title) <= 139:
        assert card["summary"] == title
    else:
        assert card["summary"].endswith("…")
        assert title.startswith(card["summary"][:-1].rstrip())


def test_truncate_normalises_whitespace_and_ellipsises() -> None:
    assert truncate("  a \n b\tc  ") == "a b c"
    cut = truncate("x" * 200)
    assert len(cut) == 139 and cut.endswith("…")
    assert truncate("abc def", limit=5) == "abc…"


@pytest.mark.parametrize("title", [None, "", "   \n "])
def test_blank_title_falls_back_to_the_rule_title(title: str | None) -> None:
    card = build_card(action(title=title), ctx(), "RF-01 Spasm after injury")
    assert card["summary"] == "RF-01 Spasm after injury"


# -- source ---------------------------------------------------------------------------------------


def test_source_has_label_topic_and_absolute_url_only() -> None:
    docs = [{"type": "documentation", "display": "Guideline", "url": "https://guide.example/x"}]
    card = build_card(action(documentation=docs), ctx(), "fallback")
    assert card["source"] == {
        "label": "Guideline",
        "url": "https://guide.example/x",
        "topic": {"system": RULE, "code": "RF-01", "display": "Spasm after injury"},
    }
    docs = [{"type": "documentation", "display": "Guideline", "url": "guide/x.html"}]
    card = build_card(action(documentation=docs), ctx(), "fallback")
    assert "url" not in card["source"]


def test_source_label_falls_back_without_documentation() -> None:
    card = build_card(action(documentation=[]), ctx(), "RF-01 title")
    assert card["source"]["label"] == "RF-01 title"
    card = build_card(action(documentation=[], code=[]), ctx(), "")
    assert card["source"]["label"]
    assert "topic" not in card["source"]


# -- suggestions and selectionBehavior ------------------------------------------------------------


@pytest.mark.parametrize(
    ("behavior", "expected"),
    [
        ("any", "any"),
        ("all", "any"),
        ("all-or-none", "any"),
        ("exactly-one", "at-most-one"),
        ("at-most-one", "at-most-one"),
        ("one-or-more", "any"),
        (None, "at-most-one"),
    ],
)
def test_selection_behavior_maps_every_fhir_code(behavior: str | None, expected: str) -> None:
    fields: dict[str, Any] = {
        "action": [child("Refer to PT", "#sr-1"), child("Education", "#cr-1")]
    }
    if behavior is not None:
        fields["selectionBehavior"] = behavior
    card = build_card(action(**fields), ctx(), "fallback")
    assert card["selectionBehavior"] == expected
    assert len(card["suggestions"]) == 2


@pytest.mark.parametrize("behavior", ["any", "exactly-one", None])
def test_selection_behavior_absent_without_suggestions(behavior: str | None) -> None:
    fields: dict[str, Any] = {} if behavior is None else {"selectionBehavior": behavior}
    card = build_card(action(**fields), ctx(), "fallback")
    assert "suggestions" not in card and "selectionBehavior" not in card
    # children that yield no usable action make no suggestion either
    fields["action"] = [
        child("dangling", "#missing"),
        {"title": "no resource"},
        child("event", "#sr-1", FIRE),
    ]
    card = build_card(action(**fields), ctx(), "fallback")
    assert "suggestions" not in card and "selectionBehavior" not in card
    assert empties(card) == []


def test_create_action_carries_the_full_resource() -> None:
    card = build_card(
        action(action=[child("Refer to PT", "#sr-1", description="Create a PT referral")]),
        ctx(),
        "fallback",
    )
    (suggestion,) = card["suggestions"]
    assert suggestion["label"] == "Refer to PT"
    assert suggestion["actions"] == [
        {"type": "create", "description": "Create a PT referral", "resource": REFERRAL}
    ]


def test_update_action_carries_the_replacement_resource() -> None:
    card = build_card(
        action(action=[child("Limit to 14 days", "#draft-1", UPDATE)]),
        ctx(frozenset({"MedicationRequest/draft-1"})),
        "fallback",
    )
    (act,) = card["suggestions"][0]["actions"]
    assert act == {"type": "update", "description": "Limit to 14 days", "resource": UPDATED_DRAFT}


def test_remove_becomes_delete_with_resource_id() -> None:
    card = build_card(
        action(action=[child("Cancel the draft", "MedicationRequest/draft-1", REMOVE)]),
        ctx(frozenset({"MedicationRequest/draft-1"})),
        "fallback",
    )
    (act,) = card["suggestions"][0]["actions"]
    assert act == {
        "type": "delete",
        "description": "Cancel the draft",
        "resourceId": "MedicationRequest/draft-1",
    }
    assert "resource" not in act


def test_nested_actions_join_one_suggestion() -> None:
    """Replace a draft: delete it and create the alternative, in one suggestion."""
    swap = {
        "title": "Switch to physical therapy",
        "type": REMOVE,
        "resource": {"reference": "MedicationRequest/draft-1"},
        "action": [child("Refer", "#sr-1")],
    }
    card = build_card(
        action(action=[swap]), ctx(frozenset({"MedicationRequest/draft-1"})), "fallback"
    )
    (suggestion,) = card["suggestions"]
    assert [a["type"] for a in suggestion["actions"]] == ["delete", "create"]


def test_update_or_delete_outside_the_draft_orders_is_dropped() -> None:
    fields = {
        "action": [
            child("Stop a current medication", "MedicationRequest/active-9", REMOVE),
            child("Edit a record", "#draft-1", UPDATE),
            child("Refer", "#sr-1"),
        ]
    }
    card = build_card(action(**fields), ctx(frozenset({"MedicationRequest/other"})), "fallback")
    assert [s["label"] for s in card["suggestions"]] == ["Refer"]
    card = build_card(action(**fields), ctx(frozenset()), "fallback")
    assert [s["label"] for s in card["suggestions"]] == ["Refer"]


def test_uuids_are_fresh_per_card_and_suggestion() -> None:
    group = {
        "resourceType": "RequestGroup",
        "action": [
            action(action=[child("A", "#sr-1"), child("B", "#cr-1")]),
            action(title="Second", action=[child("C", "#sr-1")]),
        ],
    }
    cards = build_cards(group, ctx(), "fallback")
    uuids = [c["uuid"] for c in cards] + [s["uuid"] for c in cards for s in c["suggestions"]]
    assert len(uuids) == 5 == len(set(uuids))
    assert all(isinstance(u, str) and u for u in uuids)


# -- links ----------------------------------------------------------------------------------------


def test_links_absolute_smart_and_own_artifacts() -> None:
    docs = [
        {"type": "documentation", "display": "Guideline"},
        {"type": "derived-from", "label": "Rule", "resource": f"{BASE}/PlanDefinition/rf-01|0.1.0"},
        {"type": "documentation", "label": "Leaflet", "url": "https://leaflet.example/a.pdf"},
        {
            "type": "documentation",
            "label": "Assessment app",
            "url": "https://app.example/launch",
            "extension": [{"url": LINK_TYPE_EXT, "valueCode": "smart"}],
        },
        {
            "type": "documentation",
            "label": "Odd type",
            "url": "https://odd.example/",
            "extension": [{"url": LINK_TYPE_EXT, "valueCode": "popup"}],
        },
        {"type": "documentation", "label": "Relative", "url": "docs/a.html"},
        {"type": "documentation", "label": "Script", "url": "javascript:alert(1)"},
        {"type": "citation", "display": "Other canonical", "resource": "http://other.org/x"},
    ]
    card = build_card(action(documentation=docs), ctx(), "fallback")
    assert card["links"] == [
        {"label": "Rule", "url": f"{FHIR}/PlanDefinition/rf-01", "type": "absolute"},
        {"label": "Leaflet", "url": "https://leaflet.example/a.pdf", "type": "absolute"},
        {"label": "Assessment app", "url": "https://app.example/launch", "type": "smart"},
        {"label": "Odd type", "url": "https://odd.example/", "type": "absolute"},
    ]
    for link in card["links"]:
        assert "appContext" not in link or link["type"] == "smart"


def test_no_links_means_no_links_member() -> None:
    card = build_card(action(), ctx(), "fallback")
    assert "links" not in card


# -- override reasons -----------------------------------------------------------------------------


def test_override_reasons_need_system_code_and_display() -> None:
    def reason(**coding: Any) -> dict[str, Any]:
        return {"url": OVERRIDE_REASON_EXT, "valueCoding": coding}

    sys = "http://example.org/fhir/muscle-spasm/CodeSystem/override-reason"
    card = build_card(
        action(
            extension=[
                reason(system=sys, code="benefit", display="Benefit outweighs risk"),
                reason(system=sys, code="no-display"),
                reason(system=sys, code="blank", display="  "),
                reason(code="no-system", display="No system"),
                reason(system=sys, display="No code"),
                {"url": "http://other.example/ext", "valueCoding": {"code": "x", "display": "x"}},
            ]
        ),
        ctx(),
        "fallback",
    )
    assert card["overrideReasons"] == [
        {"system": sys, "code": "benefit", "display": "Benefit outweighs risk"}
    ]
    card = build_card(action(extension=[reason(system=sys, code="no-display")]), ctx(), "fallback")
    assert "overrideReasons" not in card


# -- no empty values ------------------------------------------------------------------------------


def test_no_empty_values_in_a_sparse_request_group() -> None:
    sparse = {
        "title": "  ",
        "description": "",
        "priority": None,
        "documentation": [{"display": "", "url": ""}],
        "code": [{"coding": [{"system": RULE, "code": "RF-01", "display": ""}]}],
        "action": [{"title": "", "type": CREATE, "resource": {"reference": "#sr-1"}}],
    }
    card = build_card(sparse, ctx(), "RF-01 title")
    assert empties(card) == []
    assert card["summary"] and card["source"]["label"]
    assert "detail" not in card
    assert card["source"]["topic"] == {"system": RULE, "code": "RF-01"}
    assert card["suggestions"][0]["label"]
    assert card["suggestions"][0]["actions"][0]["description"]


def test_full_card_shape() -> None:
    card = build_card(
        action(
            priority="stat",
            description="**Seek care** now.",
            action=[child("Refer", "#sr-1")],
            selectionBehavior="any",
        ),
        ctx(),
        "fallback",
    )
    assert set(card) == {
        "uuid",
        "summary",
        "indicator",
        "source",
        "detail",
        "suggestions",
        "selectionBehavior",
    }
    assert card["detail"] == "**Seek care** now."
    assert card["indicator"] == "critical"
    assert empties(card) == []


def test_empty_request_group_gives_no_card() -> None:
    assert build_cards({"resourceType": "RequestGroup"}, ctx(), "x") == []
    assert build_cards({"resourceType": "RequestGroup", "action": []}, ctx(), "x") == []


def test_sort_cards_critical_first_then_rule_id() -> None:
    def card(ind: str, code: str | None) -> dict[str, Any]:
        source: dict[str, Any] = {"label": "x"}
        if code:
            source["topic"] = {"system": RULE, "code": code}
        return {"uuid": code or "none", "summary": "s", "indicator": ind, "source": source}

    cards = [
        card("info", "TY-GEN"),
        card("warning", "RF-01"),
        card("critical", "TY-HEAT-X"),
        card("info", "LAB-01"),
        card("warning", None),
    ]
    assert [c["uuid"] for c in sort_cards(cards)] == [
        "TY-HEAT-X",
        "none",
        "RF-01",
        "LAB-01",
        "TY-GEN",
    ]
