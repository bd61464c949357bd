"""``python -m bench.run`` (``make bench``): latency, throughput, RSS and profile of the service.

What it does, in one run, so that ratios compare like with like:

1. starts three uvicorn servers, one worker each, on free loopback ports, pinned to CPU 0 (the
   load driver pins itself to CPU 1 when the machine has two cores):
   ``floor`` (``bench.floor:app``: parse the body, answer ``{"cards": []}``), ``service``
   (``fhir_service.main:app``, ``FHIR_SERVICE_AUTH=off``) and ``service+jwt`` (ES384 test
   issuer, a fresh token per request); and a fourth, ``service+jwt 2 workers``
   (``uvicorn --workers 2``, not pinned) for the throughput figure;
2. reads ``GET /cds-services`` and builds seeded requests with the advertised prefetch keys
   (``bench.generator``): patient-view with 10, 100 and 1,000 resources, order-sign with 100;
3. measures each case on each server at concurrency 1 (p50/p99), then patient-view r100 and
   discovery at concurrency 8 (throughput, errors), then on two workers patient-view r100 from 8
   clients with discovery from a ninth meanwhile; every loop bounded in count and time; the
   discovery client that runs during a load runs in its own process (``bench.probe``): in the
   driver's event loop its latency included the driver's queueing behind the load clients
   (p50 40-115 ms there against 5-16 ms from a process of its own, same server, same time);
4. reads the servers' RSS, profiles one 100-resource call in process (``bench.profile``), checks
   the servers' logs for the tokens and patient identifiers sent, and prints the table and the
   verdict of each target; the JSON goes to ``var/bench/results-<time>.json``.

Options: ``--quick`` (a smoke run, ~30 s), ``--seed``, ``--out``, ``--only two-workers`` (only
the two-worker server and its section of step 3, with its targets; no profile).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import profile
from bench.generator import NOW, HookRequest, Terminology, build_hook_request
from bench.issuer import Issuer
from bench.load import Result, drive, make_client
from bench.server import ROOT, Server

PV = "muscle-spasm-patient-view"
OS = "muscle-spasm-order-sign"
SERVERS = ("floor", "service", "service+jwt")
TWO_WORKERS = "service+jwt 2 workers"


def log(message: str) -> None:
    print(message, flush=True)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return "unknown"

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "fhir_service", "definitions")),
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": loadavg(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def snapshot_definitions(work: Path) -> tuple[Path, str]:
    """Copy ``definitions/`` (others edit it while we run) so every server sees one version."""
    target = work / "definitions"
    shutil.copytree(ROOT / "definitions", target)
    digest = hashlib.sha256()
    for path in sorted(target.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return target, digest.hexdigest()[:12]


def start_servers(
    work: Path, definitions: Path, issuer: Issuer, cpu: int | None, only: str | None = None
) -> dict[str, Server]:
    common = {
        "FHIR_SERVICE_DEFINITIONS_DIR": str(definitions),
        "FHIR_SERVICE_NOW": NOW.isoformat().replace("+00:00", "Z"),
        "FHIR_SERVICE_FHIR_SERVER_ALLOWLIST": "",
        "FHIR_SERVICE_LOG_LEVEL": "INFO",
        "PYTHONHASHSEED": "0",
    }
    servers = {
        "floor": Server("floor", "bench.floor:app", dict(common), work / "floor.log", cpu),
        "service": Server(
            "service",
            "fhir_service.main:app",
            {
                **common,
                "FHIR_SERVICE_AUTH": "off",
                "FHIR_SERVICE_DATABASE_URL": f"sqlite:///{work / 'off.db'}",
            },
            work / "service.log",
            cpu,
        ),
    }
    jwt_server = Server("service+jwt", "fhir_service.main:app", {}, work / "jwt.log", cpu)
    jwt_server.env = {
        **common,
        "FHIR_SERVICE_AUTH": "jwt",
        "FHIR_SERVICE_TRUSTED_ISSUERS": str(issuer.write_trusted_issuers(work / "issuers.json")),
        "FHIR_SERVICE_PUBLIC_BASE_URL": jwt_server.base_url,
        "FHIR_SERVICE_DATABASE_URL": f"sqlite:///{work / 'jwt.db'}",
    }
    servers["service+jwt"] = jwt_server
    # the throughput set-up: two workers, not pinned (the service's default is one per core)
    workers = Server(TWO_WORKERS, "fhir_service.main:app", {}, work / "jwt2.log", None, workers=2)
    workers.env = {
        **jwt_server.env,
        "FHIR_SERVICE_PUBLIC_BASE_URL": workers.base_url,
        "FHIR_SERVICE_DATABASE_URL": f"sqlite:///{work / 'jwt2.db'}",
    }
    servers[TWO_WORKERS] = workers
    if only == "two-workers":
        servers = {TWO_WORKERS: workers}
    started: list[Server] = []
    try:
        for server in servers.values():
            server.start(timeout=60.0 * server.workers)
            started.append(server)
    except Exception:
        for server in started:  # never leave a server of ours behind
            server.stop()
        raise
    return servers


def cases(
    discovery: dict[str, Any], seed: int, definitions: Path
) -> dict[str, tuple[str, HookRequest]]:
    services = {s["id"]: s for s in discovery["services"]}
    terms = Terminology.load(definitions)
    out: dict[str, tuple[str, HookRequest]] = {}
    for n in (10, 100, 1000):
        out[f"patient-view r{n}"] = (
            PV,
            build_hook_request(services[PV], n, seed=seed, terms=terms),
        )
    if OS in services:
        out["order-sign r100"] = (OS, build_hook_request(services[OS], 100, seed=seed, terms=terms))
    return out


async def measure(
    servers: dict[str, Server],
    requests: dict[str, tuple[str, HookRequest]],
    issuer: Issuer,
    quick: bool,
    only: str | None = None,
) -> list[Result]:
    results: list[Result] = []
    scale = 0.2 if quick else 1.0

    async def one(
        server: Server,
        case: str,
        path: str,
        body: bytes | None,
        conc: int,
        *,
        seconds: float | None = None,
        cpu: bool = True,
        record: bool = True,
    ) -> Result:
        heavy = body is not None and len(body) > 400_000
        max_requests = int((80 if heavy else 300 if conc == 1 else 400) * scale) or 10
        max_seconds = (seconds or (12.0 if conc == 1 else 10.0)) * scale
        warmup = 3 if heavy else 10
        headers = None
        if server.name.startswith("service+jwt"):
            tokens = issuer.tokens(server.base_url + path, max_requests + warmup + conc)
            headers = tokens.__next__
        async with make_client(conc) as client:
            result = await drive(
                client,
                f"{case} @ {server.name}",
                "POST" if body is not None else "GET",
                server.base_url + path,
                body=body,
                headers=headers,
                concurrency=conc,
                max_requests=max_requests,
                max_seconds=max_seconds,
                warmup=warmup,
                cpu_probe=server.cpu_ms if cpu else None,
            )
        s = result.summary()
        log(
            f"  {result.name:<42} c={conc} n={s['requests']:>4} err={s['errors']} "
            f"p50={s['p50_ms']:>8.2f} ms p99={s['p99_ms']:>8.2f} ms {s['rps']:>8.1f} req/s "
            f"cpu={s['server_cpu_ms_per_request']:>7.2f} ms/req"
        )
        if result.error_samples:
            log(f"    errors: {result.error_samples}")
        if record:
            results.append(result)
        return result

    async def probe(server: Server, case: str, seconds: float) -> Result:
        """Discovery from its own process (``bench.probe``) for ``seconds``."""
        url = server.base_url + "/cds-services"
        count = int(300 * scale) or 10
        with tempfile.NamedTemporaryFile("w", suffix=".tokens", encoding="utf-8") as fh:
            if server.name.startswith("service+jwt"):
                fh.write("\n".join(issuer.token(url) for _ in range(count + 3)))
                fh.flush()
            process = await asyncio.create_subprocess_exec(  # on every core, as a client would
                sys.executable,
                "-m",
                "bench.probe",
                url,
                str(seconds * scale),
                fh.name,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=lambda: os.sched_setaffinity(0, range(os.cpu_count() or 1)),  # noqa: PLW1509
            )
            out, _ = await process.communicate()
        answer = json.loads(out)
        result = Result(f"{case} @ {server.name}", 1, latencies=answer["latencies"])
        result.errors = len(answer["failures"])
        result.error_samples = answer["failures"][:3]
        result.elapsed = seconds * scale
        s = result.summary()
        log(
            f"  {result.name:<42} c=1 n={s['requests']:>4} err={s['errors']} "
            f"p50={s['p50_ms']:>8.2f} ms p99={s['p99_ms']:>8.2f} ms (own process)"
        )
        results.append(result)
        return result

    plan: list[tuple[str, str, bytes | None]] = [("discovery", "/cds-services", None)]
    plan += [(case, f"/cds-services/{sid}", req.encode()) for case, (sid, req) in requests.items()]
    pv100 = next(p for p in plan if p[0] == "patient-view r100")
    if only == "two-workers":
        await two_workers(one, probe, servers[TWO_WORKERS], pv100)
        return results
    log("concurrency 1:")
    for case, path, body in plan:
        for name in SERVERS:  # interleaved so that drift hits every server alike
            await one(servers[name], case, path, body, 1)
    log("concurrency 8:")
    for case, path, body in plan:
        if case in ("discovery", "patient-view r100"):
            for name in SERVERS:
                await one(servers[name], case, path, body, 8)
    log("discovery while patient-view r100 runs at concurrency 4 (P6):")
    server = servers["service+jwt"]
    background, foreground = await asyncio.gather(
        one(
            server,
            "patient-view r100 (background)",
            pv100[1],
            pv100[2],
            4,
            seconds=10.0,
            cpu=False,
            record=False,
        ),
        probe(server, "discovery under load", 10.0),
    )
    del background
    del foreground
    await two_workers(one, probe, servers[TWO_WORKERS], pv100)
    return results


async def two_workers(
    one: Any, probe: Any, server: Server, pv100: tuple[str, str, bytes | None]
) -> None:
    """Patient-view r100 from 8 clients, and discovery from a ninth client meanwhile."""
    log("two workers (not pinned): patient-view r100 at concurrency 8, discovery during it:")
    await one(server, "discovery", "/cds-services", None, 1)
    await asyncio.gather(
        one(server, "patient-view r100", pv100[1], pv100[2], 8, seconds=12.0),
        probe(server, "discovery under c=8 load", 12.0),
    )


def find(results: list[Result], case: str, server: str, conc: int) -> Result:
    for r in results:
        if r.name == f"{case} @ {server}" and r.concurrency == conc:
            return r
    raise KeyError((case, server, conc))


def verdicts(
    results: list[Result], prof: dict[str, Any] | None = None, only: str | None = None
) -> list[dict[str, Any]]:
    """Each target of issue #14 (P1 tightened: 8x the floor, p99 100 ms, r1000 6x) as a
    ratio or figure measured in this run (with ``only``, the targets of that section)."""
    out: list[dict[str, Any]] = []

    def add(goal: str, measured: float, limit: float, unit: str, *, at_least: bool = False) -> None:
        ok = measured >= limit if at_least else measured <= limit
        if ok:
            miss = ""
        elif at_least:
            miss = f"misses by {limit / max(measured, 1e-9):.2f}x"
        else:
            miss = f"misses by {measured / limit:.2f}x" if limit else "misses"
        out.append(
            {
                "goal": goal,
                "measured": round(measured, 2),
                "limit": limit,
                "unit": unit,
                "holds": ok,
                "miss": miss,
            }
        )

    if only != "two-workers":
        single_worker_verdicts(results, prof, add)
    c8two = find(results, "patient-view r100", TWO_WORKERS, 8)
    add(
        "throughput r100 c=8, 2 workers, service+jwt (at least)",
        c8two.throughput,
        150.0,
        "req/s",
        at_least=True,
    )
    loaded2 = find(results, "discovery under c=8 load", TWO_WORKERS, 1)
    add("discovery p99 during r100 load at c=8, 2 workers", loaded2.p99, 50.0, "ms")
    errors8 = sum(r.errors for r in results if r.concurrency == 8)
    add("no error under 8 concurrent clients", float(errors8), 0.0, "errors")
    return out


def single_worker_verdicts(results: list[Result], prof: dict[str, Any] | None, add: Any) -> None:
    """The targets measured on the one-worker servers and the in-process profile."""
    floor100 = find(results, "patient-view r100", "floor", 1)
    for server in ("service+jwt", "service"):
        pv100 = find(results, "patient-view r100", server, 1)
        pv1000 = find(results, "patient-view r1000", server, 1)
        add(f"P1 p50 / floor p50, r100, {server}", pv100.p50 / floor100.p50, 8.0, "x")
        add(f"P1 stretch p50 / floor p50, r100, {server}", pv100.p50 / floor100.p50, 5.0, "x")
        add(
            f"P1 (CPU form) server CPU per call / floor's, r100, {server}",
            pv100.cpu_per_request / floor100.cpu_per_request,
            8.0,
            "x",
        )
        add(f"P1 p99, r100, {server}", pv100.p99, 100.0, "ms")
        add(f"r1000 p50 / r100 p50, {server}", pv1000.p50 / pv100.p50, 6.0, "x")
        floor1000 = find(results, "patient-view r1000", "floor", 1)
        net = (pv1000.p50 - floor1000.p50) / max(1e-9, pv100.p50 - floor100.p50)
        add(f"r1000 / r100 cost net of floor, {server}", net, 6.0, "x")
    if prof and "stages_ms" in prof:
        add("in-process evaluation CPU, r100", prof["stages_ms"]["evaluate"], 8.0, "ms")
    c8 = find(results, "patient-view r100", "service+jwt", 8)
    add(
        "P3 throughput r100 c=8, 1 worker, service+jwt (info)",
        c8.throughput,
        150.0,
        "req/s",
        at_least=True,
    )
    disc = find(results, "discovery", "service+jwt", 1)
    add("P5 discovery p99 c=1, service+jwt", disc.p99, 5.0, "ms")
    loaded = find(results, "discovery under load", "service+jwt", 1)
    add("P6 discovery p99 during r100 load at c=4, 1 worker, service+jwt", loaded.p99, 50.0, "ms")


def check_logs(servers: dict[str, Server], secrets: list[str]) -> list[str]:
    leaks = []
    for server in servers.values():
        text = server.log_path.read_text(encoding="utf-8", errors="replace")
        for secret in secrets:
            if secret in text:
                leaks.append(f"{server.name}: {secret[:24]}...")
    return leaks


def table(results: list[Result]) -> str:
    lines = [
        "| case | server | conc | n | errors | p50 ms | p99 ms | req/s | server CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        case, _, server = r.name.partition(" @ ")
        cpu = "–" if r.server_cpu_ms is None else f"{r.cpu_per_request:.2f}"
        lines.append(
            f"| {case} | {server} | {r.concurrency} | {r.count} | {r.errors} | "
            f"{r.p50:.2f} | {r.p99:.2f} | {r.throughput:.1f} | {cpu} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run with few requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--only", choices=["two-workers"], help="run one section (its servers and targets)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    info = machine()
    log(f"machine: {info}")
    cpu_server = 0 if (os.cpu_count() or 1) >= 2 else None
    if cpu_server is not None:
        os.sched_setaffinity(0, {1})  # the driver on CPU 1, the servers on CPU 0
    issuer = Issuer()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        definitions, digest = snapshot_definitions(work)
        info["definitions"] = digest
        servers = start_servers(work, definitions, issuer, cpu_server, args.only)
        try:
            # the service's answers, from the server without JWT (or the only one started)
            first = servers.get("service") or servers[TWO_WORKERS]
            auth = next(issuer.tokens(first.base_url + "/cds-services", 1))
            discovery = httpx.get(first.base_url + "/cds-services", headers=auth).json()
            requests = cases(discovery, args.seed, definitions)
            ready = httpx.get(first.base_url + "/readyz").json()
            info["artifacts"] = ready.get("artifacts")
            info["plan_definitions"] = sum(1 for p in definitions.glob("PlanDefinition-*.json"))
            keys = {s["id"]: sorted(s.get("prefetch", {})) for s in discovery["services"]}
            log(
                f"definitions {digest}: {info['plan_definitions']} PlanDefinitions; "
                f"advertised prefetch keys: {keys}"
            )
            for case, (_, req) in requests.items():
                log(
                    f"  {case}: {req.resources} resources {req.counts} + {req.drafts} drafts, "
                    f"{len(req.encode())} bytes"
                )
            memory_start = {name: s.memory() for name, s in servers.items()}
            results = asyncio.run(measure(servers, requests, issuer, args.quick, args.only))
            memory_end = {name: s.memory() for name, s in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
        secrets = ["MRN-BENCH-0042", "Benchmark", "1957-04-12", "eyJ"]
        leaks = check_logs(servers, secrets)
        if cpu_server is not None:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        prof: dict[str, Any] = {}
        if not args.no_profile and args.only is None:
            raw = requests["patient-view r100"][1].encode()
            prof = profile.run(NOW, PV, raw, log, definitions)
            raw1000 = requests["patient-view r1000"][1].encode()
            prof["r1000_stages_ms"] = profile.run(NOW, PV, raw1000, log, definitions)["stages_ms"]
    info["loadavg_end"] = loadavg()
    checks = verdicts(results, prof, args.only)
    log("\n" + table(results))
    log("\nRSS KiB (start → end, peak): " + json.dumps({"start": memory_start, "end": memory_end}))
    log(f"load average at start {info.get('loadavg_start')}, at end {info.get('loadavg_end')}")
    log("\ntargets:")
    for v in checks:
        mark = "HOLDS" if v["holds"] else "MISSES"
        log(
            f"  {mark:<6} {v['goal']}: {v['measured']} (limit {v['limit']} {v['unit']}) {v['miss']}"
        )
    log(f"log hygiene (tokens / patient identifiers in server logs): {leaks or 'none found'}")
    if prof:
        log("\nprofile, one patient-view r100 call, top by own time:")
        for row in prof["by_tottime"][:15]:
            log(
                f"  {row['tottime_ms']:>8.2f} {row['cumtime_ms']:>8.2f} {row['ncalls']:>7} "
                f"{row['function']}"
            )
        log(f"per rule (ms): {prof['rules_ms']}")
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / f"results-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out_file.write_text(
        json.dumps(
            {
                "machine": info,
                "cases": {
                    case: {
                        "resources": req.resources,
                        "counts": req.counts,
                        "drafts": req.drafts,
                        "bytes": len(req.encode()),
                    }
                    for case, (_, req) in requests.items()
                },
                "results": [r.summary() for r in results],
                "memory_kib": {"start": memory_start, "end": memory_end},
                "targets": checks,
                "log_leaks": leaks,
                "profile": prof,
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    log(f"\nwritten {out_file} in {time.monotonic() - started:.0f} s")
    errors = sum(r.errors for r in results)
    return 1 if errors or leaks else 0


if __name__ == "__main__":
    raise SystemExit(main())
