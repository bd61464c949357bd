"""Cards carry a CDS Hooks ``smart`` link to the assessment app exactly when
``FHIR_SERVICE_SMART_LAUNCH_URL`` is set (docs/smart-launch.md), and only the cards whose rule
collects or reads the assessment questionnaire (derived from the definitions, not rule ids)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_service.cds.smart_link import add_smart_links, assessment_questionnaires
from fhir_service.settings import Settings
from tests.conftest import make_app, shared_knowledge

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
LAUNCH = "https://cds.example.org/forms/muscle-spasm-assessment/launch"
QUESTIONNAIRE = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"


def _call(tmp_path: Path, case: str, **settings: Any) -> list[dict[str, Any]]:
    folder = SCENARIOS / case
    scenario = json.loads((folder / "scenario.json").read_text())
    now = datetime.fromisoformat(scenario["now"].replace("Z", "+00:00"))
    app = make_app(tmp_path, now=now, **settings)
    request = json.loads((folder / "request.json").read_text())
    with TestClient(app) as client:
        response = client.post(f"/cds-services/{folder.parent.name}", json=request)
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    assert cards
    return cards


def _smart(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [link for link in card.get("links", []) if link["type"] == "smart"]


@pytest.mark.parametrize(
    ("case", "rule"),
    [
        ("muscle-spasm-patient-view/rf-01-injury-condition-fires", "RF-01"),
        ("muscle-spasm-encounter-start/as-01-recent-spasm-condition-fires", "AS-01"),
    ],
)
def test_card_carries_smart_link_when_launch_url_set(tmp_path: Path, case: str, rule: str) -> None:
    cards = _call(tmp_path, case, smart_launch_url=LAUNCH)
    request = json.loads((SCENARIOS / case / "request.json").read_text())
    card = next(c for c in cards if c["source"]["topic"]["code"] == rule)
    links = _smart(card)
    assert len(links) == 1
    link = links[0]
    assert link["url"] == LAUNCH
    assert link["label"] == "Open the muscle spasm assessment form"
    context = json.loads(link["appContext"])
    assert context["questionnaire"].split("|")[0] == QUESTIONNAIRE
    assert context["hookInstance"] == request["hookInstance"]


@pytest.mark.parametrize(
    "case",
    [
        "muscle-spasm-patient-view/rf-01-injury-condition-fires",
        "muscle-spasm-encounter-start/as-01-recent-spasm-condition-fires",
    ],
)
def test_no_smart_link_without_launch_url(tmp_path: Path, case: str) -> None:
    cards = _call(tmp_path, case)
    assert all(not _smart(c) for c in cards)


def test_rules_that_do_not_read_the_assessment_get_no_link() -> None:
    rules = assessment_questionnaires(shared_knowledge(Settings()))
    base = "http://example.org/fhir/muscle-spasm/PlanDefinition/"
    assert base + "as-01" in rules  # declares the questionnaire (relatedArtifact depends-on)
    assert base + "rf-01" in rules  # reads the assessment's QuestionnaireResponses
    assert base + "ms-02" not in rules  # a medication rule reads no assessment
    assert {q for q, _ in rules.values()} == {f"{QUESTIONNAIRE}|0.1.0"}
    cards = [{"summary": "x", "links": [{"label": "a", "url": "https://a", "type": "absolute"}]}]
    add_smart_links(cards, base + "ms-02", rules, LAUNCH, "h-1")
    assert len(cards[0]["links"]) == 1
    add_smart_links(cards, base + "rf-01", rules, None, "h-1")
    assert len(cards[0]["links"]) == 1
    add_smart_links(cards, base + "rf-01", rules, LAUNCH, "h-1")
    assert [link["type"] for link in cards[0]["links"]] == ["absolute", "smart"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("smart_launch_url", "launch.html"),
        ("smart_launch_url", "https://a.example/launch#x"),
        ("smart_redirect_uri", "ftp://a.example/"),
        ("smart_client_id", "two words"),
        ("smart_scopes", "   "),
    ],
)
def test_smart_settings_are_validated(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings(**{name: value})
