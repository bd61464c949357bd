"""A real, throwaway PostgreSQL server for the store tests (one per test session).

The server is initialised in a fresh temporary directory (``initdb --auth=trust``), listens only
on a unix socket inside that directory (no TCP port, so no clash with anything else on the
machine) and is removed at the end of the session. PostgreSQL refuses to run as root, so when the
tests run as root the server runs as the ``postgres`` OS user (or ``nobody`` when there is none).

The binaries are looked up in ``PATH`` and in ``/usr/lib/postgresql/*/bin`` (newest first). The
tests skip, with that reason, only when no ``pg_ctl``/``initdb`` pair can be found (``make
pytest`` runs ``scripts/system-deps.sh``, which installs Debian ``postgresql`` when missing);
any other failure to start the server is a test error.

A watchdog process holds the read end of a pipe whose write end only this test process has:
when the session ends, or the process dies in any way (SIGTERM, SIGKILL), the pipe reaches EOF and
the watchdog stops the server and deletes its directory, so no server outlives its test run.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

# ``tests/unit/test_store.py`` holds StoreContract, the behaviour shared by every backend.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

PG_SUPERUSER = "postgres"
TEST_DATABASE = "store_tests"
START_TIMEOUT_SECONDS = 30

# argv: pg_ctl, data dir, root dir, uid or "-", gid or "-". Waits for EOF on stdin, then cleans up.
_WATCHDOG = """
import shutil, subprocess, sys
pg_ctl, data, root, uid, gid = sys.argv[1:6]
sys.stdin.buffer.read()
ids = {} if uid == "-" else {"user": int(uid), "group": int(gid), "extra_groups": []}
subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "-w", "-s", "stop"], cwd=root,
               capture_output=True, check=False, **ids)
shutil.rmtree(root, ignore_errors=True)
"""


def find_postgres_bin_dir() -> Path | None:
    """The directory holding ``pg_ctl``, ``initdb`` and ``postgres``, or None."""
    candidates: list[Path] = []
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    for directory in candidates:
        if (directory / "pg_ctl").is_file() and (directory / "initdb").is_file():
            return directory
    return None


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged user the server runs as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass
class PgServer:
    """A running PostgreSQL cluster reachable through a unix socket in ``socket_dir``."""

    bin_dir: Path
    root: Path
    run_as: tuple[int, int] | None
    running: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{PG_SUPERUSER}@/{database}?host={self.socket_dir}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        uid, gid = self.run_as if self.run_as is not None else (None, None)
        return subprocess.run(
            [str(self.bin_dir / argv[0]), *argv[1:]],
            cwd=self.root,
            env={
                "PATH": f"{self.bin_dir}:/usr/bin:/bin",
                "LC_ALL": "C",
                "LANG": "C",
                "HOME": str(self.root),
            },
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_SECONDS + 10,
            check=False,
            user=uid,
            group=gid,
            extra_groups=None if uid is None else [],
        )

    def _checked(self, *argv: str) -> None:
        done = self._run(*argv)
        if done.returncode != 0:
            log = (
                self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            )
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}\n{log}"
            )

    def init(self) -> None:
        self._checked(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            PG_SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# fhir_service test server\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "max_connections = 60\n"
            )

    def start(self) -> None:
        self._checked(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-s",
            "start",
        )
        self.running = True

    def stop(self) -> None:
        self._checked("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-s", "stop")
        self.running = False

    def admin(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser, outside a transaction."""
        with psycopg.connect(
            host=str(self.socket_dir), user=PG_SUPERUSER, dbname=database, autocommit=True
        ) as conn:
            conn.execute(sql.encode())


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Start a private PostgreSQL server for the session and remove it afterwards."""
    bin_dir = find_postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (no pg_ctl/initdb in PATH or "
            "/usr/lib/postgresql/*/bin); install Debian 'postgresql' (scripts/system-deps.sh)"
        )
    run_as = _run_as()
    # Short path under /tmp: unix socket paths are limited to ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="fhir-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if run_as is not None:
        os.chown(root, *run_as)
    server = PgServer(bin_dir=bin_dir, root=root, run_as=run_as)
    uid, gid = (str(run_as[0]), str(run_as[1])) if run_as else ("-", "-")
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(bin_dir / "pg_ctl"), str(server.data_dir)]
        + [str(root), uid, gid],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives a signal sent to the test run's process group
    )
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        watchdog.wait(timeout=START_TIMEOUT_SECONDS)


@pytest.fixture(scope="session")
def _store_test_database(pg_server: PgServer) -> str:
    pg_server.admin(f'CREATE DATABASE "{TEST_DATABASE}"')
    return pg_server.url(TEST_DATABASE)


@pytest.fixture
def pg_database(pg_server: PgServer, _store_test_database: str) -> Iterator[str]:
    """URL of an empty database on the session server, wiped after the test.

    One database serves every test (``CREATE DATABASE`` per test costs far more than wiping):
    after each test the other sessions are ended and the ``public`` schema is recreated.
    """
    yield _store_test_database
    if not pg_server.running:  # a test that stopped the server must not break the others
        pg_server.start()
    for statement in (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        "DROP SCHEMA public CASCADE",
        "CREATE SCHEMA public",
    ):
        pg_server.admin(statement, database=TEST_DATABASE)
