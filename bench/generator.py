"""Deterministic synthetic patient records, shaped as CDS Hooks requests.

The record is generated per prefetch key that a service advertises in discovery, so the request
carries exactly the keys a conformant CDS client would send:

* a read template (``Patient/{{context.patientId}}``, ``Encounter/{{context.encounterId}}``) gets
  one resource;
* a search template (``Condition?patient=...``) gets a ``searchset`` Bundle; when the template
  filters on ``code=system|code,...`` only those codes are generated (the EHR would return
  nothing else);
* ``n`` resources in total are spread over the advertised search types by fixed weights
  (largest remainder), at least one assessment QuestionnaireResponse when that key exists.

Clinical content is taken from the ValueSets of ``definitions/`` (spasm family, head/neck/back
injury, stroke, cyclobenzaprine, tizanidine, benzodiazepines, cramp work-up labs) so the rules
have something to match, mixed with everyday filler (hypertension, metformin, vitals...) so they
also have something to skip. Everything is drawn from ``random.Random(seed)`` and dated
relative to a fixed ``now``: the same arguments give byte-identical bodies.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = ROOT / "definitions"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ASSESSMENT_URL = "http://example.org/fhir/muscle-spasm/Questionnaire/muscle-spasm-assessment"

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

#: Share of the searched resources per type (renormalised over the advertised types).
WEIGHTS: dict[str, float] = {
    "Observation": 0.42,
    "Condition": 0.25,
    "MedicationRequest": 0.14,
    "MedicationStatement": 0.05,
    "MedicationDispense": 0.04,
    "ServiceRequest": 0.03,
    "Procedure": 0.03,
    "QuestionnaireResponse": 0.01,
}
DEFAULT_WEIGHT = 0.02

FILLER_CONDITIONS = [
    ("38341003", "Hypertensive disorder"),
    ("44054006", "Diabetes mellitus type 2"),
    ("55822004", "Hyperlipidemia"),
    ("195967001", "Asthma"),
    ("235595009", "Gastroesophageal reflux disease"),
    ("396275006", "Osteoarthritis"),
    ("35489007", "Depressive disorder"),
    ("37796009", "Migraine"),
    ("709044004", "Chronic kidney disease"),
    ("40055000", "Chronic sinusitis"),
    ("267036007", "Dyspnea"),
    ("271737000", "Anemia"),
]
FILLER_MEDS = [
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("861007", "metformin hydrochloride 500 MG Oral Tablet"),
    ("617310", "atorvastatin 20 MG Oral Tablet"),
    ("197806", "ibuprofen 600 MG Oral Tablet"),
    ("198440", "acetaminophen 500 MG Oral Tablet"),
    ("308136", "amlodipine 2.5 MG Oral Tablet"),
    ("310798", "hydrochlorothiazide 25 MG Oral Tablet"),
    ("312961", "simvastatin 20 MG Oral Tablet"),
]
LAB_UNITS: dict[str, tuple[str, str, float, float]] = {
    # code: (unit, ucum, low, high)
    "2823-3": ("mmol/L", "mmol/L", 3.5, 5.1),
    "6298-4": ("mmol/L", "mmol/L", 3.5, 5.1),
    "2951-2": ("mmol/L", "mmol/L", 136, 145),
    "2947-0": ("mmol/L", "mmol/L", 136, 145),
    "17861-6": ("mg/dL", "mg/dL", 8.6, 10.3),
    "19123-9": ("mg/dL", "mg/dL", 1.7, 2.2),
    "2157-6": ("U/L", "U/L", 30, 200),
    "3016-3": ("mIU/L", "m[IU]/L", 0.4, 4.0),
    "11579-0": ("mIU/L", "m[IU]/L", 0.4, 4.0),
    "11580-8": ("mIU/L", "m[IU]/L", 0.4, 4.0),
    "8310-5": ("Cel", "Cel", 36.1, 37.8),
    "8867-4": ("/min", "/min", 60, 100),
    "2339-0": ("mg/dL", "mg/dL", 70, 99),
}
DEFAULT_OBS_CODES = ["72514-3", "82810-3", "8310-5", "8867-4", "2339-0", *list(LAB_UNITS)[:8]]


def _codes_of(valueset: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    out = [
        (str(c.get("system")), str(c["code"]), str(c.get("display", "")))
        for c in valueset.get("expansion", {}).get("contains", [])
        if "code" in c
    ]
    if out:
        return out
    for include in valueset.get("compose", {}).get("include", []):
        for concept in include.get("concept", []):
            out.append(
                (str(include.get("system")), str(concept["code"]), concept.get("display", ""))
            )
    return out


@dataclass
class Terminology:
    """Codes of the ValueSets in ``definitions/`` by ValueSet id (``vs-spasm-family``...)."""

    valuesets: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, definitions: Path = DEFINITIONS) -> Terminology:
        found: dict[str, list[tuple[str, str, str]]] = {}
        for path in sorted(definitions.glob("ValueSet-*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            codes = _codes_of(data)
            if codes:
                found[str(data.get("id"))] = codes
        return cls(found)

    def pick(
        self, rng: random.Random, vs_id: str, fallback: tuple[str, str, str]
    ) -> tuple[str, str, str]:
        codes = self.valuesets.get(vs_id) or [fallback]
        return codes[rng.randrange(len(codes))]

    def first(self, vs_id: str, fallback: tuple[str, str, str]) -> tuple[str, str, str]:
        codes = self.valuesets.get(vs_id) or [fallback]
        return codes[0]


def _cc(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _day(now: datetime, days_ago: float) -> str:
    return (now - timedelta(days=days_ago)).date().isoformat()


def _instant(now: datetime, days_ago: float) -> str:
    moment = now - timedelta(days=days_ago)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class RecordFactory:
    """Makes one patient's resources; every draw comes from ``rng``."""

    def __init__(self, rng: random.Random, terms: Terminology, patient_id: str, now: datetime):
        self.rng = rng
        self.terms = terms
        self.patient_id = patient_id
        self.now = now
        self.counters: dict[str, int] = {}

    def _id(self, prefix: str) -> str:
        self.counters[prefix] = self.counters.get(prefix, 0) + 1
        return f"{prefix}-{self.counters[prefix]}"

    @property
    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}

    # -- reads ------------------------------------------------------------------------------

    def patient(self) -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": self.patient_id,
            "meta": {"lastUpdated": _instant(self.now, 30)},
            "identifier": [
                {
                    "use": "usual",
                    "type": _cc("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "MRN"),
                    "system": "urn:oid:1.2.36.146.595.217.0.1",
                    "value": "MRN-BENCH-0042",
                }
            ],
            "active": True,
            "name": [{"use": "official", "family": "Benchmark", "given": ["Casey", "Q"]}],
            "telecom": [{"system": "phone", "value": "555-0100", "use": "home"}],
            "gender": "female",
            "birthDate": "1957-04-12",
            "address": [{"line": ["1 Test Way"], "city": "Springfield", "postalCode": "00001"}],
        }

    def encounter(self, encounter_id: str) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "id": encounter_id,
            "status": "in-progress",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
                "display": "ambulatory",
            },
            "subject": self.subject,
            "period": {"start": _instant(self.now, 0.02)},
        }

    # -- searches ---------------------------------------------------------------------------

    def condition(self, index: int) -> dict[str, Any]:
        rng = self.rng
        if index == 0:  # signal: an active spasm-family Condition, recent
            system, code, display = self.terms.pick(
                rng, "vs-spasm-family", (SCT, "45352006", "Spasm")
            )
            status, onset = "active", rng.uniform(1, 10)
        elif index == 1:  # signal: a recent head/neck/back injury
            system, code, display = self.terms.pick(
                rng, "vs-injury-head-neck-back", (SCT, "90460009", "Injury of neck")
            )
            status, onset = "resolved", rng.uniform(5, 25)
        elif index == 2:  # history: stroke
            system, code, display = self.terms.pick(
                rng, "vs-stroke", (SCT, "230690007", "Cerebrovascular accident")
            )
            status, onset = "active", rng.uniform(100, 300)
        else:
            roll = rng.random()
            if roll < 0.10:
                system, code, display = self.terms.pick(
                    rng, "vs-spasm-family", (SCT, "45352006", "Spasm")
                )
            elif roll < 0.15:
                system, code, display = self.terms.pick(
                    rng, "vs-injury-head-neck-back", (SCT, "90460009", "Injury of neck")
                )
            elif roll < 0.18:
                system, code, display = self.terms.pick(
                    rng, "vs-stroke", (SCT, "230690007", "Cerebrovascular accident")
                )
            else:
                code, display = FILLER_CONDITIONS[rng.randrange(len(FILLER_CONDITIONS))]
                system = SCT
            status = rng.choices(["active", "resolved", "inactive"], [6, 3, 1])[0]
            onset = rng.uniform(1, 3650)
        verification = rng.choices(
            ["confirmed", "provisional", "entered-in-error", "refuted"], [85, 5, 5, 5]
        )[0]
        if index < 3:
            verification = "confirmed"
        return {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "meta": {"lastUpdated": _instant(self.now, onset)},
            "clinicalStatus": _cc(COND_CLINICAL, status, status),
            "verificationStatus": _cc(COND_VER, verification, verification),
            "category": [
                _cc(
                    "http://terminology.hl7.org/CodeSystem/condition-category",
                    "problem-list-item",
                    "Problem List Item",
                )
            ],
            "code": _cc(system, code, display),
            "subject": self.subject,
            "onsetDateTime": _day(self.now, onset),
            "recordedDate": _day(self.now, max(0.0, onset - 1)),
        }

    def observation(self, index: int, codes: list[str]) -> dict[str, Any]:
        rng = self.rng
        code = codes[index % len(codes)] if index < len(codes) else rng.choice(codes)
        days = rng.uniform(0.1, 400) if index >= len(codes) else rng.uniform(0.1, 20)
        status = rng.choices(
            ["final", "amended", "corrected", "preliminary", "entered-in-error"], [84, 5, 2, 5, 4]
        )[0]
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self._id("obs"),
            "status": status,
            "subject": self.subject,
            "effectiveDateTime": _instant(self.now, days),
            "issued": _instant(self.now, max(0.0, days - 0.05)),
        }
        if code in ("72514-3", "38208-5"):
            obs["category"] = [_cc(OBS_CAT, "survey", "Survey")]
            obs["code"] = _cc(LOINC, code, "Pain severity - 0-10 verbal numeric rating [Score]")
            obs["valueQuantity"] = {
                "value": rng.randint(0, 10),
                "unit": "{score}",
                "system": UCUM,
                "code": "{score}",
            }
        elif code == "82810-3":
            obs["category"] = [_cc(OBS_CAT, "social-history", "Social History")]
            obs["code"] = _cc(LOINC, code, "Pregnancy status")
            answer = rng.choice([("60001007", "Not pregnant"), ("77386006", "Pregnant")])
            obs["valueCodeableConcept"] = _cc(SCT, *answer)
        else:
            unit, ucum, low, high = LAB_UNITS.get(code, ("1", "1", 0.0, 1.0))
            span = high - low
            value = round(rng.uniform(low - span * 0.4, high + span * 0.4), 2)
            flag = "L" if value < low else "H" if value > high else "N"
            label = {"L": "Low", "H": "High", "N": "Normal"}[flag]
            category = "vital-signs" if code in ("8310-5", "8867-4") else "laboratory"
            obs["category"] = [_cc(OBS_CAT, category, category)]
            obs["code"] = _cc(LOINC, code, f"LOINC {code}")
            obs["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": ucum}
            obs["interpretation"] = [_cc(INTERP, flag, label)]
            obs["referenceRange"] = [
                {
                    "low": {"value": low, "unit": unit, "system": UCUM, "code": ucum},
                    "high": {"value": high, "unit": unit, "system": UCUM, "code": ucum},
                }
            ]
        return obs

    def _medication(self, index: int) -> tuple[str, str, str]:
        rng = self.rng
        special = [
            ("vs-cyclobenzaprine", (RXNORM, "828299", "cyclobenzaprine 10 MG Oral Tablet")),
            ("vs-tizanidine", (RXNORM, "313412", "tizanidine 2 MG Oral Tablet")),
            ("vs-benzodiazepine", (RXNORM, "197527", "clonazepam 0.5 MG Oral Tablet")),
        ]
        if index < len(special):
            return self.terms.pick(rng, *special[index])
        if rng.random() < 0.25:
            return self.terms.pick(rng, *special[rng.randrange(len(special))])
        code, display = FILLER_MEDS[rng.randrange(len(FILLER_MEDS))]
        return RXNORM, code, display

    def medication_request(self, index: int, *, status: str | None = None) -> dict[str, Any]:
        rng = self.rng
        system, code, display = self._medication(index)
        days = rng.uniform(1, 200)
        supply = rng.choice([7, 14, 30, 90])
        return {
            "resourceType": "MedicationRequest",
            "id": self._id("draft" if status == "draft" else "medreq"),
            "status": status or rng.choices(["active", "completed", "stopped"], [5, 4, 1])[0],
            "intent": "proposal" if status == "draft" else "order",
            "medicationCodeableConcept": _cc(system, code, display),
            "subject": self.subject,
            "authoredOn": _instant(self.now, 0 if status == "draft" else days),
            "requester": {"reference": "Practitioner/bench"},
            "dosageInstruction": [
                {
                    "text": "1 tablet by mouth three times daily as needed",
                    "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [
                        {"doseQuantity": {"value": 1, "unit": "tablet", "system": UCUM}}
                    ],
                }
            ],
            "dispenseRequest": {
                "expectedSupplyDuration": {
                    "value": supply,
                    "unit": "days",
                    "system": UCUM,
                    "code": "d",
                },
                "quantity": {"value": supply * 3, "unit": "tablet"},
            },
        }

    def medication_statement(self, index: int) -> dict[str, Any]:
        system, code, display = self._medication(index)
        days = self.rng.uniform(1, 365)
        return {
            "resourceType": "MedicationStatement",
            "id": self._id("medstmt"),
            "status": self.rng.choice(["active", "completed"]),
            "medicationCodeableConcept": _cc(system, code, display),
            "subject": self.subject,
            "effectivePeriod": {"start": _day(self.now, days)},
            "dateAsserted": _instant(self.now, days),
        }

    def medication_dispense(self, index: int) -> dict[str, Any]:
        system, code, display = self._medication(index)
        days = self.rng.uniform(1, 120)
        return {
            "resourceType": "MedicationDispense",
            "id": self._id("meddisp"),
            "status": "completed",
            "medicationCodeableConcept": _cc(system, code, display),
            "subject": self.subject,
            "quantity": {"value": 30, "unit": "tablet"},
            "daysSupply": {"value": 10, "unit": "days", "system": UCUM, "code": "d"},
            "whenHandedOver": _instant(self.now, days),
        }

    def service_request(self, index: int) -> dict[str, Any]:
        del index
        system, code, display = self.terms.pick(
            self.rng, "vs-physical-therapy", (SCT, "308447003", "Referral to physiotherapist")
        )
        return {
            "resourceType": "ServiceRequest",
            "id": self._id("sr"),
            "status": self.rng.choice(["active", "completed", "revoked"]),
            "intent": "order",
            "code": _cc(system, code, display),
            "subject": self.subject,
            "authoredOn": _instant(self.now, self.rng.uniform(1, 300)),
        }

    def procedure(self, index: int) -> dict[str, Any]:
        del index
        return {
            "resourceType": "Procedure",
            "id": self._id("proc"),
            "status": "completed",
            "code": _cc(SCT, "91251008", "Physical therapy procedure"),
            "subject": self.subject,
            "performedDateTime": _instant(self.now, self.rng.uniform(1, 500)),
        }

    def assessment(self, index: int) -> dict[str, Any]:
        """An Assessment QR: the latest (index 0) is recent and reports a neck injury."""
        rng = self.rng
        days = rng.uniform(0.5, 3) if index == 0 else rng.uniform(20, 400)

        def item(link_id: str, answer: dict[str, Any]) -> dict[str, Any]:
            return {"linkId": link_id, "answer": [answer]}

        def coding(code: str, display: str, system: str | None = None) -> dict[str, Any]:
            found = {"code": code, "display": display}
            if system:
                found["system"] = system
            return {"valueCoding": found}

        system = "http://example.org/fhir/muscle-spasm/CodeSystem/muscle-spasm-assessment"
        return {
            "resourceType": "QuestionnaireResponse",
            "id": self._id("qr"),
            "questionnaire": ASSESSMENT_URL,
            "status": "completed" if index == 0 else rng.choice(["completed", "amended"]),
            "subject": self.subject,
            "authored": _instant(self.now, days),
            "author": {"reference": "Practitioner/bench"},
            "item": [
                {
                    "linkId": "pattern",
                    "item": [
                        item("onset-context", coding("at-rest", "At rest", system)),
                        item("time-of-day", coding("nocturnal", "Nocturnal", system)),
                        item("episode-duration", coding("minutes", "Minutes", system)),
                        item("frequency", coding("weekly", "Weekly", system)),
                        item("body-site", coding("neck", "Neck", system)),
                    ],
                },
                {
                    "linkId": "symptoms",
                    "item": [
                        item("pain-nrs", {"valueInteger": rng.randint(2, 9)}),
                        item("pain-character", coding("cramping", "Cramping", system)),
                        item("new-weakness", {"valueBoolean": False}),
                        item("sensory-change", {"valueBoolean": False}),
                        item("other-neuro", {"valueBoolean": False}),
                        item("function-limit", coding("mild", "Mild", system)),
                        item("swelling", {"valueBoolean": False}),
                        item("skin-change", {"valueBoolean": False}),
                    ],
                },
                {
                    "linkId": "triggers",
                    "item": [
                        item("exercise-trigger", {"valueBoolean": False}),
                        item("environment", coding("none", "None", system)),
                        item("movement-trigger", {"valueBoolean": True}),
                        item("emotional-stress", {"valueBoolean": False}),
                        item("low-fluid-intake", {"valueBoolean": False}),
                    ],
                },
                {
                    "linkId": "context",
                    "item": [
                        item("recent-injury", coding("90460009", "Injury of neck", SCT)),
                        item("injury-date", {"valueDate": _day(self.now, days + 10)}),
                        item("neuro-history", coding("none", "None", system)),
                        item("pregnancy", coding("na", "Not applicable", system)),
                        item("med-change", {"valueBoolean": False}),
                    ],
                },
                {
                    "linkId": "selfcare",
                    "item": [
                        item("self-care-tried", {"valueBoolean": True}),
                        item("self-care-measures", coding("stretching", "Stretching", system)),
                        item("self-care-response", coding("partial", "Partial", system)),
                    ],
                },
            ],
        }


@dataclass(frozen=True)
class Template:
    key: str
    query: str
    resource_type: str
    is_read: bool
    codes: tuple[str, ...]  # code filter of a search (codes only), empty = none


def parse_template(key: str, query: str) -> Template:
    path, _, params = query.partition("?")
    segments = path.strip("/").split("/")
    codes: list[str] = []
    for name, value in parse_qsl(params, keep_blank_values=True):
        if name.split(":", 1)[0] == "code":
            codes += [v.rpartition("|")[2] for v in value.split(",") if v]
    return Template(key, query, segments[0], len(segments) >= 2, tuple(codes))


def allocate(total: int, types: list[str], minimum: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` over ``types`` by ``WEIGHTS`` (largest remainder), honouring minima."""
    if not types or total <= 0:
        return dict.fromkeys(types, 0)
    counts = {t: min(minimum.get(t, 0), total) for t in types}
    rest = total - sum(counts.values())
    weights = {t: WEIGHTS.get(t, DEFAULT_WEIGHT) for t in types}
    scale = sum(weights.values())
    shares = {t: rest * weights[t] / scale for t in types}
    for t in types:
        counts[t] += int(shares[t])
    left = total - sum(counts.values())
    order = sorted(types, key=lambda t: (-(shares[t] - int(shares[t])), t))
    for t in order[:left]:
        counts[t] += 1
    return counts


@dataclass
class HookRequest:
    body: dict[str, Any]
    counts: dict[str, int]  # resources per prefetch key
    drafts: int

    @property
    def resources(self) -> int:
        return sum(self.counts.values())

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r} for r in resources
        ],
    }


def _context(hook: str, patient_id: str, drafts: list[dict[str, Any]]) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/bench", "patientId": patient_id}
    if hook == "encounter-start":
        context["encounterId"] = "enc-bench-1"
    if hook in ("order-sign", "order-select"):
        context["draftOrders"] = _searchset(drafts) | {"type": "collection"}
        context["draftOrders"].pop("total")
    if hook == "order-select":
        context["selections"] = [f"MedicationRequest/{drafts[0]['id']}"]
    return context


def build_hook_request(
    service: Mapping[str, Any],
    n: int,
    *,
    seed: int = 1,
    now: datetime = NOW,
    patient_id: str = "bench-1",
    terms: Terminology | None = None,
) -> HookRequest:
    """A hook call for a discovery ``service`` entry carrying about ``n`` prefetch resources.

    Args:
        service: One entry of ``GET /cds-services`` (``hook``, ``id``, ``prefetch``).
        n: Resources to put in the prefetch (reads count one each).
        seed: Seed of every random draw.
        now: The instant the record is dated against (give the server the same via
            ``FHIR_SERVICE_NOW``).
        patient_id: ``context.patientId``.
        terms: ValueSet codes (default: loaded from ``definitions/``).
    """
    rng = random.Random(seed)
    terms = terms or Terminology.load()
    factory = RecordFactory(rng, terms, patient_id, now)
    hook = str(service["hook"])
    templates = [parse_template(k, str(q)) for k, q in (service.get("prefetch") or {}).items()]
    drafts = (
        [factory.medication_request(i, status="draft") for i in range(3)]
        if hook in ("order-sign", "order-select")
        else []
    )
    context = _context(hook, patient_id, drafts)
    prefetch: dict[str, Any] = {}
    counts: dict[str, int] = {}
    reads = [t for t in templates if t.is_read]
    for t in reads:
        if t.resource_type == "Patient":
            prefetch[t.key] = factory.patient()
        elif t.resource_type == "Encounter" and "encounterId" in context:
            prefetch[t.key] = factory.encounter(str(context["encounterId"]))
        else:
            continue  # a read this generator cannot (or the context does not) fill: not sent
        counts[t.key] = 1
    searches = [t for t in templates if not t.is_read]
    minimum = {"QuestionnaireResponse": 1} if n >= 2 else {}
    per_type = allocate(
        n - sum(counts.values()), sorted({t.resource_type for t in searches}), minimum
    )
    for t in searches:
        # Two keys of one type (e.g. two Observation searches) share its allocation.
        same = [s for s in searches if s.resource_type == t.resource_type]
        share = per_type[t.resource_type] // len(same) + (
            1 if same.index(t) < per_type[t.resource_type] % len(same) else 0
        )
        prefetch[t.key] = _searchset([_make(factory, t, i) for i in range(share)])
        counts[t.key] = share
    body = {
        "hook": hook,
        "hookInstance": f"00000000-0000-4000-8000-{seed:012d}",
        "context": context,
        "prefetch": prefetch,  # every advertised key is sent: no fhirServer fallback needed
    }
    return HookRequest(body, counts, len(drafts))


def _make(factory: RecordFactory, template: Template, index: int) -> dict[str, Any]:
    kind = template.resource_type
    if kind == "Condition":
        return factory.condition(index)
    if kind == "Observation":
        return factory.observation(index, list(template.codes) or DEFAULT_OBS_CODES)
    if kind == "MedicationRequest":
        return factory.medication_request(index)
    if kind == "MedicationStatement":
        return factory.medication_statement(index)
    if kind == "MedicationDispense":
        return factory.medication_dispense(index)
    if kind == "ServiceRequest":
        return factory.service_request(index)
    if kind == "Procedure":
        return factory.procedure(index)
    if kind == "QuestionnaireResponse":
        return factory.assessment(index)
    return {"resourceType": kind, "id": factory._id(kind.lower()), "subject": factory.subject}
