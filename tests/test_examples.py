"""``examples/run_examples.py`` against the service under uvicorn, so no example can rot.

Every CDS Hooks request file under ``examples/cds-hooks/`` and every example patient
(``examples/patients/``) goes through a real HTTP server started on a free loopback port with
the clock the examples were written for; any non-2xx answer fails the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration._servers import ROOT, Server, free_port, uvicorn_server

SCRIPT = ROOT / "examples" / "run_examples.py"
PATIENTS = sorted((ROOT / "examples" / "patients").glob("*.json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with uvicorn_server(tmp_path_factory.mktemp("examples")) as running:
        yield running


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def test_every_example_answers_2xx(server: Server) -> None:
    done = run(server.base)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    hook_files = [
        p
        for p in sorted((ROOT / "examples" / "cds-hooks").rglob("*.json"))
        if "hook" in json.loads(p.read_text(encoding="utf-8"))
    ]
    assert f"-- {len(hook_files)} CDS Hooks request file(s)" in out
    for path in hook_files:
        assert str(path.relative_to(ROOT / "examples")) in out
    for path in PATIENTS:
        assert f"== patients/{path.name}:" in out
    # the RF-01 example patient shows the RF-01 card and the prefill of the latest pain score
    rivera = out.split("== patients/rf01-neck-injury.json:", 1)[1].split("\n== ", 1)[0]
    assert "[WARNING ] RF-01" in rivera
    assert "$apply PlanDefinition/rf-01: CarePlan draft, actions RF-01" in rivera
    assert "pain-nrs 7" in rivera


def test_a_failing_call_exits_non_zero() -> None:
    done = run(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert done.returncode == 1
    assert "FAILED" in done.stderr


def test_patient_bundles_are_transactions_with_conditional_creates() -> None:
    assert len(PATIENTS) >= 5
    for path in PATIENTS:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        assert [e["resource"]["resourceType"] for e in bundle["entry"]].count("Patient") == 1
        full_urls = {e["fullUrl"] for e in bundle["entry"]}
        for entry in bundle["entry"]:
            assert entry["fullUrl"].startswith("urn:uuid:")
            assert entry["request"]["method"] == "POST"
            assert entry["request"]["ifNoneExist"].startswith("identifier=")
            subject = entry["resource"].get("subject", {}).get("reference")
            assert subject is None or subject in full_urls
