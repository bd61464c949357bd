"""Discovery (``GET /cds-services``): contract "HTTP surface" and
https://cds-hooks.hl7.org/2.0/#discovery and #prefetch-template.

The prefetch checker parses every template: STU2 tokens valid for the service's hook only, and
the STU2 query subset (a MUST here): instance reads, and type-level searches with a
``patient``/``subject`` reference, token parameters (``=``, ``:in``), date parameters
(``eq``/``lt``/``gt``/``ge``/``le``), ``_count`` and ``_sort``; no ``_include``, compartment
search, ``$everything`` or batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient

from fhir_service import fhir
from tests.api.test_cds_hooks_support import SERVICES, cds_app, empty_values

#: Context fields marked "Prefetch Token: Yes" per hook (CDS Hooks Library 1.0.1).
CONTEXT_TOKENS = {
    "patient-view": {"userId", "patientId", "encounterId"},
    "order-select": {"userId", "patientId", "encounterId"},
    "order-sign": {"userId", "patientId", "encounterId"},
    "encounter-start": {"userId", "patientId", "encounterId"},
}
#: STU2 user tokens valid per hook (by the types ``context.userId`` may have).
USER_TOKENS = {
    "patient-view": {
        "userPractitionerId",
        "userPractitionerRoleId",
        "userPatientId",
        "userRelatedPersonId",
    },
    "order-select": {"userPractitionerId", "userPractitionerRoleId"},
    "order-sign": {"userPractitionerId", "userPractitionerRoleId"},
    "encounter-start": {"userPractitionerId", "userPractitionerRoleId"},
}
TOKEN = re.compile(r"\{\{(.*?)\}\}")
DATE_VALUE = re.compile(
    r"(eq|lt|gt|ge|le)?\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
PARAM_NAME = re.compile(r"[a-z][a-z0-9-]*")
CODE = r"[^,|\s{}]+"
TOKEN_VALUE = re.compile(
    rf"({CODE}\|{CODE}|\|{CODE}|{CODE}\||{CODE})(,({CODE}\|{CODE}|\|{CODE}|{CODE}))*"
)
ID_VALUE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
SORT_VALUE = re.compile(r"-?_?[a-z][a-z0-9-]*(,-?_?[a-z][a-z0-9-]*)*")
PATIENT_REF = {"{{context.patientId}}", "Patient/{{context.patientId}}"}
# Parameters whose values are references are not in the subset, except patient/subject.
REFERENCE_PARAMS = {"encounter", "context", "requester", "performer", "based-on", "part-of"}


def _is_type(name: str) -> bool:
    try:
        fhir.model_class(name)
    except KeyError:
        return False
    return name not in ("Bundle", "Parameters")


def template_problems(template: str, hook: str) -> list[str]:
    """Why ``template`` is not an STU2 prefetch template valid for ``hook`` (empty: valid)."""
    problems: list[str] = []
    for token in TOKEN.findall(template):
        name = token.strip()
        if name.startswith("context."):
            if name[len("context.") :] not in CONTEXT_TOKENS[hook]:
                problems.append(f"token {{{{{name}}}}} is not a prefetch token of {hook}")
        elif name not in USER_TOKENS[hook]:
            problems.append(f"token {{{{{name}}}}} is not an STU2 token valid for {hook}")
    if template.count("{{") != template.count("}}") or TOKEN.sub("", template).count("{") > 0:
        problems.append("unbalanced token delimiters")
    parts = urlsplit(template)
    if parts.scheme or parts.netloc or template.startswith("/"):
        problems.append("a template is a relative URL")
    if "$" in template:
        problems.append("operations ($everything, ...) are not in the subset")
    segments = parts.path.split("/") if parts.path else []
    if not segments or not segments[0]:
        return [*problems, "system-level searches and batches are not in the subset"]
    if not _is_type(segments[0]):
        problems.append(f"{segments[0]!r} is not a FHIR R4 resource type")
    if len(segments) == 2:
        if parts.query:
            problems.append("an instance read takes no parameters")
        if not (TOKEN.fullmatch(segments[1]) or ID_VALUE.fullmatch(segments[1])):
            problems.append(f"{segments[1]!r} is not an id or a token")
        return problems
    if len(segments) > 2:
        return [*problems, "compartment searches and history are not in the subset"]
    return problems + _search_problems(parts.query)


def _search_problems(query: str) -> list[str]:
    params = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    problems = [p for raw, value in params if (p := _param_problem(raw, value))]
    if not ({"patient", "subject"} & {name for name, _ in params}):
        problems.append("a type-level search needs a patient or subject reference")
    return problems


def _special_problem(name: str, modifier: str, value: str) -> str | None:
    """Checks for patient/subject, ``_count`` and ``_sort``."""
    if name in ("patient", "subject"):
        ok = not modifier and value in PATIENT_REF
        return None if ok else "must reference {{context.patientId}}"
    if name == "_count":
        return None if value.isdigit() and not modifier else "must be a whole number"
    ok = bool(SORT_VALUE.fullmatch(value)) and not modifier
    return None if ok else "not a sort specification"


def _param_problem(raw: str, value: str) -> str | None:
    name, _, modifier = raw.partition(":")
    if name in ("patient", "subject", "_count", "_sort"):
        problem = _special_problem(name, modifier, value)
    elif name.startswith("_") and name not in ("_id", "_lastUpdated"):
        problem = "parameter not in the STU2 subset"
    elif "." in name or not PARAM_NAME.fullmatch(name.lstrip("_")):
        problem = "chained or malformed parameter"
    elif name in REFERENCE_PARAMS:
        problem = "reference parameters other than patient/subject"
    elif modifier:
        ok = modifier == "in" and bool(urlsplit(value).scheme)
        problem = None if ok else f"only the :in modifier (with a ValueSet URL), not :{modifier}"
    elif "{{" in value:
        problem = None if name == "_id" and TOKEN.fullmatch(value) else "tokens in a value"
    elif re.match(r"(ne|sa|eb|ap)\d", value):
        problem = "date prefix not in the subset"
    elif not (DATE_VALUE.fullmatch(value) or TOKEN_VALUE.fullmatch(value)):
        problem = "neither a token nor an eq/lt/gt/ge/le date"
    else:
        problem = None
    return f"{raw}={value}: {problem}" if problem else None


@pytest.mark.parametrize(
    ("template", "hook"),
    [
        ("Patient/{{context.patientId}}", "patient-view"),
        ("Encounter/{{context.encounterId}}", "encounter-start"),
        ("Practitioner/{{userPractitionerId}}", "order-sign"),
        ("RelatedPerson/{{userRelatedPersonId}}", "patient-view"),
        ("Condition?patient={{context.patientId}}", "patient-view"),
        ("Condition?subject=Patient/{{context.patientId}}&_count=50", "patient-view"),
        (
            "Observation?patient={{context.patientId}}&code=http://loinc.org|72514-3,|8310-5",
            "order-sign",
        ),
        ("Observation?patient={{context.patientId}}&date=ge2026-01-01&_sort=-date", "order-select"),
        ("Condition?patient={{context.patientId}}&code:in=http://x.org/ValueSet/v", "order-select"),
        ("Condition?patient={{context.patientId}}&clinical-status=active", "encounter-start"),
    ],
)
def test_checker_accepts_stu2_templates(template: str, hook: str) -> None:
    assert template_problems(template, hook) == []


@pytest.mark.parametrize(
    ("template", "hook"),
    [
        ("Condition?patient={{context.patientId}}&_include=Condition:subject", "patient-view"),
        ("Condition?patient={{context.patientId}}&_revinclude=Provenance:target", "patient-view"),
        ("Patient/{{context.patientId}}/Condition", "patient-view"),
        ("Patient/{{context.patientId}}/$everything", "patient-view"),
        ("", "patient-view"),
        ("?_type=Condition", "patient-view"),
        ("http://ehr/fhir/Patient/{{context.patientId}}", "patient-view"),
        (
            "MedicationRequest?patient={{context.patientId}}&_id={{context.draftOrders}}",
            "order-sign",
        ),
        ("MedicationRequest/{{context.selections}}", "order-select"),
        ("Patient/{{context.medication.id}}", "patient-view"),
        ("Patient/{{userPatientId}}", "order-sign"),
        ("Observation?patient={{context.patientId}}&date=ge{{today() - 90 days}}", "order-sign"),
        ("Observation?patient={{context.patientId}}&date=ne2026-01-01", "order-sign"),
        ("Observation?patient={{context.patientId}}&code:text=cramp", "order-sign"),
        ("Observation?patient={{context.patientId}}&code:not=1", "order-sign"),
        ("Observation?subject.name=x&patient={{context.patientId}}", "order-sign"),
        ("Observation?code=8310-5", "order-sign"),
        ("Encounter?patient={{context.patientId}}&_has:Condition:encounter:code=1", "order-sign"),
        ("Condition?patient={{context.patientId}}&_summary=count", "order-sign"),
        ("Condition?patient={{context.patientId}}&_count=all", "order-sign"),
        ("Condition?patient=Group/1", "order-sign"),
        ("Condition?patient={{context.patientId}}&encounter={{context.encounterId}}", "order-sign"),
        ("NotAType?patient={{context.patientId}}", "order-sign"),
        ("Condition?patient={{context.patientId", "order-sign"),
    ],
)
def test_checker_refuses_templates_outside_the_subset(template: str, hook: str) -> None:
    assert template_problems(template, hook), template


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(cds_app(tmp_path_factory.mktemp("discovery"))) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/cds-services", "/cds-services/"])
def test_discovery_lists_the_four_services(client: TestClient, path: str) -> None:
    response = client.get(path, headers={"Accept": "application/json"}, follow_redirects=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"services"}
    by_id = {s["id"]: s for s in body["services"]}
    assert len(by_id) == len(body["services"]) == 4
    assert {sid: s["hook"] for sid, s in by_id.items()} == SERVICES


def test_every_service_has_hook_id_title_description(client: TestClient) -> None:
    for service in client.get("/cds-services").json()["services"]:
        for field in ("hook", "id", "title", "description"):
            assert isinstance(service[field], str) and service[field].strip(), (field, service)
        assert "R4" in service["description"] + service.get("usageRequirements", "")
        assert set(service) <= {
            "hook",
            "id",
            "title",
            "description",
            "prefetch",
            "usageRequirements",
            "extension",
        }


def test_no_empty_value_anywhere_in_discovery(client: TestClient) -> None:
    body = client.get("/cds-services").json()
    assert empty_values(body) == []


def test_prefetch_templates_are_stu2_for_their_hook(client: TestClient) -> None:
    checked = 0
    for service in client.get("/cds-services").json()["services"]:
        prefetch = service.get("prefetch", {})
        assert isinstance(prefetch, dict)
        for key, template in prefetch.items():
            assert isinstance(key, str) and key and isinstance(template, str)
            assert template_problems(template, service["hook"]) == [], (service["id"], key)
            checked += 1
    assert checked > 0  # patient-view reads at least Conditions (RF-01)


def test_patient_view_prefetches_what_rf01_reads(client: TestClient) -> None:
    services = {s["id"]: s for s in client.get("/cds-services").json()["services"]}
    prefetch = services["muscle-spasm-patient-view"]["prefetch"]
    assert prefetch["conditions"] == "Condition?patient={{context.patientId}}"
