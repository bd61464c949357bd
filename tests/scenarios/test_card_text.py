"""Text a clinician reads (clinical-rules R2.6): every card of every golden scenario, and the form.

``test_scenarios.py`` holds each scenario's response equal to its ``expected.json``, so walking
the ``expected.json`` files walks every card the scenarios produce. A card's clinician-facing
text (summary, detail, source label, suggestion and action labels, link labels, override reason
displays) names its sources in clinical language: no file name, hash, parameter name (``P_…``),
"implementation" remark or the word "seed" (provenance stays in ``relatedArtifact``). Every
``warning`` and ``critical`` card offers the override reasons of the guideline's one CodeSystem.
The assessment form page and the Questionnaire's texts follow the same rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT

HERE = Path(__file__).resolve().parent
EXPECTED = sorted(HERE.glob("*/*/expected.json"))
REASON_SYSTEM = "http://example.org/fhir/muscle-spasm/CodeSystem/override-reason"
REQUIRED_REASONS = {"patient-aware", "not-applicable", "already-addressed", "record-incorrect"}
LABEL_PREFIX = "Muscle Spasm Guideline"
FORBIDDEN = {
    "a file name": re.compile(r"\b[\w-]+\.(?:txt|json|py|md|ya?ml|csv|html)\b", re.I),
    "a hash": re.compile(r"[0-9a-f]{16,}", re.I),
    "a parameter name": re.compile(r"\bP_[A-Z]"),
    "the word 'seed'": re.compile(r"\bseeds?\b", re.I),
    "an implementation remark": re.compile(r"implementation|\[IMPL\]", re.I),
}


def forbidden_in(text: str) -> list[str]:
    return [f"{what}: {m.group(0)!r}" for what, rx in FORBIDDEN.items() if (m := rx.search(text))]


def card_texts(card: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, text) for every clinician-facing text of a card."""
    yield "summary", card.get("summary", "")
    yield "detail", card.get("detail", "")
    yield "source.label", card.get("source", {}).get("label", "")
    yield "source.topic.display", card.get("source", {}).get("topic", {}).get("display", "")
    for i, suggestion in enumerate(card.get("suggestions") or ()):
        yield f"suggestions[{i}].label", suggestion.get("label", "")
        for j, action in enumerate(suggestion.get("actions") or ()):
            yield f"suggestions[{i}].actions[{j}].description", action.get("description", "")
    for i, link in enumerate(card.get("links") or ()):
        yield f"links[{i}].label", link.get("label", "")
    for i, reason in enumerate(card.get("overrideReasons") or ()):
        yield f"overrideReasons[{i}].display", reason.get("display", "")


def card_problems(card: dict[str, Any]) -> list[str]:
    problems = [f"{where}: {p}" for where, text in card_texts(card) for p in forbidden_in(text)]
    if not card.get("source", {}).get("label", "").startswith(LABEL_PREFIX):
        problems.append(f"source.label does not start with {LABEL_PREFIX!r}")
    if card.get("indicator") in ("warning", "critical"):
        reasons = card.get("overrideReasons") or []
        if {r.get("system") for r in reasons} != {REASON_SYSTEM}:
            problems.append(f"overrideReasons not all from {REASON_SYSTEM}: {reasons}")
        missing = REQUIRED_REASONS - {r.get("code") for r in reasons}
        if missing:
            problems.append(f"overrideReasons lack {sorted(missing)}")
    return problems


def test_the_walk_sees_cards_of_every_indicator() -> None:
    """The walk below is not vacuous: the goldens hold info, warning and critical cards."""
    indicators = {
        card["indicator"]
        for path in EXPECTED
        for card in json.loads(path.read_text(encoding="utf-8")).get("cards") or ()
    }
    assert {"info", "warning", "critical"} <= indicators


@pytest.mark.parametrize(
    "path", EXPECTED, ids=[f"{p.parent.parent.name}/{p.parent.name}" for p in EXPECTED]
)
def test_golden_cards_read_as_clinical_text(path: Path) -> None:
    body = json.loads(path.read_text(encoding="utf-8"))
    problems = [
        f"card {i} ({card.get('source', {}).get('topic', {}).get('code')}) {problem}"
        for i, card in enumerate(body.get("cards") or ())
        for problem in card_problems(card)
    ]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_each_forbidden_text() -> None:
    card = {
        "summary": "See P_MAOI_WASHOUT_DAYS",
        "detail": "From the seed file 000_fd95c578ff9ff21f.txt; an implementation decision.",
        "indicator": "critical",
        "source": {"label": "Muscle Spasm Guideline (seed 000_fd95c578ff9ff21f)"},
    }
    text = "\n".join(card_problems(card))
    for what in (*FORBIDDEN, "overrideReasons not all from"):
        assert what in text, what


def _questionnaire_texts(items: list[dict[str, Any]]) -> Iterator[str]:
    for item in items:
        yield item.get("text", "")
        for option in item.get("answerOption") or ():
            yield option.get("valueCoding", {}).get("display", "")
        yield from _questionnaire_texts(item.get("item") or [])


def test_form_page_and_questionnaire_text(client: TestClient) -> None:
    page = client.get("/forms/muscle-spasm-assessment?patient=pat-1")
    assert page.status_code == 200, page.text
    visible = re.sub(r"<script.*?</script>|<[^>]+>", " ", page.text, flags=re.S)
    assert not forbidden_in(visible), forbidden_in(visible)
    questionnaire = json.loads(
        (ROOT / "definitions/Questionnaire-muscle-spasm-assessment.json").read_text("utf-8")
    )
    texts = [questionnaire.get("title", ""), *_questionnaire_texts(questionnaire["item"])]
    problems = [p for text in texts for p in forbidden_in(text)]
    assert not problems, problems
