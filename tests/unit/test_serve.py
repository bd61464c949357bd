"""The serving entry point's choices (fhir_service/serve.py): host, port, workers, the default
public base URL and the multiprocess metrics directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fhir_service import serve
from tests.conftest import ROOT


def test_defaults_are_the_contracts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "cpu_cores", lambda: 6)
    args = serve.parse_args([], {})
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 8000, 6)


def test_host_port_and_workers_from_the_environment() -> None:
    env = {"HOST": "0.0.0.0", "PORT": "9123", "FHIR_SERVICE_WORKERS": "3"}
    args = serve.parse_args([], env)
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 9123, 3)
    args = serve.parse_args(["--port", "9200", "--workers", "1"], env)
    assert (args.port, args.workers) == (9200, 1)


@pytest.mark.parametrize(
    "env",
    [{"PORT": "http"}, {"PORT": "0"}, {"PORT": "70000"}, {"FHIR_SERVICE_WORKERS": "0"}],
)
def test_bad_values_refuse_to_start_naming_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SystemExit, match="PORT|FHIR_SERVICE_WORKERS"):
        serve.parse_args([], env)


@pytest.mark.parametrize(
    ("host", "port", "base"),
    [
        ("127.0.0.1", 8000, "http://127.0.0.1:8000"),
        ("localhost", 9000, "http://localhost:9000"),
        ("0.0.0.0", 8000, "http://127.0.0.1:8000"),
        ("::1", 8080, "http://[::1]:8080"),
    ],
)
def test_public_base_url_follows_host_and_port(host: str, port: int, base: str) -> None:
    assert serve.public_base_url(host, port) == base


def test_multiprocess_dir_is_created_and_emptied(tmp_path: Path) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"stale")
    (given / "keep.txt").write_text("not ours")
    env = {serve.MULTIPROC_ENV: str(given)}
    assert serve.prepare_multiprocess_dir(env) == given
    assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]
    fresh: dict[str, str] = {}
    made = serve.prepare_multiprocess_dir(fresh)
    try:
        assert made.is_dir() and fresh[serve.MULTIPROC_ENV] == str(made)
    finally:
        made.rmdir()


def test_make_run_serves_through_the_entry_point_with_host_and_port() -> None:
    done = subprocess.run(
        ["make", "-n", "run", "PORT=9123", "HOST=127.0.0.2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if "-m fhir_service" in line]
    assert "HOST='127.0.0.2' PORT='9123'" in line
    assert "FHIR_SERVICE_PUBLIC_BASE_URL" not in done.stdout  # the entry point derives it
