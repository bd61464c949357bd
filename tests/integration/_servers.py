"""Real servers on loopback for the integration tests: our service under uvicorn and SEKMET.

Nothing here needs the internet at test time. SEKMET (``sekmet-fhir==0.1.1``, a FastAPI +
SQLite FHIR R4 server; see ``docs/deployment.md``, "A local test EHR") lives in its own virtual
environment, ``.venv-ehr`` at the repository root, so that its 51 packages never enter the service's
``.venv``. :func:`sekmet_executable` creates that environment when it is missing (idempotent;
the one step that reaches PyPI) and the tests skip, with the pip output as the reason, only when
it cannot be installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SEKMET_VERSION = "0.1.1"
EHR_VENV = Path(os.environ.get("FHIR_SERVICE_TEST_EHR_VENV", ROOT / ".venv-ehr"))
PINNED_NOW = "2026-12-01T12:00:00Z"
START_TIMEOUT = 60.0


class CannotInstall(RuntimeError):
    """SEKMET could not be installed (no PyPI, no venv module, ...)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """A plain HTTP call (urllib, no proxies): (status, parsed JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/fhir+json, application/json")
    if data is not None:
        request.add_header("Content-Type", "application/fhir+json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    return status, (json.loads(raw) if raw.strip() else None)


@dataclass
class Server:
    """A child process serving HTTP on ``base`` (its output goes to ``log``)."""

    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]


def _wait_ready(server: Server, probe: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode}:\n{server.output()}"
            )
        try:
            status, _ = http_json("GET", probe, timeout=2.0)
            if status == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{probe} not ready after {timeout:.0f} s:\n{server.output()}")


def spawn(argv: list[str], *, cwd: Path, env: Mapping[str, str], log: Path, base: str) -> Server:
    """Start a child process (not waiting for it); its output goes to ``log``."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv, cwd=cwd, env=dict(env), stdout=sink, stderr=subprocess.STDOUT
        )
    return Server(process, base, log)


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=15)


@contextmanager
def _process(
    argv: list[str], *, cwd: Path, env: Mapping[str, str], log: Path, base: str, probe: str
) -> Iterator[Server]:
    server = spawn(argv, cwd=cwd, env=env, log=log, base=base)
    try:
        _wait_ready(server, probe)
        yield server
    finally:
        stop(server)


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FHIR_SERVICE_") and k.lower() not in ("http_proxy", "https_proxy")
    }
    env.update(extra)
    return env


def spawn_uvicorn(workdir: Path, **settings: str) -> Server:
    """Our service (``fhir_service.main:app``) under uvicorn on a free loopback port, started
    but not waited for (:func:`wait_ready`).

    Defaults: auth off, the pinned clock, a database in ``workdir``, the public base URL of the
    port it serves on, loopback allowed as ``fhirServer``. ``settings`` are ``FHIR_SERVICE_*``
    values by lower-case name (``auth="jwt"`` → ``FHIR_SERVICE_AUTH=jwt``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    values = {
        "auth": "off",
        "now": PINNED_NOW,
        "database_url": f"sqlite:///{workdir / 'service.db'}",
        "public_base_url": base,
        "fhir_server_allowlist": "http://127.0.0.1",
        "log_level": "WARNING",
    }
    values.update(settings)
    env = _clean_env({f"FHIR_SERVICE_{k.upper()}": v for k, v in values.items()})
    argv = [sys.executable, "-m", "uvicorn", "fhir_service.main:app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    return spawn(argv, cwd=ROOT, env=env, log=workdir / "uvicorn.log", base=base)


def wait_ready(server: Server, path: str = "/healthz") -> None:
    _wait_ready(server, server.base + path)


@contextmanager
def uvicorn_server(workdir: Path, **settings: str) -> Iterator[Server]:
    """:func:`spawn_uvicorn`, ready on entry, stopped on exit."""
    server = spawn_uvicorn(workdir, **settings)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


def sekmet_executable() -> Path:
    """``.venv-ehr/bin/sekmet`` at the pinned version, installing it when absent or different.

    Raises :class:`CannotInstall` (with pip's output) when the install fails.
    """
    sekmet = EHR_VENV / "bin" / "sekmet"
    python = EHR_VENV / "bin" / "python"
    if sekmet.exists() and _installed_version(python) == SEKMET_VERSION:
        return sekmet
    steps = []
    if not python.exists():
        steps.append([sys.executable, "-m", "venv", str(EHR_VENV)])
    steps.append(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        + [f"sekmet-fhir=={SEKMET_VERSION}"]
    )
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            output = (done.stderr or done.stdout)[-1500:]
            raise CannotInstall(f"{' '.join(argv)} failed ({done.returncode}): {output}")
    if not sekmet.exists() or _installed_version(python) != SEKMET_VERSION:
        raise CannotInstall(f"sekmet-fhir=={SEKMET_VERSION} did not install into {EHR_VENV}")
    return sekmet


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('sekmet-fhir'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


@contextmanager
def sekmet_server(
    workdir: Path, sekmet: Path, *, absolute_references: bool = False
) -> Iterator[Server]:
    """SEKMET on a free loopback port: simulator off (it would act on orders), data in
    ``workdir``, no inbound traffic log. The FHIR base is ``Server.base``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = "\n".join(
        [
            f"base_url: {base}",
            "host: 127.0.0.1",
            f"port: {port}",
            f"data_dir: {workdir / 'data'}",
            "simulator: {enabled: false}",
            "log_inbound: false",
            f"server_behaviour: {{absolute_references: {str(absolute_references).lower()}}}",
            "",
        ]
    )
    (workdir / "settings.yaml").write_text(settings, encoding="utf-8")
    env = _clean_env({"NO_PROXY": "*"})
    argv = [str(sekmet), "serve", "-c", str(workdir / "settings.yaml")]
    with _process(
        argv, cwd=workdir, env=env, log=workdir / "sekmet.log", base=base, probe=f"{base}/metadata"
    ) as server:
        yield server


def load_transaction(fhir_base: str, bundle: dict[str, Any]) -> dict[str, str]:
    """POST a transaction Bundle; returns ``{fullUrl: "Type/id"}`` of what the server made."""
    status, response = http_json("POST", fhir_base, bundle)
    if status != 200 or not response or response.get("type") != "transaction-response":
        raise AssertionError(f"transaction failed ({status}): {json.dumps(response)[:2000]}")
    out: dict[str, str] = {}
    for sent, got in zip(bundle["entry"], response["entry"], strict=True):
        location = got["response"]["location"]
        if not got["response"]["status"].startswith(("200", "201")):
            raise AssertionError(f"entry {sent['fullUrl']} failed: {got['response']}")
        path = location.split("/fhir/", 1)[-1] if "/fhir/" in location else location
        out[sent["fullUrl"]] = "/".join(path.split("/")[:2])
    return out
