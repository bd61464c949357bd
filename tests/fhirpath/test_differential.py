"""The service's FHIRPath against genuinely plain fhirpathpy, and fhirpathpy left untouched.

One fresh interpreter (``python -m tests.fhirpath.differential``) snapshots fhirpathpy's modules
before importing the service, builds the runtime, evaluates every expression of
``definitions/`` on the data of every golden scenario and every ``tests/fhirpath/*.yaml`` case in
both arms, then checks every fhirpathpy module attribute is still the identical object.
The only allowed differences are the deliberate ones of docs/fhirpath.md ("Differences from
plain fhirpathpy").
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy.engine

from tests.fhirpath import pristine

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "fhirpath.md"
#: yaml cases where the service deliberately differs, with the row of the docs table naming why
DELIBERATE = {
    "false and anything is false, the right side is not evaluated": "short-circuit",
    "true or anything is true, the right side is not evaluated": "short-circuit",
    "false implies anything is true, the right side is not evaluated": "short-circuit",
    "an error after a false leading test is not raised (short-circuit)": "short-circuit",
}


@cache
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.fhirpath.differential"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_fhirpathpy_modules_are_the_originals_after_the_service_ran() -> None:
    result = report()
    assert result["definition_evaluations"] > 1000  # the service really evaluated
    assert result["fhirpathpy_changes"] == []


def test_every_definition_gives_plain_fhirpathpy_values_on_every_scenario() -> None:
    result = report()
    assert result["definition_expressions"] >= 100
    assert result.get("definition_errors", 0) < result["definition_evaluations"] // 10
    assert result["mismatches"] == []


def test_spec_cases_differ_only_where_documented() -> None:
    outcomes = report()["case_outcomes"]
    assert len(outcomes) >= 150
    differing = {c["desc"]: c for c in outcomes if not c["same"]}
    assert set(differing) == set(DELIBERATE)
    for case in differing.values():  # the service answers; plain fhirpathpy raises
        assert "value" in case["ours"] and "error" in case["fhirpathpy"]
    table = DOC.read_text(encoding="utf-8")
    for reason in set(DELIBERATE.values()):
        assert f"| {reason} |" in table


def test_the_snapshot_sees_a_reassigned_global() -> None:
    """Negative control: the check of the first test fails when something is patched."""
    before = pristine.snapshot()
    original = fhirpathpy.engine.do_eval
    try:
        fhirpathpy.engine.do_eval = lambda *args: original(*args)
        assert pristine.changes(before) == ["reassigned fhirpathpy.engine.do_eval"]
    finally:
        fhirpathpy.engine.do_eval = original
    assert pristine.changes(before) == []
