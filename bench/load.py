"""A bounded load driver: httpx AsyncClient, N concurrent clients, count- and time-bounded.

Every request is timed on the client (``perf_counter`` around send + full body read); keep-alive
connections are reused, one per client. A request whose status is not the expected one, or that
raises, counts as an error (never retried).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Result:
    """Latencies (ms) and outcome of one measured scenario."""

    name: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    server_cpu_ms: float | None = None  # server process CPU (user + system) over the run

    @property
    def count(self) -> int:
        return len(self.latencies)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
        return ordered[rank]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def cpu_per_request(self) -> float:
        """Server CPU milliseconds per measured request (robust to a busy machine)."""
        if self.server_cpu_ms is None or not self.latencies:
            return float("nan")
        return self.server_cpu_ms / len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": self.count,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "p50_ms": round(self.p50, 3),
            "p90_ms": round(self.percentile(90), 3),
            "p99_ms": round(self.p99, 3),
            "max_ms": round(max(self.latencies), 3) if self.latencies else None,
            "rps": round(self.throughput, 2),
            "server_cpu_ms_per_request": round(self.cpu_per_request, 3),
            "elapsed_s": round(self.elapsed, 2),
        }


HeaderFactory = Callable[[], dict[str, str]]


async def drive(
    client: httpx.AsyncClient,
    name: str,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: HeaderFactory | None = None,
    concurrency: int = 1,
    max_requests: int = 200,
    max_seconds: float = 8.0,
    warmup: int = 5,
    expect: int = 200,
    cpu_probe: Callable[[], float] | None = None,
) -> Result:
    """Send at most ``max_requests`` (after ``warmup``) for at most ``max_seconds``."""
    base_headers = {"content-type": "application/json"} if body is not None else {}

    async def one(result: Result | None) -> None:
        extra = headers() if headers else {}
        start = time.perf_counter()
        try:
            response = await client.request(
                method, url, content=body, headers={**base_headers, **extra}
            )
            status = response.status_code
        except httpx.HTTPError as exc:
            if result is not None:
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(type(exc).__name__)
            return
        took = (time.perf_counter() - start) * 1000
        if result is None:
            return
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status != expect:
            result.errors += 1
            if len(result.error_samples) < 3:
                result.error_samples.append(f"{status}: {response.text[:200]}")
        result.latencies.append(took)

    for _ in range(warmup):
        await one(None)
    result = Result(name, concurrency)
    issued = 0
    cpu_start = cpu_probe() if cpu_probe else None
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            await one(result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    if cpu_probe is not None and cpu_start is not None:
        result.server_cpu_ms = cpu_probe() - cpu_start
    return result


def make_client(concurrency: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=httpx.Timeout(30.0),
        trust_env=False,
    )
