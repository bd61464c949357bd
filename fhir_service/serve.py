"""The serving entry point: ``python -m fhir_service`` (``make run`` and the container image).

One place decides how the app is served (``uvicorn fhir_service.main:app`` keeps working, with
one process and the contract's defaults):

* **host and port**: ``--host``/``--port``, else the ``HOST``/``PORT`` variables, else
  ``127.0.0.1:8000``;
* **public base URL**: unless ``FHIR_SERVICE_PUBLIC_BASE_URL`` is set it becomes
  ``http://<HOST>:<PORT>`` (contract, Additions of 2026-12, "make run"), so card links and the
  JWT ``aud`` follow the port; a wildcard host (``0.0.0.0``, ``::``) gives ``127.0.0.1``;
* **workers**: ``--workers``, else ``FHIR_SERVICE_WORKERS``, else one per CPU core this
  process may run on. Everything workers share (issued cards, feedback, the JWT replay cache)
  lives in the database;
* **metrics across workers**: with more than one worker (or when ``PROMETHEUS_MULTIPROC_DIR``
  is set) prometheus-client's multiprocess mode is used: the directory (given, or a fresh
  temporary one) is emptied of old samples before any worker starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import MutableMapping, Sequence
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
APP = "fhir_service.main:app"
#: prometheus-client reads it when first imported: set here, before any worker starts.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_WILDCARDS = ("0.0.0.0", "::", "[::]", "")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _positive(name: str, text: str, upper: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {text!r}") from None
    if value < 1 or (upper is not None and value > upper):
        raise SystemExit(f"{name} must be between 1 and {upper or 'any'}, not {value}")
    return value


def public_base_url(host: str, port: int) -> str:
    """``http://<host>:<port>``, the default public base URL of a served instance."""
    shown = DEFAULT_HOST if host in _WILDCARDS else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def prepare_multiprocess_dir(env: MutableMapping[str, str]) -> Path:
    """The multiprocess directory, created if needed and emptied of earlier samples."""
    given = env.get(MULTIPROC_ENV)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="fhir-service-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    env[MULTIPROC_ENV] = str(directory)
    return directory


def parse_args(argv: Sequence[str] | None, env: MutableMapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fhir_service", description="Serve the FHIR guideline service."
    )
    parser.add_argument("--host", default=env.get("HOST") or DEFAULT_HOST)
    parser.add_argument("--port", default=env.get("PORT") or str(DEFAULT_PORT))
    parser.add_argument(
        "--workers",
        default=env.get("FHIR_SERVICE_WORKERS") or None,
        help="worker processes (default: FHIR_SERVICE_WORKERS, else one per CPU core)",
    )
    args = parser.parse_args(argv)
    args.port = _positive("PORT", str(args.port), 65535)
    args.workers = (
        cpu_cores() if args.workers is None else _positive("FHIR_SERVICE_WORKERS", args.workers)
    )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    env = os.environ
    args = parse_args(argv, env)
    env.setdefault("FHIR_SERVICE_PUBLIC_BASE_URL", public_base_url(args.host, args.port))
    temporary = None
    if args.workers > 1 or env.get(MULTIPROC_ENV):
        explicit = bool(env.get(MULTIPROC_ENV))
        directory = prepare_multiprocess_dir(env)
        temporary = None if explicit else directory
    import uvicorn  # after the environment is final: workers inherit it

    try:
        uvicorn.run(
            APP,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=False,  # the app logs each request without its query string
            proxy_headers=True,  # trusted proxies: FORWARDED_ALLOW_IPS (uvicorn)
            timeout_graceful_shutdown=20,
        )
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    main()
