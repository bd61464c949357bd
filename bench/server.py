"""uvicorn on a free loopback port, one worker (or ``workers``), optionally pinned to one CPU core.

The process is started by the benchmark and stopped by it (by its pid, never by name). Its
stderr (the service's JSON log) goes to a file so that the run can check it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of ``pid`` in KiB (psutil when installed, else /proc)."""
    try:
        import psutil  # type: ignore[import-not-found]

        info = psutil.Process(pid).memory_info()
        out = {"rss": int(info.rss // 1024)}
    except ImportError:
        out = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[{"VmRSS": "rss", "VmHWM": "peak"}[name]] = int(value.split()[0])
    return out


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ms(pid: int) -> float:
    """User + system CPU milliseconds of ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / _TICK


def children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (``/proc/<pid>/task/*/children``)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text(encoding="ascii")
            out += [int(x) for x in text.split()]
    return out


def workers_of(pid: int) -> list[int]:
    """uvicorn's worker processes under ``pid`` (multiprocessing ``spawn_main`` children; its
    resource tracker is left out)."""
    out = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
    return out


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_ms(pid)
    except OSError:
        return 0.0


@dataclass
class Server:
    """A uvicorn process serving ``target`` (``module:app``) with ``env`` added."""

    name: str
    target: str
    env: dict[str, str]
    log_path: Path
    cpu: int | None = None
    workers: int = 1
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, **self.env}
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            self.target,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--no-access-log",
        ]
        cpu = self.cpu

        def pin() -> None:  # runs in the child before exec
            # an unpinned server gets every core: the child would otherwise inherit the
            # driver's own pinning (bench.run pins itself before it starts the servers)
            os.sched_setaffinity(0, {cpu} if cpu is not None else range(os.cpu_count() or 1))

        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log_path}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout} s")

    def pids(self) -> list[int]:
        """The server's processes: uvicorn itself, and its worker processes when it has
        several (uvicorn's supervisor then only waits; the workers serve)."""
        if self.process is None:
            return []
        return [self.process.pid, *children(self.process.pid)]

    def cpu_ms(self) -> float:
        return sum(_cpu_or_zero(pid) for pid in self.pids())

    def memory(self) -> dict[str, int]:
        """RSS of the serving process (of each worker, as ``worker<n>``, when several)."""
        if self.process is None:
            return {}
        if self.workers == 1:
            return rss_kib(self.process.pid)
        out: dict[str, int] = {}
        for n, pid in enumerate(workers_of(self.process.pid), start=1):
            for key, value in rss_kib(pid).items():
                out[f"worker{n}_{key}"] = value
        return out

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        self._log.close()
