"""``python -m bench.probe URL SECONDS [TOKENS]``: GET ``URL`` one request at a time for at most
``SECONDS`` and print the latencies (ms) as a JSON list.

The discovery client of the load scenarios runs here, in its own process: in the load
driver's event loop its latency would include the driver's own queueing behind the load
clients (tens of ms at 8 clients), not only the server's. ``TOKENS`` is a file with one
``Authorization`` value per line, one per request (the server refuses a replayed ``jti``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

_WARMUP = 3  # requests sent first and not recorded (connection set-up)


def main(argv: list[str]) -> None:
    url, seconds = argv[0], float(argv[1])
    tokens = Path(argv[2]).read_text(encoding="utf-8").split() if len(argv) > 2 else []
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.perf_counter() + seconds
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        for n in range(len(tokens) or 10**9):
            if time.perf_counter() >= deadline:
                break
            headers = {"authorization": f"Bearer {tokens[n]}"} if tokens else {}
            start = time.perf_counter()
            response = client.get(url, headers=headers)
            took = (time.perf_counter() - start) * 1000
            if n < _WARMUP:
                continue
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text[:200]}")
            latencies.append(took)
    print(json.dumps({"latencies": latencies, "failures": failures}))


if __name__ == "__main__":
    main(sys.argv[1:])
