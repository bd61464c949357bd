"""Feedback (``POST /cds-services/{id}/feedback``) and analytics: contract "Feedback",
https://cds-hooks.hl7.org/2.0/#feedback (and the sandbox's feedback shapes).

The round trip goes through the real app: a call issues an RF-01 card, its uuid comes back as
feedback, and ``GET /cds-services/{id}/analytics`` counts it per rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_cds_hooks_support import (
    JSON,
    PV,
    cds_app,
    hook_request,
    issue_text,
    outcome,
    rf01_prefetch,
)

FEEDBACK = PV + "/feedback"
WHEN = "2026-12-01T12:05:00Z"
REASON_SYSTEM = "http://example.org/fhir/muscle-spasm/CodeSystem/override-reason"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(cds_app(tmp_path)) as test_client:
        yield test_client


def rf01_card(client: TestClient) -> dict[str, Any]:
    response = client.post(
        PV, json=hook_request("muscle-spasm-patient-view", prefetch=rf01_prefetch())
    )
    assert response.status_code == 200, response.text
    return next(c for c in response.json()["cards"] if c["source"]["topic"]["code"] == "RF-01")


def overridden(card: str, **extra: Any) -> dict[str, Any]:
    return {"card": card, "outcome": "overridden", "outcomeTimestamp": WHEN, **extra}


def accepted(card: str, *suggestions: str, **extra: Any) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": s} for s in suggestions],
        "outcomeTimestamp": WHEN,
        **extra,
    }


def rule_stats(client: TestClient, rule: str) -> dict[str, Any]:
    response = client.get(PV + "/analytics")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["service"] == "muscle-spasm-patient-view"
    return next((r for r in body["rules"] if r["rule"] == rule), {})


# -- round trip ---------------------------------------------------------------------------------


def test_round_trip_issued_overridden_accepted(client: TestClient) -> None:
    card = rf01_card(client)
    assert rule_stats(client, "RF-01")["issued"] == 1
    # R2.6: the warning offers the guideline's reasons; the clinician picks one of them
    offered = card["overrideReasons"]
    assert {r["system"] for r in offered} == {REASON_SYSTEM}
    chosen = next(r for r in offered if r["code"] == "not-applicable")
    # the sandbox's Dismiss: reason without display, no userComment
    sandbox = overridden(
        card["uuid"], overrideReason={"reason": {"code": chosen["code"], "system": REASON_SYSTEM}}
    )
    response = client.post(FEEDBACK, json={"feedback": [sandbox]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    stats = rule_stats(client, "RF-01")
    assert stats["issued"] == 1 and stats["overridden"] == 1 and stats["accepted"] == 0
    assert stats["overrideReasons"] == [
        {"code": "not-applicable", "system": REASON_SYSTEM, "count": 1}
    ]

    second = rf01_card(client)
    suggestion = (second.get("suggestions") or [{"uuid": "no-suggestion-uuid"}])[0]["uuid"]
    response = client.post(FEEDBACK, json={"feedback": [accepted(second["uuid"], suggestion)]})
    assert response.status_code == 200, response.text
    stats = rule_stats(client, "RF-01")
    assert (stats["issued"], stats["accepted"], stats["overridden"]) == (2, 1, 1)


def test_a_retried_hook_instance_gives_the_same_card_uuids(client: TestClient) -> None:
    body = hook_request("muscle-spasm-patient-view", prefetch=rf01_prefetch())
    first = client.post(PV, json=body).json()["cards"]
    again = client.post(PV, json=body).json()["cards"]
    assert [c["uuid"] for c in first] == [c["uuid"] for c in again]
    assert rule_stats(client, "RF-01")["issued"] == 1  # recorded once


def test_repeated_item_is_idempotent(client: TestClient) -> None:
    card = rf01_card(client)
    item = overridden(card["uuid"], overrideReason={"userComment": "seen already"})
    first = client.post(FEEDBACK, json={"feedback": [item, item]})
    again = client.post(FEEDBACK, json={"feedback": [item]})
    assert first.status_code == again.status_code == 200
    assert first.json()["stored"] == 1
    assert again.json()["stored"] == 0
    assert rule_stats(client, "RF-01")["overridden"] == 1


def test_unknown_card_uuid_is_200_and_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        response = client.post(
            FEEDBACK, json={"feedback": [overridden("3f3c9b3e-0000-4000-8000-000000000000")]}
        )
    assert response.status_code == 200, response.text
    assert response.json()["unmatched"] == 1
    assert any("unmatched" in r.getMessage() for r in caplog.records)
    assert client.get(PV + "/analytics").json()["rules"] == []


def test_several_items_and_cards_in_one_post(client: TestClient) -> None:
    a, b = rf01_card(client), rf01_card(client)
    body = {
        "feedback": [
            overridden(a["uuid"]),
            overridden(
                b["uuid"],
                overrideReason={"reason": {"code": "x", "system": REASON_SYSTEM, "display": "X"}},
            ),
        ]
    }
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 200, response.text
    assert rule_stats(client, "RF-01")["overridden"] == 2


def test_empty_feedback_array_is_200(client: TestClient) -> None:
    response = client.post(FEEDBACK, json={"feedback": []})
    assert response.status_code == 200, response.text


def test_feedback_media_types(client: TestClient) -> None:
    body = json.dumps({"feedback": []}).encode()
    ok = client.post(
        FEEDBACK, content=body, headers={"Content-Type": "application/fhir+json; charset=utf-8"}
    )
    assert ok.status_code == 200
    outcome(client.post(FEEDBACK, content=body, headers={"Content-Type": "text/plain"}), 415)
    outcome(client.post(FEEDBACK, content=body), 415)


def test_feedback_on_unknown_service_is_404(client: TestClient) -> None:
    outcome(client.post("/cds-services/nope/feedback", json={"feedback": []}), 404)
    outcome(client.get("/cds-services/nope/analytics"), 404)


# -- 400 ----------------------------------------------------------------------------------------

INVALID: dict[str, tuple[Any, str]] = {
    "not-json": (b"{feedback", ""),
    "empty-body": (b"", ""),
    "array-body": ([], ""),
    "no-feedback": ({}, "feedback"),
    "feedback-object": ({"feedback": {"card": "x"}}, "feedback"),
    "feedback-null": ({"feedback": None}, "feedback"),
    "feedback-string": ({"feedback": "x"}, "feedback"),
    "item-not-object": ({"feedback": ["x"]}, "feedback[0]"),
    "no-card": (
        {"feedback": [{"outcome": "overridden", "outcomeTimestamp": WHEN}]},
        "feedback[0].card",
    ),
    "empty-card": ({"feedback": [overridden("")]}, "feedback[0].card"),
    "card-number": ({"feedback": [overridden(7)]}, "feedback[0].card"),  # type: ignore[arg-type]
    "no-timestamp": ({"feedback": [{"card": "c", "outcome": "overridden"}]}, "outcomeTimestamp"),
    "bad-timestamp": (
        {"feedback": [overridden("c") | {"outcomeTimestamp": "yesterday"}]},
        "outcomeTimestamp",
    ),
    "date-only-timestamp": (
        {"feedback": [overridden("c") | {"outcomeTimestamp": "2026-12-01"}]},
        "outcomeTimestamp",
    ),
    "no-offset-timestamp": (
        {"feedback": [overridden("c") | {"outcomeTimestamp": "2026-12-01T12:00:00"}]},
        "outcomeTimestamp",
    ),
    "no-outcome": ({"feedback": [{"card": "c", "outcomeTimestamp": WHEN}]}, "outcome"),
    "bad-outcome": ({"feedback": [overridden("c") | {"outcome": "ignored"}]}, "outcome"),
    "accepted-without-suggestions": (
        {"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": WHEN}]},
        "acceptedSuggestions",
    ),
    "accepted-empty-suggestions": ({"feedback": [accepted("c")]}, "acceptedSuggestions"),
    "accepted-suggestion-no-id": (
        {"feedback": [accepted("c") | {"acceptedSuggestions": [{}]}]},
        "acceptedSuggestions",
    ),
    "accepted-with-override": (
        {"feedback": [accepted("c", "s") | {"overrideReason": {"userComment": "x"}}]},
        "overrideReason",
    ),
    "overridden-with-suggestions": (
        {"feedback": [overridden("c") | {"acceptedSuggestions": [{"id": "s"}]}]},
        "acceptedSuggestions",
    ),
    "empty-override-reason": ({"feedback": [overridden("c", overrideReason={})]}, "overrideReason"),
    "override-reason-string": (
        {"feedback": [overridden("c", overrideReason="dup")]},
        "overrideReason",
    ),
    "reason-without-code": (
        {"feedback": [overridden("c", overrideReason={"reason": {"system": REASON_SYSTEM}})]},
        "overrideReason.reason.code",
    ),
    "reason-without-system": (
        {"feedback": [overridden("c", overrideReason={"reason": {"code": "x"}})]},
        "overrideReason.reason.system",
    ),
    "comment-not-string": (
        {"feedback": [overridden("c", overrideReason={"userComment": 5})]},
        "userComment",
    ),
    "second-item-bad": ({"feedback": [overridden("c"), {"card": "d"}]}, "feedback[1]"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_feedback_is_400(client: TestClient, case: str) -> None:
    body, expression = INVALID[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(FEEDBACK, content=raw, headers=JSON)
    outcome(response, 400)
    assert expression in issue_text(response)


def test_invalid_item_stores_nothing(client: TestClient) -> None:
    card = rf01_card(client)
    response = client.post(FEEDBACK, json={"feedback": [overridden(card["uuid"]), {"card": "x"}]})
    outcome(response, 400)
    assert rule_stats(client, "RF-01")["overridden"] == 0


# -- 503 when the store is down -----------------------------------------------------------------


def _unwritable(tmp_path: Path) -> str:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database directory should be")
    return f"sqlite:///{blocker / 'sub' / 'feedback.db'}"


def test_store_down_is_503_outcome_for_feedback_and_analytics(tmp_path: Path) -> None:
    with TestClient(cds_app(tmp_path, database_url=_unwritable(tmp_path))) as client:
        response = client.post(FEEDBACK, json={"feedback": [overridden("c")]})
        issues = outcome(response, 503)
        assert issues[0]["code"] == "transient"
        assert "sqlite" not in response.text.lower() and "not-a-directory" not in response.text
        assert response.headers.get("access-control-allow-origin")
        outcome(client.get(PV + "/analytics"), 503)
        # the hook call itself still answers: cards do not depend on the store
        call = client.post(
            PV, json=hook_request("muscle-spasm-patient-view", prefetch=rf01_prefetch())
        )
        assert call.status_code == 200, call.text
        # a valid empty feedback touches nothing and stays 200
        assert client.post(FEEDBACK, json={"feedback": []}).status_code == 200


def test_store_broken_after_start_is_503(tmp_path: Path) -> None:
    app = cds_app(tmp_path)
    with TestClient(app) as client:
        card = rf01_card(client)
        db = tmp_path / "test.db"
        app.state.runtime.store.close()
        for path in tmp_path.glob("test.db*"):
            path.unlink()
        db.mkdir()  # the database path is now a directory: every open fails
        response = client.post(FEEDBACK, json={"feedback": [overridden(card["uuid"])]})
        outcome(response, 503)
        assert response.status_code != 500
