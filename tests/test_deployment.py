"""Deployment files: Dockerfile, .dockerignore, compose.yaml, deploy/nginx.conf.

The structural checks always run. The tool checks run where the tool is: ``docker build`` only
when a Docker daemon answers (``docker info``), ``docker compose config`` only when the compose
plugin exists, ``nginx -t`` only when nginx is installed; otherwise they skip with the reason.
(tests/integration/test_scale_out.py runs the nginx config for real in front of two replicas.)
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration._servers import ROOT, free_port

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
CONTRACT_SETTINGS = {
    "FHIR_SERVICE_NOW",
    "FHIR_SERVICE_AUTH",
    "FHIR_SERVICE_TRUSTED_ISSUERS",
    "FHIR_SERVICE_PUBLIC_BASE_URL",
    "FHIR_SERVICE_FHIR_SERVER_ALLOWLIST",
    "FHIR_SERVICE_DATABASE_URL",
    "FHIR_SERVICE_LOG_LEVEL",
}


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


def docker_daemon() -> str | None:
    """None when a Docker daemon answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client"
    done = run("docker", "info", timeout=30)
    if done.returncode != 0:
        return f"no Docker daemon reachable: {(done.stderr or done.stdout).strip()[-300:]}"
    return None


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_shape() -> None:
    steps = dockerfile_instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in steps
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][-1] :]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the service must not run as root"
    assert ("EXPOSE", "8000") in runtime
    healthcheck = next(rest for word, rest in runtime if word == "HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in healthcheck
    cmd = json.loads(next(rest for word, rest in runtime if word == "CMD"))
    assert cmd[:3] == ["python", "-m", "fhir_service"]  # fhir_service/serve.py
    assert cmd[cmd.index("--port") + 1] == "8000" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "scripts/browser-deps.sh --lforms-only" in runs
    assert "requirements.lock" in runs


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            return True
        if pattern.startswith("**/") and any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def test_dockerignore_keeps_the_build_context_small_and_complete() -> None:
    patterns = dockerignore_patterns()
    for secret_or_bulk in (".git", ".venv", ".venv-ehr", "var", "tests", ".env"):
        assert ignored(secret_or_bulk, patterns), secret_or_bulk
    assert ignored("fhir_service/static/forms/node_modules", patterns)
    # every file the Dockerfile copies from the context exists and is sent
    for word, rest in dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"


@pytest.mark.slow
def test_docker_build_and_run() -> None:
    reason = docker_daemon()
    if reason:
        pytest.skip(reason)
    tag = "fhir-service:test"
    built = run("docker", "build", "-t", tag, ".", timeout=1800)
    assert built.returncode == 0, built.stderr[-4000:]
    port = free_port()
    started = run(
        "docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8000",
        "-e", "FHIR_SERVICE_AUTH=off", tag,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, run("docker", "logs", container).stdout
                time.sleep(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/forms/muscle-spasm-assessment") as r:
            assert r.status == 200
        uid = run("docker", "exec", container, "id", "-u").stdout.strip()
        assert uid not in ("", "0")
    finally:
        run("docker", "rm", "-f", container)


# --------------------------------------------------------------------------------------------
# compose.yaml


def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_topology() -> None:
    services = compose()["services"]
    assert {"app1", "app2", "nginx", "db"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    apps = [services["app1"], services["app2"]]
    assert apps[0]["environment"] == apps[1]["environment"]  # replicas agree on everything
    env = apps[0]["environment"]
    assert set(env) <= CONTRACT_SETTINGS
    assert env["FHIR_SERVICE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@db:5432/" in env["FHIR_SERVICE_DATABASE_URL"]
    assert env["FHIR_SERVICE_AUTH"].endswith("jwt}") or env["FHIR_SERVICE_AUTH"] == "jwt"
    for app in apps:
        assert app["build"] == "."
        assert app["depends_on"]["db"]["condition"] == "service_healthy"
        volumes = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for v in app["volumes"]]
        default = volumes[0].split(":")[0]
        assert (ROOT / default).exists()
        assert "trusted-issuers.dev" not in default, "never trust the sandbox key by default"
    nginx = services["nginx"]
    assert any(v.startswith("./deploy/nginx.conf:") for v in nginx["volumes"])
    for app in ("app1", "app2"):
        assert nginx["depends_on"][app]["condition"] == "service_healthy"
    upstreams = re.findall(r"server\s+([\w.-]+):8000", NGINX_CONF.read_text(encoding="utf-8"))
    assert sorted(upstreams) == ["app1", "app2"]


def test_docker_compose_config() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    version = run("docker", "compose", "version")
    if version.returncode != 0:
        pytest.skip(f"docker compose not available: {(version.stderr or version.stdout).strip()}")
    done = run("docker", "compose", "-f", str(COMPOSE), "config", "-q")
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------------------------
# nginx


def local_nginx_conf(tmp_path: Path, upstreams: list[int] | None = None, port: int = 8080) -> Path:
    """deploy/nginx.conf with the compose host names replaced (nginx resolves them at load)."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    ports = upstreams or [8000, 8000]
    for index, upstream_port in enumerate(ports, start=1):
        text = text.replace(f"server app{index}:8000", f"server 127.0.0.1:{upstream_port}")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    text = text.replace("pid /tmp/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};")
    path = tmp_path / "nginx.conf"
    path.write_text(text, encoding="utf-8")
    return path


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        pytest.skip("nginx not installed")
    conf = local_nginx_conf(tmp_path)
    done = run(nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(conf))
    assert done.returncode == 0, done.stderr
