"""``python -m fhir_service`` (what ``make run`` and the image run) with two uvicorn workers on
loopback: ``/metrics`` counts the calls of both workers whichever answers the scrape; ``PORT``
and ``HOST`` are honoured and card links follow the port (contract, Additions of 2026-12:
"Metrics", "make run"); a service path with an empty segment is served over real HTTP."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.integration._servers import (
    PINNED_NOW,
    ROOT,
    _clean_env,
    free_port,
    http_json,
    spawn,
    stop,
    wait_ready,
)
from tests.observability.helpers import PV, pv_request, samples, value

SERVICE = "muscle-spasm-patient-view"


def stale_samples(directory: Path) -> None:
    """Samples an earlier run left behind (1000 calls): the entry point must clear them."""
    code = (
        "from prometheus_client import Counter\n"
        "Counter('fhir_service_cds_hook_calls', 'x', ['service', 'status'])"
        f".labels('{SERVICE}', '200').inc(1000)\n"
    )
    env = _clean_env({"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert list(directory.glob("*.db"))


def call(base: str, index: int) -> dict[str, Any]:
    body = pv_request() | {"hookInstance": f"e81422ba-0000-4000-8000-{index:012d}"}
    status, answer = http_json("POST", base + PV, body)
    assert status == 200, answer
    result: dict[str, Any] = answer
    return result


def per_worker(text: str) -> dict[str, float]:
    return {
        labels["pid"]: v
        for name, labels, v in samples(text)
        if name == "fhir_service_worker_requests" and "pid" in labels
    }


def test_two_workers_count_together_and_links_follow_the_port(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale_samples(metrics_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = _clean_env(
        {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "FHIR_SERVICE_WORKERS": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "FHIR_SERVICE_AUTH": "off",
            "FHIR_SERVICE_NOW": PINNED_NOW,
            "FHIR_SERVICE_DATABASE_URL": f"sqlite:///{tmp_path / 'service.db'}",
            "FHIR_SERVICE_LOG_LEVEL": "WARNING",
        }
    )  # no FHIR_SERVICE_PUBLIC_BASE_URL: it follows HOST and PORT
    argv = [sys.executable, "-m", "fhir_service"]
    server = spawn(argv, cwd=ROOT, env=env, log=tmp_path / "serve.log", base=base)
    try:
        wait_ready(server)
        made = 0
        with ThreadPoolExecutor(8) as pool:
            # Calls in parallel on fresh connections until both workers have served some
            # (the kernel hands connections to whichever worker accepts first).
            while made < 400:
                answers = list(pool.map(lambda i: call(base, i), range(made, made + 16)))
                made += 16
                if len(per_worker(http_json_text(base + "/metrics"))) == 2 and made >= 32:
                    break
        links = {
            link["url"] for a in answers for card in a["cards"] for link in card.get("links", ())
        }
        assert links and all(url.startswith(f"{base}/fhir/") for url in links), links

        scrapes = [http_json_text(base + "/metrics") for _ in range(6)]
        for text in scrapes:
            served = per_worker(text)
            assert len(served) == 2, f"not both workers served: {served}\n{server.output()}"
            assert all(v > 0 for v in served.values())
            # whichever worker answers, the calls of both are counted (stale samples cleared)
            hook_calls = "fhir_service_cds_hook_calls_total"
            assert value(text, hook_calls, service=SERVICE, status="200") == made
            assert value(text, "fhir_service_cds_cards_total", service=SERVICE) == 2 * made
            assert value(text, "fhir_service_cds_cards_total", rule="RF-05") == made
            assert value(text, "fhir_service_knowledge_info") == 1

        # the sandbox's `//` path, sent verbatim over HTTP
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = json.dumps(pv_request()).encode()
        connection.request(
            "POST",
            "/cds-services//muscle-spasm-patient-view",
            body,
            {"content-type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200
        assert len(json.loads(response.read())["cards"]) == 2
        connection.close()
    finally:
        stop(server)


def http_json_text(url: str) -> str:
    """GET ``url`` (no proxies) and return its text."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        assert response.status == 200
        return str(response.read().decode())
