"""The assessment as a SMART on FHIR app, end to end with real parts (docs/smart-launch.md).

Debian Chromium (Playwright) drives the form page served by the service under uvicorn; the EHR
is ``tests/browser/smart_ehr.py``: an authlib authorization server with SMART's launch context
and a token-enforcing gateway in front of SEKMET, the real FHIR server of the integration tests
(``tests/integration/_servers.py``). All on loopback.

* EHR launch from a card: the chart calls patient-view, a card's ``smart`` link launches the
  app (``launch`` + ``iss``, code + PKCE), the form is pre-filled from the EHR through
  ``$populate``, the clinician answers, reviews, confirms, and the QuestionnaireResponse and the
  extracted Observations land on the FHIR server; the new cards show.
* Standalone launch (``iss`` only, the EHR's patient picker).
* A denied scope (no ``QuestionnaireResponse`` write): a plain warning, the EHR's 403 as a
  sentence, nothing written, the answers downloadable.
* An EHR that answers 401 on write: a plain sentence, the answers kept and restored on relaunch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.browser.smart_ehr import Ehr, smart_ehr
from tests.browser.test_assessment_form import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    answer_no,
    answer_yes,
    answers,
    choose,
    chromium,  # noqa: F401  (fixture)
    serve,
    visible,
)
from tests.conftest import make_app
from tests.integration._servers import (
    CannotInstall,
    free_port,
    http_json,
    load_transaction,
    sekmet_executable,
    sekmet_server,
)

pytestmark = pytest.mark.slow

FORM = "muscle-spasm-assessment"
CLIENT_ID = "muscle-spasm-assessment"
QUESTIONNAIRE = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        sekmet = sekmet_executable()
    except CannotInstall as err:
        pytest.skip(f"the FHIR server (SEKMET) cannot be installed: {err}")
    with sekmet_server(tmp_path_factory.mktemp("sekmet"), sekmet) as server:
        yield server.base


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = make_app(
        tmp_path_factory.mktemp("smart-service"),
        now=datetime.now(UTC),
        public_base_url=base,
        smart_launch_url=f"{base}/forms/{FORM}/launch",
        smart_client_id=CLIENT_ID,
        fhir_server_allowlist=("http://127.0.0.1",),
    )
    with serve(app, port):
        yield base


@pytest.fixture(scope="module")
def ehr(fhir_server: str, service: str) -> Iterator[Ehr]:
    with smart_ehr(fhir_server, f"{service}/cds-services/muscle-spasm-patient-view") as running:
        running.register(CLIENT_ID, f"{service}/forms/{FORM}")
        yield running


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, ehr: Ehr) -> Iterator[Any]:
    ehr.denied = set()
    ehr.fail_writes = None
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], errors


def _day(days_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).date().isoformat()


def seed_patient(fhir_base: str, name: str) -> str:
    """A patient with a current cramp, a neck injury 10 days ago, a pain score of 6 two days
    ago and 'not pregnant' a week ago; returns the patient's id on the FHIR server."""
    pid = f"urn:uuid:{uuid.uuid4()}"
    subject = {"reference": pid}

    def condition(code: str, display: str, onset: str, status: str) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": status,
                    }
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "confirmed",
                    }
                ]
            },
            "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
            "subject": subject,
            "onsetDateTime": onset,
            "recordedDate": onset,
        }

    def observation(code: str, value: dict[str, Any], day: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": subject,
            "effectiveDateTime": day,
            **value,
        }

    resources = [
        {
            "resourceType": "Patient",
            "name": [{"text": name, "family": name.split()[-1], "given": name.split()[:1]}],
            "gender": "female",
            "birthDate": "1980-02-03",
        },
        condition("55300003", "Cramp", _day(3), "active"),
        condition("90460009", "Injury of neck", _day(10), "resolved"),
        observation("72514-3", {"valueInteger": 6}, _day(2)),
        observation(
            "82810-3",
            {"valueCodeableConcept": {"coding": [{"system": SCT, "code": "60001007"}]}},
            _day(7),
        ),
    ]
    entries = []
    for index, resource in enumerate(resources):
        full_url = pid if index == 0 else f"urn:uuid:{uuid.uuid4()}"
        entries.append(
            {
                "fullUrl": full_url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
    made = load_transaction(
        fhir_base, {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    return made[pid].split("/")[1]


def search(fhir_base: str, query: str) -> list[dict[str, Any]]:
    """The patient's resources of one type (SEKMET ignores some search parameters, such as
    ``patient`` on QuestionnaireResponse: the subject is checked here too)."""
    rtype, _, params = query.partition("?")
    patient = dict(p.split("=", 1) for p in params.split("&"))["patient"]
    params = params.replace(f"patient={patient}", f"subject=Patient/{patient}")
    status, bundle = http_json("GET", f"{fhir_base}/{rtype}?{params}")
    assert status == 200, bundle
    found = [e["resource"] for e in (bundle or {}).get("entry", [])]
    return [
        r
        for r in found
        if r["resourceType"] == rtype
        and r.get("subject", {}).get("reference") == f"Patient/{patient}"
    ]


def wait_ready(page: Any) -> None:
    page.wait_for_function("window.__ready === true || !!window.__failed", timeout=60_000)
    assert page.evaluate("window.__failed || null") is None, page.locator("#status").inner_text()


def form_answers(page: Any) -> dict[str, list[Any]]:
    qr = page.evaluate(
        "LForms.Util.getFormFHIRData('QuestionnaireResponse', 'R4',"
        " document.getElementById('formContainer'))"
    )
    return answers(qr)


#: The red-flag items a completed assessment must answer (they are ``required``), other than the
#: pain score the chart pre-fills: a clinician who has nothing to report answers "No"/"None".
RED_FLAG_BOOLEANS = (
    "new-weakness",
    "sensory-change",
    "other-neuro",
    "swelling",
    "skin-change",
    "self-care-tried",
)


def answer_remaining_red_flags(page: Any) -> None:
    """Answer, as a clinician with nothing more to report, the required items still blank."""
    given = form_answers(page)
    if "frequency" not in given:
        choose(page, "frequency", "First episode")
    for link_id in RED_FLAG_BOOLEANS:
        if link_id not in given:
            answer_no(page, link_id)
    if "altered-mentation" not in given and visible(page, "altered-mentation"):
        answer_no(page, "altered-mentation")
    if "recent-injury" not in given:
        choose(page, "recent-injury", "None")


def review_and_write(page: Any, until: str) -> str:
    """Submit, accept the review as it is, write; returns the status line once ``until``."""
    answer_remaining_red_flags(page)
    page.locator("#submit").click()
    page.wait_for_selector("#review:not([hidden])")
    page.locator("#write").click()
    page.wait_for_function(until, timeout=60_000)
    return str(page.locator("#status").inner_text())


def ehr_launch(page: Any, ehr: Ehr, service: str, patient: str) -> None:
    """What the EHR does for a smart link: a launch id bound to the patient, then the app."""
    context = json.dumps({"questionnaire": QUESTIONNAIRE, "hookInstance": str(uuid.uuid4())})
    query = {"url": f"{service}/forms/{FORM}/launch", "patient": patient, "appContext": context}
    from urllib.parse import urlencode

    page.goto(f"{ehr.base}/ehr/launch?{urlencode(query)}")
    wait_ready(page)


def test_ehr_launch_from_a_card_prefills_writes_back_and_refreshes_cards(
    page: Any, ehr: Ehr, fhir_server: str
) -> None:
    patient = seed_patient(fhir_server, "Ana Rivera")
    page.goto(f"{ehr.base}/ehr/chart/{patient}")
    assert page.locator("#cds-status").inner_text() == "200"
    before = set(page.locator(".card").evaluate_all("cs => cs.map(c => c.dataset.rule)"))
    assert "RF-01" in before  # the neck injury within 30 days
    link = page.locator('.card[data-rule="RF-01"] a.link-smart')
    assert link.inner_text() == "Open the muscle spasm assessment form"
    link.click()
    wait_ready(page)
    page.screenshot(path=str(ARTIFACTS / "smart-launch-prefilled.png"), full_page=True)

    smart = page.evaluate("window.__smart")
    assert smart["patientId"] == patient
    assert smart["serverUrl"] == ehr.fhir_base
    assert smart["appContext"]["questionnaire"].split("|")[0] == QUESTIONNAIRE
    assert smart["appContext"]["hookInstance"]
    assert page.locator("#ehr-patient").inner_text().startswith("Ana Rivera")
    assert page.locator("#ehr-warning").is_hidden()
    status = page.locator("#status").inner_text()
    assert status.startswith("Pre-filled 2 answer(s) from the EHR record"), status
    found = form_answers(page)
    assert found["pain-nrs"] == [6]
    assert [c["code"] for c in found["pregnancy"]] == ["60001007"]

    choose(page, "environment", "Heat")
    answer_yes(page, "heavy-sweating")
    answer_yes(page, "sensory-change")
    choose(page, "sensory-detail", "Numbness")
    answer_remaining_red_flags(page)
    page.locator("#submit").click()
    page.wait_for_selector("#review:not([hidden])")
    review = page.locator("#review-list li").all_inner_texts()
    assert review[0].startswith("The completed assessment (") and "Ana Rivera" in review[0]
    extracted = page.locator("#review-extracted li").all_inner_texts()
    assert any("Observation" in t and "= 6" in t for t in extracted), extracted
    assert search(fhir_server, f"QuestionnaireResponse?patient={patient}") == []  # not yet
    page.locator("#confirm-extract").check()
    page.locator("#write").click()
    page.wait_for_function("window.__submitted === true", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "smart-launch-written.png"), full_page=True)
    assert page.locator("#status").inner_text() == (
        "Saved to the EHR: the assessment and its findings."
    )

    written = page.locator("#extracted li").all_inner_texts()
    assert any("Observation" in t and "= 6" in t for t in written), written

    stored = search(fhir_server, f"QuestionnaireResponse?patient={patient}")
    assert len(stored) == 1
    qr = stored[0]
    assert qr["status"] == "completed" and qr["questionnaire"].startswith(QUESTIONNAIRE)
    assert answers(qr)["pain-nrs"] == [6]
    assert answers(qr)["sensory-change"] == [True]
    pains = search(fhir_server, f"Observation?patient={patient}&code=72514-3")
    assert len(pains) == 2  # the chart's and the extracted one
    made = [o for o in pains if o.get("derivedFrom")]
    assert [o["derivedFrom"][0]["reference"] for o in made] == [f"QuestionnaireResponse/{qr['id']}"]

    cds = page.evaluate("window.__lastCds")
    assert cds["status"] == 200, cds
    after = {c["source"]["topic"]["code"] for c in cds["json"]["cards"]}
    assert page.locator("#cards .card").count() == len(cds["json"]["cards"])
    assert after - before, (before, after)  # the answers brought new guidance
    # the service read the assessment from the EHR with the app's token
    assert any(
        m == "GET" and p.startswith("/fhir/QuestionnaireResponse?") and s == 200
        for m, p, s in ehr.requests
    )


def test_standalone_launch_picks_a_patient_and_prefills(
    page: Any, ehr: Ehr, service: str, fhir_server: str
) -> None:
    patient = seed_patient(fhir_server, "Bea Standalone")
    page.goto(f"{service}/forms/{FORM}/launch?iss={ehr.fhir_base}")
    page.locator("a.patient", has_text="Bea Standalone").click()
    wait_ready(page)
    smart = page.evaluate("window.__smart")
    assert smart["patientId"] == patient
    assert smart["appContext"] == {}
    assert "launch/patient" in smart["scopes"] and "launch" not in smart["scopes"]
    assert form_answers(page)["pain-nrs"] == [6]


def test_denied_write_scope_is_explained_and_nothing_is_lost(
    page: Any, ehr: Ehr, service: str, fhir_server: str
) -> None:
    patient = seed_patient(fhir_server, "Cora Denied")
    ehr.denied = {"patient/QuestionnaireResponse.c"}
    ehr_launch(page, ehr, service, patient)
    assert "patient/QuestionnaireResponse.c" not in page.evaluate("window.__smart.scopes")
    warning = page.locator("#ehr-warning")
    assert warning.is_visible()
    assert "did not give this app permission to save the assessment" in warning.inner_text()
    answer_yes(page, "sensory-change")
    status = review_and_write(page, "!!window.__lastWriteError")
    assert status.startswith("The EHR does not allow this app to save the assessment"), status
    assert "403" in status
    assert search(fhir_server, f"QuestionnaireResponse?patient={patient}") == []
    assert form_answers(page)["sensory-change"] == [True]
    with page.expect_download() as download:
        page.locator("#download").click()
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved["resourceType"] == "QuestionnaireResponse"
    assert saved["subject"] == {"reference": f"Patient/{patient}"}
    assert answers(saved)["sensory-change"] == [True]


def test_401_on_write_keeps_the_answers_for_a_relaunch(
    page: Any, ehr: Ehr, service: str, fhir_server: str
) -> None:
    patient = seed_patient(fhir_server, "Dana Expired")
    ehr.fail_writes = 401
    ehr_launch(page, ehr, service, patient)
    page.locator('[id="pain-nrs/1/1"]').fill("9")
    page.locator("#title").click()
    status = review_and_write(page, "!!window.__lastWriteError")
    assert status.startswith("The EHR no longer accepts this session"), status
    assert "launch the app again" in status
    assert form_answers(page)["pain-nrs"] == [9]  # still on the page
    assert search(fhir_server, f"QuestionnaireResponse?patient={patient}") == []

    ehr.fail_writes = None
    ehr_launch(page, ehr, service, patient)  # relaunch in the same browser
    assert page.locator("#status").inner_text().startswith("Restored the answers")
    assert form_answers(page)["pain-nrs"] == [9]
    review_and_write(page, "window.__submitted === true")
    stored = search(fhir_server, f"QuestionnaireResponse?patient={patient}")
    assert [answers(qr)["pain-nrs"] for qr in stored] == [[9]]
    assert (
        search(fhir_server, f"Observation?patient={patient}&code=72514-3")[0]["valueInteger"] == 6
    )


def test_conflict_and_server_error_are_explained_and_a_retry_writes_once(
    page: Any, ehr: Ehr, service: str, fhir_server: str
) -> None:
    patient = seed_patient(fhir_server, "Eva Retry")
    ehr_launch(page, ehr, service, patient)
    ehr.fail_writes = 412
    status = review_and_write(page, "!!window.__lastWriteError")
    assert status.startswith("The record changed in the EHR while you were working"), status
    page.evaluate("window.__lastWriteError = null")
    ehr.fail_writes = 503
    page.locator("#write").click()  # the same review, written again
    page.wait_for_function("!!window.__lastWriteError", timeout=30_000)
    status = page.locator("#status").inner_text()
    assert status.startswith("The EHR had a problem and did not save the assessment"), status
    assert "503" in status and "Your answers are kept" in status
    ehr.fail_writes = None
    page.locator("#write").click()
    page.wait_for_function("window.__submitted === true", timeout=60_000)
    assert page.locator("#status").inner_text() == "Saved to the EHR: the assessment."
    assert len(search(fhir_server, f"QuestionnaireResponse?patient={patient}")) == 1
