"""In-process rule evaluation CPU of one r100 call, for A/B runs of two checkouts.

``python -m bench.evaluation [label]`` runs ``evaluate_service`` (the "evaluate" stage of
``bench.profile``) 50 times on the r100 patient-view and order-sign requests and prints the
minimum and the median thread CPU (the first 5 calls warm up). On a shared machine the speed of
one process moves between runs, so compare two commits by running this alternately in a
checkout of each, several times, and taking the median of the minima (``bench/RESULTS.md``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.generator import NOW, Terminology, build_hook_request
from bench.profile import make_runtime
from fhir_service.cds.invoke import build_call_data, evaluate_service, parse_hook_call

SERVICES = ("muscle-spasm-patient-view", "muscle-spasm-order-sign")


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "this checkout"
    terms = Terminology.load()
    with tempfile.TemporaryDirectory() as tmp:
        runtime = make_runtime(NOW, Path(tmp))
        try:
            parts = []
            for service_id in SERVICES:
                service = runtime.services[service_id]
                raw = build_hook_request(service.discovery(), 100, seed=1, terms=terms)
                call = parse_hook_call(orjson.loads(raw.encode()), service)
                prefetched = {t.key: call.prefetch.get(t.key) for t in service.prefetch}
                times = []
                for _ in range(50):
                    data = build_call_data(call, prefetched, runtime.settings.max_resources)
                    start = time.thread_time()
                    evaluate_service(runtime, service, call, data)
                    times.append((time.thread_time() - start) * 1000)
                kept = times[5:]
                parts.append(
                    f"{service.hook} min {min(kept):.2f} median {statistics.median(kept):.2f} ms"
                )
            print(f"{label}: " + " | ".join(parts))
        finally:
            runtime.store.close()


if __name__ == "__main__":
    main()
