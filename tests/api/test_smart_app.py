"""The SMART app's pages and registration values (fhir_service/api/smart_app.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fhir_service.api.smart_app import FHIRCLIENT_BUILD
from tests.conftest import make_app

FORM = "/forms/muscle-spasm-assessment"


def test_configuration_defaults_to_this_deployment(tmp_path: Path) -> None:
    app = make_app(tmp_path, public_base_url="https://cds.example.org")
    with TestClient(app) as client:
        body = client.get(f"{FORM}/smart-configuration").json()
    assert body["clientId"] == "muscle-spasm-assessment"
    assert body["redirectUri"] == f"https://cds.example.org{FORM}"
    assert body["launchUrl"] == f"https://cds.example.org{FORM}/launch"
    scopes = body["scope"].split()
    assert {"launch", "launch/patient", "patient/Observation.rs"} <= set(scopes)
    assert {"patient/QuestionnaireResponse.c", "patient/Observation.c"} <= set(scopes)


def test_configuration_follows_the_settings(tmp_path: Path) -> None:
    app = make_app(
        tmp_path,
        smart_client_id="ehr-registered-id",
        smart_redirect_uri="https://apps.example.org/assessment",
        smart_launch_url="https://apps.example.org/assessment/launch",
        smart_scopes="launch patient/*.rs  patient/QuestionnaireResponse.c",
    )
    with TestClient(app) as client:
        body = client.get(f"{FORM}/smart-configuration").json()
    assert body == {
        "clientId": "ehr-registered-id",
        "scope": "launch patient/*.rs patient/QuestionnaireResponse.c",
        "redirectUri": "https://apps.example.org/assessment",
        "launchUrl": "https://apps.example.org/assessment/launch",
    }


def test_launch_page_loads_the_local_fhirclient(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path)) as client:
        page = client.get(f"{FORM}/launch?launch=abc&iss=https://ehr.example.org/fhir")
        assert page.status_code == 200
        assert 'src="/forms/fhirclient/fhir-client.min.js"' in page.text
        assert 'data-questionnaire-id="muscle-spasm-assessment"' in page.text
        assert "http" not in page.text.split("<body")[0].replace("http-equiv", "")  # no CDN
        assert client.get("/forms/smart/launch.js").status_code == 200
        assert client.get("/forms/smart/smart.js").status_code == 200
        for missing in (
            "/forms/unknown/launch",
            "/forms/unknown/smart-configuration",
            "/forms/smart/other.js",
            "/forms/fhirclient/package.json",
        ):
            answer = client.get(missing)
            assert answer.status_code == 404, missing
            assert answer.json()["resourceType"] == "OperationOutcome"


@pytest.mark.skipif(
    not (FHIRCLIENT_BUILD / "fhir-client.min.js").is_file(),
    reason="fhirclient is not installed (scripts/browser-deps.sh)",
)
def test_fhirclient_is_served_locally(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path)) as client:
        answer = client.get("/forms/fhirclient/fhir-client.min.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert b"oauth2" in answer.content
