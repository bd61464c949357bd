"""``fhir_service.main:app``: importing it builds nothing and writes nothing; the app is built by
``create_app()`` on its first ASGI event, and a bad knowledge base still stops uvicorn."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fhir_service.knowledge.loader import KnowledgeError
from fhir_service.main import LazyApp
from tests.conftest import make_app

ROOT = Path(__file__).resolve().parents[2]
BAD_DEFINITIONS = ROOT / "tests" / "fixtures" / "definitions-bad-json"

IMPORT_CHECK = """
import sys
import fhir_service.main as main
assert main.app._app is None, "the app was built at import"
print("ok")
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVICE_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_importing_main_creates_no_file_and_loads_no_artifact(tmp_path: Path) -> None:
    # A definitions folder that does not exist: loading anything would raise.
    env = _env(FHIR_SERVICE_DEFINITIONS_DIR=str(tmp_path / "absent"))
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lazy_app_builds_once_on_first_use(tmp_path: Path) -> None:
    built: list[FastAPI] = []

    def factory() -> FastAPI:
        built.append(make_app(tmp_path))
        return built[-1]

    lazy = LazyApp(factory)
    assert built == []
    with TestClient(lazy) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/cds-services").status_code == 200
    assert len(built) == 1


def test_lazy_app_reports_a_bad_knowledge_base_as_failed_startup() -> None:
    def factory() -> FastAPI:
        raise KnowledgeError(["PlanDefinition-bad.json: not JSON"])

    with pytest.raises(KnowledgeError), TestClient(LazyApp(factory)):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _uvicorn(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", "fhir_service.main:app", "--port", str(port)]
    return subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=_env(FHIR_SERVICE_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}", **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_uvicorn_serves_main_app(tmp_path: Path) -> None:
    port = _free_port()
    server = _uvicorn(tmp_path, port, FHIR_SERVICE_AUTH="off")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, "uvicorn exited"
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.json()["artifacts"] > 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_uvicorn_refuses_to_start_on_a_bad_knowledge_base(tmp_path: Path) -> None:
    server = _uvicorn(
        tmp_path,
        _free_port(),
        FHIR_SERVICE_AUTH="off",
        FHIR_SERVICE_DEFINITIONS_DIR=str(BAD_DEFINITIONS),
    )
    try:
        assert server.wait(timeout=60) != 0
    finally:
        if server.poll() is None:
            server.kill()
