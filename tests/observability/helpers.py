"""Reading ``/metrics`` in tests: samples by name and labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
#: A patient-view request that fires RF-05 (warning) and LAB-01 (info) at 2026-12-01T12:00Z.
PV_SCENARIO = ROOT / "tests/scenarios/muscle-spasm-patient-view/lab-01-90-and-91-day-labs"
PV = "/cds-services/muscle-spasm-patient-view"


def pv_request() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((PV_SCENARIO / "request.json").read_text("utf-8"))
    return body


Sample = tuple[str, dict[str, str], float]


def samples(text: str) -> list[Sample]:
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        v
        for n, got, v in samples(text)
        if n == name and all(got.get(k) == want for k, want in labels.items())
    )
