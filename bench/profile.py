"""Where one CDS Hooks call spends its CPU: per stage, per rule, and cProfile's top functions.

Runs in process, in the calling thread (cProfile sees one thread only), the same steps the
route runs: ``orjson.loads`` → the body's nesting-depth check (``api.body.body_depth``) →
``parse_hook_call`` → ``complete_prefetch`` → ``build_call_data`` → ``evaluate_service`` →
``orjson.dumps`` → recording the issued cards (the route's background task; this stage is
process CPU, as the store works in a worker thread, and it re-records the same
``hookInstance``, an idempotent write). HTTP, auth and the thread hop are not included (the
load figures hold those).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from fhir_service.api.body import body_depth
from fhir_service.api.cds_hooks import _remember
from fhir_service.cds.invoke import build_call_data, evaluate_service, parse_hook_call
from fhir_service.cds.prefetch import PrefetchRequest, complete_prefetch
from fhir_service.engine.apply.evaluation import CallInput
from fhir_service.errors import IssueLog
from fhir_service.runtime import Runtime, build_runtime
from fhir_service.settings import Settings


def make_runtime(now: datetime, workdir: Path, definitions: Path | None = None) -> Runtime:
    settings = Settings(
        auth="off",
        definitions_dir=definitions or Settings().definitions_dir,
        now=now,
        database_url=f"sqlite:///{workdir / 'profile.db'}",
        log_level="WARNING",
    )
    return build_runtime(settings)


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP  # one loop, as in the server (asyncio.run per call would cost ~5 ms)
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    return _LOOP


def _stages(runtime: Runtime, service_id: str, raw: bytes) -> dict[str, float]:
    """CPU milliseconds of this thread per stage (a busy machine inflates wall time)."""
    service = runtime.services[service_id]
    times: dict[str, float] = {}
    clock = time.thread_time

    t0 = clock()
    body = orjson.loads(raw)
    t1 = clock()
    body_depth(raw, body, runtime.settings.max_json_depth)
    t1d = clock()
    call = parse_hook_call(body, service)
    t2 = clock()
    prefetched = _loop().run_until_complete(
        complete_prefetch(
            service.prefetch,
            PrefetchRequest(call.context, call.prefetch, None, None),
            None,
            runtime.settings.prefetch_deadline_seconds,
        )
    )
    t3 = clock()
    data = build_call_data(call, prefetched, runtime.settings.max_resources)
    t4 = clock()
    cards = evaluate_service(runtime, service, call, data)
    t5 = clock()
    orjson.dumps({"cards": cards})
    t6 = clock()
    p6 = time.process_time()
    _loop().run_until_complete(_remember(runtime, service, body, cards))
    record = time.process_time() - p6
    times.update(
        parse=t1 - t0,
        depth=t1d - t1,
        envelope=t2 - t1d,
        prefetch=t3 - t2,
        index=t4 - t3,
        evaluate=t5 - t4,
        serialize=t6 - t5,
        record=record,
        total=t6 - t0 + record,
    )
    return {k: v * 1000 for k, v in times.items()}


def per_rule(runtime: Runtime, service_id: str, raw: bytes) -> list[tuple[str, float]]:
    """Each rule's marginal time in service order (shared variables are paid by the first)."""
    service = runtime.services[service_id]
    call = parse_hook_call(orjson.loads(raw), service)
    prefetched = {t.key: call.prefetch.get(t.key) for t in service.prefetch}
    data = build_call_data(call, prefetched, runtime.settings.max_resources)
    now = runtime.now()
    scope = runtime.engine.new_scope(CallInput(data, now, call.patient_id, None), IssueLog())
    out = []
    for rule in service.rules:
        start = time.thread_time()
        runtime.engine.apply(
            rule.resource,
            scope,
            f"Patient/{call.patient_id}",
            runtime.new_id,
            hook=service.hook,
        )
        out.append((str(rule.resource.get("id")), (time.thread_time() - start) * 1000))
    return out


def profile_call(
    runtime: Runtime, service_id: str, raw: bytes, *, repeat: int = 20, top: int = 20
) -> dict[str, Any]:
    """Stage medians over ``repeat`` calls, per-rule times, and cProfile of one call."""
    for _ in range(3):  # warm caches (compiled expressions, terminology)
        _stages(runtime, service_id, raw)
    samples = [_stages(runtime, service_id, raw) for _ in range(repeat)]
    stages = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    profiler = cProfile.Profile()
    profiler.enable()
    _stages(runtime, service_id, raw)
    profiler.disable()
    return {
        "stages_ms": {k: round(v, 3) for k, v in stages.items()},
        "rules_ms": [(r, round(t, 3)) for r, t in per_rule(runtime, service_id, raw)],
        "by_tottime": _top(profiler, "tottime", top),
        "by_cumtime": _top(profiler, "cumulative", top),
    }


def _top(profiler: cProfile.Profile, key: str, top: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    stats.sort_stats(key)
    rows = []
    raw_stats: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for func in stats.fcn_list[:top]:  # type: ignore[attr-defined]
        cc, nc, tt, ct, _callers = raw_stats[func]
        filename, line, name = func
        short = filename.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append(
            {
                "function": f"{short}:{line}({name})",
                "ncalls": nc,
                "tottime_ms": round(tt * 1000, 2),
                "cumtime_ms": round(ct * 1000, 2),
            }
        )
    return rows


def run(
    now: datetime,
    service_id: str,
    raw: bytes,
    log: Callable[[str], None],
    definitions: Path | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runtime = make_runtime(now, Path(tmp), definitions)
        try:
            result = profile_call(runtime, service_id, raw)
        finally:
            runtime.store.close()
    log(f"profile stages (CPU ms, median of 20): {result['stages_ms']}")
    return result


def main() -> None:
    """``python -m bench.profile``: stage medians of one r100 patient-view and order-sign call."""
    from bench.generator import NOW, Terminology, build_hook_request

    with tempfile.TemporaryDirectory() as tmp:
        runtime = make_runtime(NOW, Path(tmp))
        try:
            terms = Terminology.load()
            for service_id in ("muscle-spasm-patient-view", "muscle-spasm-order-sign"):
                discovery = runtime.services[service_id].discovery()
                raw = build_hook_request(discovery, 100, seed=1, terms=terms).encode()
                for _ in range(3):
                    _stages(runtime, service_id, raw)
                samples = [_stages(runtime, service_id, raw) for _ in range(40)]
                stages = {k: round(statistics.median(s[k] for s in samples), 2) for k in samples[0]}
                print(f"{service_id} r100, CPU ms, median of 40: {stages}")
        finally:
            runtime.store.close()


if __name__ == "__main__":
    main()
