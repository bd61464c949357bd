"""The assessment page in a real browser: LHC-Forms in Debian Chromium, driven by Playwright.

A uvicorn server on a free loopback port serves the app (auth off, clock = now); Playwright
drives ``/usr/bin/chromium`` (its own browser download cannot work offline; flags as in
``scripts/browser-deps.sh``). ``scripts/browser-deps.sh`` is run first when Chromium,
lforms or Playwright is missing; the tests skip only when Chromium cannot be installed.
Screenshots go to ``tests/_artifacts/``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fhir_service.api.sdc import LFORMS_DIST
from tests.conftest import make_app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "_artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCT = "http://snomed.info/sct"


def _playwright_importable() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def _chromium() -> str | None:
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")


def _lforms() -> bool:
    return (LFORMS_DIST / "webcomponent" / "main.js").is_file()


@pytest.fixture(scope="module")
def chromium() -> str:
    if _chromium() is None or not _lforms() or not _playwright_importable():
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "browser-deps.sh")], check=False, timeout=900
        )
    path = _chromium()
    if path is None:
        pytest.skip("Chromium is not installed and scripts/browser-deps.sh could not install it")
    assert _lforms(), "lforms is missing after scripts/browser-deps.sh (npm install failed?)"
    assert _playwright_importable(), "playwright is missing after scripts/browser-deps.sh"
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(app: Any, port: int) -> Iterator[None]:
    """``app`` under uvicorn on ``127.0.0.1:port`` in a thread, until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = make_app(tmp_path_factory.mktemp("browser"), now=datetime.now(UTC))
    port = _free_port()
    with serve(app, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser_context(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any, base_url: str) -> Iterator[Any]:
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base_url}/forms/muscle-spasm-assessment?patient=pat-1")
    page.wait_for_function("window.__ready === true || !!window.__failed", timeout=30_000)
    assert page.evaluate("window.__failed || null") is None
    yield page
    page.close()
    assert errors == [], errors


def item(page: Any, link_id: str) -> Any:
    return page.locator(f'[id="item-{link_id}/1/1"]')


def answer_yes(page: Any, link_id: str) -> None:
    item(page, link_id).get_by_text("Yes", exact=True).click()


def answer_no(page: Any, link_id: str) -> None:
    item(page, link_id).get_by_text("No", exact=True).click()


def choose(page: Any, link_id: str, *labels: str) -> None:
    """Pick from an LHC-Forms autocomplete list, as a person clicking would."""
    field = page.locator(f'[id="{link_id}/1/1"]')
    for label in labels:
        field.click()
        option = page.locator("#completionOptions li", has_text=label)
        option.first.click()
    page.locator("#title").click()  # leave the field: the list closes


def visible(page: Any, link_id: str) -> bool:
    locator = item(page, link_id)
    return bool(locator.count() and locator.first.is_visible())


def fill_assessment(page: Any) -> None:
    # enableWhen: shown only once the question it depends on is answered
    assert not visible(page, "sensory-detail")
    answer_yes(page, "sensory-change")
    assert visible(page, "sensory-detail")
    choose(page, "sensory-detail", "Numbness")

    assert not visible(page, "pain-character")
    page.locator('[id="pain-nrs/1/1"]').fill("8")
    page.locator("#title").click()
    assert visible(page, "pain-character")
    choose(page, "pain-character", "Cramping")

    choose(page, "frequency", "Daily or more")
    choose(page, "body-site", "Calf/leg")

    # the red-flag items a completed response must answer (R2.7)
    for link_id in ("new-weakness", "other-neuro", "swelling", "skin-change"):
        answer_no(page, link_id)

    assert not visible(page, "heavy-sweating")
    choose(page, "environment", "Heat")
    assert visible(page, "heavy-sweating") and visible(page, "altered-mentation")
    answer_yes(page, "heavy-sweating")
    answer_no(page, "altered-mentation")

    assert not visible(page, "injury-date")
    choose(page, "recent-injury", "Injury of neck")
    assert visible(page, "injury-date")
    date_field = page.locator('[id="injury-date/1/1"] input')
    date_field.click()
    date_field.fill(datetime.now(UTC).strftime("%m/%d/%Y"))
    date_field.press("Enter")
    page.locator("#title").click()

    choose(page, "pregnancy", "Not pregnant")
    assert not visible(page, "self-care-response")
    answer_yes(page, "self-care-tried")
    choose(page, "self-care-response", "No improvement")


def answers(qr: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}

    def walk(items: list[dict[str, Any]]) -> None:
        for node in items:
            for given in node.get("answer", []):
                value = next(v for k, v in given.items() if k.startswith("value"))
                out.setdefault(node["linkId"], []).append(value)
                walk(given.get("item", []))
            walk(node.get("item", []))

    walk(qr.get("item", []))
    return out


def test_fill_and_extract(page: Any, base_url: str) -> None:
    fill_assessment(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "assessment-form-filled.png"), full_page=True)

    qr = page.evaluate(
        "LForms.Util.getFormFHIRData('QuestionnaireResponse', 'R4',"
        " document.getElementById('formContainer'))"
    )
    found = answers(qr)
    assert found["pain-nrs"] == [8]
    assert found["sensory-change"] == [True]
    assert [c["code"] for c in found["sensory-detail"]] == ["44077006"]
    assert [c["code"] for c in found["recent-injury"]] == ["90460009"]
    assert found["injury-date"] == [datetime.now(UTC).date().isoformat()]
    assert [c["code"] for c in found["pregnancy"]] == ["60001007"]
    assert "subject" not in qr  # LHC-Forms leaves it out: the caller adds it

    qr.update(
        status="completed",
        subject={"reference": "Patient/pat-1"},
        authored=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    response = httpx.post(
        f"{base_url}/fhir/QuestionnaireResponse/$extract",
        json=qr,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    made = [e["resource"] for e in response.json()["entry"]]
    summary = sorted(
        (r["resourceType"], r["code"]["coding"][0]["code"], r.get("valueInteger")) for r in made
    )
    assert summary == [
        ("Condition", "90460009", None),
        ("Observation", "72514-3", 8),
        ("Observation", "82810-3", None),
    ]
    condition = next(r for r in made if r["resourceType"] == "Condition")
    assert condition["onsetDateTime"] == datetime.now(UTC).date().isoformat()
    assert condition["subject"] == {"reference": "Patient/pat-1"}


def test_submit_shows_extracted_resources_and_cards(page: Any, base_url: str) -> None:
    discovery = httpx.get(f"{base_url}/cds-services", timeout=30)
    services = (
        {s["id"] for s in discovery.json().get("services", [])} if discovery.is_success else set()
    )
    if "muscle-spasm-patient-view" not in services:
        pytest.skip("the patient-view CDS service is not available yet (no discovery entry)")
    fill_assessment(page)
    page.locator("#submit").click()
    page.wait_for_function("window.__submitted === true", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "assessment-form-submitted.png"), full_page=True)
    extracted = page.locator("#extracted li").all_inner_texts()
    assert any("Observation: " in t and "= 8" in t for t in extracted), extracted
    assert any(t.startswith("POST Condition") for t in extracted), extracted
    cds = page.evaluate("window.__lastCds")
    assert cds["status"] == 200, cds
    cards = cds["json"]["cards"]
    shown = page.locator("#cards .card").count()
    assert shown == len(cards)
    for card in cards:
        assert card["source"]["topic"]["system"].endswith("/CodeSystem/rule")
    status = page.locator("#status").inner_text()
    assert status == "Assessment submitted.", status


def test_prefill_through_populate(page: Any) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "pain",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
                    "subject": {"reference": "Patient/pat-1"},
                    "effectiveDateTime": datetime.now(UTC).date().isoformat(),
                    "valueInteger": 6,
                }
            }
        ],
    }
    page.locator("#prefill-panel summary").click()
    page.locator("#patientData").fill(json.dumps(bundle))
    page.locator("#prefill").click()
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('Prefilled')", timeout=30_000
    )
    assert page.locator('[id="pain-nrs/1/1"]').input_value() == "6"
    assert visible(page, "pain-character")  # enableWhen follows the prefilled answer
    page.screenshot(path=str(ARTIFACTS / "assessment-form-prefilled.png"), full_page=True)


def submit_status(page: Any) -> str:
    page.evaluate("window.__submitted = false")
    page.locator("#submit").click()
    page.wait_for_function("window.__submitted === true", timeout=30_000)
    return str(page.locator("#status").inner_text())


def test_altered_mentation_is_asked_on_exertion_or_a_neurological_symptom(page: Any) -> None:
    """R2.7: not only in the heat: after exertion, or once a neurological symptom is answered."""
    assert not visible(page, "altered-mentation")
    answer_yes(page, "exercise-trigger")
    assert visible(page, "altered-mentation")
    answer_no(page, "exercise-trigger")
    assert not visible(page, "altered-mentation")
    answer_yes(page, "new-weakness")
    assert visible(page, "altered-mentation")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "assessment-form-altered-mentation.png"), full_page=True)


def test_no_item_waits_on_a_later_answer(page: Any) -> None:
    """R2.7: spasticity-distribution follows neuro-history, the question that enables it."""
    assert not visible(page, "spasticity-distribution")
    choose(page, "neuro-history", "Cerebrovascular accident")
    assert visible(page, "spasticity-distribution")
    above = item(page, "neuro-history").bounding_box()
    below = item(page, "spasticity-distribution").bounding_box()
    assert above is not None and below is not None and above["y"] < below["y"]


def test_a_completed_response_needs_the_red_flag_items_and_no_mixed_none(page: Any) -> None:
    """R2.7: red-flag items are required and "None" cannot be combined: the page does not send
    such a response (and $extract would refuse it)."""
    choose(page, "environment", "Heat", "None")
    status = submit_status(page)
    assert status.startswith("Please complete the assessment"), status
    assert "New or worsening weakness?" in status  # a required red-flag item left blank
    assert '"None" cannot be combined' in status, status
    qr = page.evaluate("window.__lastResponse")
    qr_env = answers(qr).get("environment", [])
    assert sorted(c["code"] for c in qr_env) == ["heat", "none"]
    assert page.evaluate("window.__lastExtract || null") is None  # nothing was sent
