"""``python -m bench.startup``: start-up cost and per-call value-set membership, in CPU time.

Prints, for one process: the CPU seconds and wall seconds of ``import fhir_service.main`` and
of building the app once (loading and validating ``definitions/``), as uvicorn does, the
process's max RSS after it, and the CPU microseconds of ``Terminology.member`` on the MS-04
arrhythmia set for an ICD-10-CM coding and a SNOMED CT CodeableConcept, member and not (best of
three runs of 100,000 calls). CPU time is used because the machines this runs on are shared;
compare runs made one after the other (docs/terminology.md "What it costs").
"""

from __future__ import annotations

import resource
import time
from typing import Any

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
MS04 = "http://example.org/fhir/muscle-spasm/ValueSet/vs-arrhythmia"
CASES: dict[str, Any] = {
    "ICD-10-CM coding I48.91": {"system": ICD, "code": "I48.91"},
    "ICD-10-CM coding Z00.00 (not a member)": {"system": ICD, "code": "Z00.00"},
    "SNOMED CT CodeableConcept 49436004": {"coding": [{"system": SCT, "code": "49436004"}]},
    "SNOMED CT CodeableConcept 1 (not a member)": {"coding": [{"system": SCT, "code": "1"}]},
}
CALLS = 100_000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    cpu, wall = _cpu(), time.perf_counter()
    import fastapi  # noqa: PLC0415 - the imports are what is measured

    import fhir_service.main as service  # noqa: PLC0415

    # the module's app, or one built now when importing the module builds none
    app = service.app if isinstance(service.app, fastapi.FastAPI) else service.create_app()
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"start-up: cpu {cpu:.3f} s, wall {wall:.3f} s, max RSS {rss:.1f} MB")
    terminology = app.state.runtime.knowledge.terminology
    for name, value in CASES.items():
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            for _ in range(CALLS):
                terminology.member(value, MS04)
            best = min(best, (time.process_time() - start) / CALLS * 1e6)
        print(f"member {name}: {best:.2f} µs ({terminology.member(value, MS04)})")


if __name__ == "__main__":
    main()
