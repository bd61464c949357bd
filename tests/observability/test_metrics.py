"""``GET /metrics`` (contract, Additions of 2026-12, "Metrics"): a patient-view call shows under
its route template and service, with the rules it fired; prefetch fetches with their outcomes;
feedback outcomes and override reasons per rule; the knowledge version."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from fhir_service.observability.metrics import OTHER, Metrics, route_label
from tests.conftest import make_app
from tests.observability.helpers import PV, pv_request, samples, value

RULE_SYSTEM = "http://example.org/fhir/muscle-spasm/CodeSystem/rule"


def test_patient_view_call_shows_under_its_service_and_rules(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path)) as client:
        before = client.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain; version=")
        response = client.post(PV, json=pv_request())
        assert response.status_code == 200
        fired = {(c["source"]["topic"]["code"], c["indicator"]) for c in response.json()["cards"]}
        assert fired == {("RF-05", "warning"), ("LAB-01", "info")}
        text = client.get("/metrics").text
    service = "muscle-spasm-patient-view"
    assert value(text, "fhir_service_cds_hook_calls_total", service=service, status="200") == 1
    assert value(text, "fhir_service_cds_hook_call_duration_seconds_count", service=service) == 1
    route = {"method": "POST", "route": "/cds-services/{service_id}"}
    assert value(text, "fhir_service_http_requests_total", status="200", **route) == 1
    assert value(text, "fhir_service_http_request_duration_seconds_count", **route) == 1
    for rule, indicator in fired:
        assert value(text, "fhir_service_cds_cards_total", service=service, rule=rule) == 1, rule
        assert value(text, "fhir_service_cds_cards_total", rule=rule, indicator=indicator) == 1
    assert value(text, "fhir_service_cds_cards_total") == 2
    assert value(text, "fhir_service_knowledge_info") == 1
    (version,) = {labels["version"] for name, labels, _ in samples(text) if "knowledge" in name}
    assert version  # the same version /readyz reports
    # the earlier scrape counted itself under its own route
    assert value(text, "fhir_service_http_requests_total", route="/metrics", status="200") == 1


def test_routes_are_labelled_by_template_never_by_path(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path)) as client:
        client.get("/fhir/PlanDefinition/rf-05")
        client.get("/fhir/PlanDefinition/ms-01")
        client.get("/fhir/PlanDefinition?name=anything&identifier=x")
        client.get("/not/a/route/p1?patient=p1")
        client.post("/cds-services/no-such-service", json={})
        text = client.get("/metrics").text
    routes = {labels["route"] for n, labels, _ in samples(text) if "route" in labels}
    assert routes == {
        "/fhir/{resource_type}/{rid}",
        "/fhir/{resource_type}",
        "(unmatched)",
        "/cds-services/{service_id}",
    }  # (a scrape is counted once it has been answered: in the next one)
    get_read = {"method": "GET", "route": "/fhir/{resource_type}/{rid}", "status": "200"}
    assert value(text, "fhir_service_http_requests_total", **get_read) == 2
    # an unknown service id is no label of its own
    assert value(text, "fhir_service_cds_hook_calls_total", service=OTHER, status="404") == 1


def searchset(*resources: dict[str, object]) -> dict[str, object]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def test_prefetch_fetches_counted_per_resource_type_and_outcome(tmp_path: Path) -> None:
    """Nothing prefetched: the service fetches every key from fhirServer; one answer fails."""
    failing = "Observation"

    def ehr(request: httpx.Request) -> httpx.Response:
        kind = request.url.path.rsplit("/", 1)[-1]
        if kind == failing:
            return httpx.Response(503, json={"resourceType": "OperationOutcome"})
        if kind == "Patient" or "/Patient/" in request.url.path:
            return httpx.Response(
                200,
                json={"resourceType": "Patient", "id": "p1"},
                headers={"content-type": "application/fhir+json"},
            )
        return httpx.Response(
            200, json=searchset(), headers={"content-type": "application/fhir+json"}
        )

    app = make_app(tmp_path, transport=httpx.MockTransport(ehr))
    body = pv_request()
    del body["prefetch"]
    body["fhirServer"] = "http://ehr.test/fhir"
    with TestClient(app) as client:
        assert client.post(PV, json=body).status_code == 412
        text = client.get("/metrics").text
    fetched = {
        (labels["resource_type"], labels["outcome"]): v
        for n, labels, v in samples(text)
        if n == "fhir_service_prefetch_fetches_total"
    }
    assert fetched[(failing, "http_error")] >= 1
    assert fetched[("Condition", "ok")] == 1
    assert all(kind.isalpha() and kind[0].isupper() for kind, _ in fetched)
    total = sum(fetched.values())
    assert value(text, "fhir_service_prefetch_fetch_duration_seconds_count") == total
    assert value(text, "fhir_service_cds_hook_calls_total", status="412") == 1


def test_feedback_outcomes_and_override_reasons_per_rule(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path)) as client:
        cards = client.post(PV, json=pv_request()).json()["cards"]
        by_rule = {c["source"]["topic"]["code"]: c for c in cards}
        warning, info = by_rule["RF-05"], by_rule["LAB-01"]
        known = {"system": RULE_SYSTEM, "code": "RF-05"}  # a code the knowledge base defines
        foreign = {"system": "urn:example:reasons", "code": "MRN-0001"}
        items = [
            {"card": warning["uuid"], "outcome": "overridden", "overrideReason": {"reason": known}},
            {
                "card": warning["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": foreign},
            },
            {"card": info["uuid"], "outcome": "overridden", "overrideReason": {"userComment": "x"}},
            {"card": "not-a-card", "outcome": "overridden"},
        ]
        for i, item in enumerate(items):
            item["outcomeTimestamp"] = f"2026-12-01T12:0{i}:00Z"
        feedback = f"{PV}/feedback"
        assert client.post(feedback, json={"feedback": items}).status_code == 200
        # repeated items are stored once and counted once
        assert client.post(feedback, json={"feedback": items}).status_code == 200
        text = client.get("/metrics").text
    fb = "fhir_service_cds_feedback_total"
    assert value(text, fb, rule="RF-05", outcome="overridden") == 2
    assert value(text, fb, rule="LAB-01", outcome="overridden") == 1
    assert value(text, fb, rule="", outcome="overridden") == 1  # unknown card
    reasons = "fhir_service_cds_override_reasons_total"
    assert value(text, reasons, rule="RF-05", reason="RF-05") == 1
    assert value(text, reasons, rule="RF-05", reason=OTHER) == 1
    assert value(text, reasons, rule="LAB-01", reason="none") == 1
    assert "MRN-0001" not in text


def test_metrics_need_no_auth(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path, auth="jwt")) as client:
        assert client.get("/cds-services").status_code == 401
        response = client.get("/metrics")
    assert response.status_code == 200
    assert 'route="/cds-services",status="401"' in response.text


def test_route_label_of_a_mount_and_of_nothing() -> None:
    class Mount:
        path = "/static"
        routes: list[object] = []

    assert route_label({}) == "(unmatched)"
    assert route_label({"route": Mount()}) == "/static/{path}"


def test_label_values_from_clients_are_closed_sets() -> None:
    metrics = Metrics(["s"], "v1")
    metrics.observe_request("BREW", "/x", 200, 0.1, service_id="s")
    metrics.observe_cards("nope", [{"indicator": "fatal", "source": {"topic": {"code": "a b"}}}])
    metrics.observe_fetch("../Patient?name=Smith", "ok", 0.1)
    text = metrics.exposition().decode()
    assert value(text, "fhir_service_http_requests_total", method=OTHER) == 1
    assert value(text, "fhir_service_cds_cards_total", service=OTHER, rule=OTHER) == 1
    assert value(text, "fhir_service_prefetch_fetches_total", resource_type=OTHER) == 1
    assert "Smith" not in text and "BREW" not in text and json.dumps("a b") not in text
