"""The rule authors' explain tool prints variables and the cards of a request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_service.tools.explain import main

REQUEST = (
    Path(__file__).resolve().parents[1]
    / "scenarios/muscle-spasm-patient-view/rf-01-injury-condition-fires/request.json"
)


def test_explain_prints_variables_and_cards(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(REQUEST), "injuryEvidence", "spasmEvidence"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "%injuryEvidence = [true]" in lines
    assert "%spasmEvidence = [true]" in lines
    cards = json.loads(out[out.index("{") :])["cards"]
    assert "RF-01" in [c["source"]["topic"]["code"] for c in cards]


def test_explain_pins_the_clock(capsys: pytest.CaptureFixture[str]) -> None:
    # A year later the injury is no longer recent: no RF-01 card.
    assert main([str(REQUEST), "injuryEvidence", "--now", "2027-12-01T12:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "%injuryEvidence = [false]" in out.splitlines()
