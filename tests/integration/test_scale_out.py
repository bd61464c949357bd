"""The compose topology without Docker: deploy/nginx.conf in front of two replicas of the
service (uvicorn, started at the same moment on an empty database) sharing one PostgreSQL.

What docs/deployment.md claims is checked here: any replica can take any request, a JWT ``jti``
accepted by one replica is refused by the other, feedback sent to one replica is joined to the
card another one issued (and is idempotent across them), and nginx passes the service's own
answers (CORS, 401, 413 OperationOutcomes) through untouched.

Needs nginx and the PostgreSQL server binaries (``make pytest`` installs PostgreSQL through
scripts/system-deps.sh); skips with the reason when either is missing.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.integration._servers import (
    Server,
    free_port,
    http_json,
    spawn,
    spawn_uvicorn,
    stop,
    wait_ready,
)
from tests.test_deployment import local_nginx_conf

pytestmark = pytest.mark.slow

ISS = "https://ehr.scale-out.test"
KID = "scale-out-1"
KEY = ec.generate_private_key(ec.SECP384R1())
SERVICE = "muscle-spasm-patient-view"


def postgres_bin_dir() -> Path | None:
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found and (Path(found).resolve().parent / "initdb").exists():
            return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()],
    )
    return next((d for d in reversed(versions) if (d / "pg_ctl").exists()), None)


def pg_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as ``postgres`` (or ``nobody``)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("running as root with neither a 'postgres' nor a 'nobody' user")


def pg_run(bin_dir: Path, root: Path, *argv: str) -> None:
    user = pg_user()
    done = subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        cwd=root,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    )
    if done.returncode != 0:
        log = root / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}{tail}")


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a unix socket (no TCP port) with an empty database."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (scripts/system-deps.sh installs them)")
    # a short path: unix socket paths are limited to about 107 bytes
    root = Path(tempfile.mkdtemp(prefix="fhir-pg-so-", dir="/tmp"))
    user = pg_user()
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    started = False
    try:
        pg_run(bin_dir, root, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust",
               "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{root}'\nfsync = off\n")
        pg_run(bin_dir, root, "pg_ctl", "-D", str(data), "-l", str(root / "server.log"),
               "-w", "-t", "30", "-s", "start")  # fmt: skip
        started = True
        with psycopg.connect(
            host=str(root), user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(b'CREATE DATABASE "scale_out"')
        yield f"postgresql+psycopg://postgres@/scale_out?host={root}"
    finally:
        if started:
            pg_run(bin_dir, root, "pg_ctl", "-D", str(data), "-m", "fast", "-w", "-s", "stop")
        shutil.rmtree(root, ignore_errors=True)


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        pytest.skip("nginx not installed")
    return found


@dataclass
class Cluster:
    public: str  # nginx, = FHIR_SERVICE_PUBLIC_BASE_URL of both replicas
    replicas: list[Server]
    nginx: Server


@pytest.fixture(scope="module")
def cluster(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nginx = nginx_binary()
    tmp = tmp_path_factory.mktemp("scale-out")
    public_key = ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True) | {"kid": KID}
    issuers = tmp / "issuers.json"
    issuers.write_text(json.dumps({ISS: {"jwks": {"keys": [public_key]}}}), encoding="utf-8")
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = {
        "auth": "jwt",
        "trusted_issuers": str(issuers),
        "database_url": database_url,
        "public_base_url": public,
        "fhir_server_allowlist": "",
    }
    # both at once, on an empty database: they race to create the schema
    replicas = [spawn_uvicorn(tmp / f"replica-{i}", **settings) for i in (1, 2)]
    proxy: Server | None = None
    try:
        for replica in replicas:
            wait_ready(replica)
        ports = [int(r.base.rsplit(":", 1)[1]) for r in replicas]
        conf = local_nginx_conf(tmp, ports, port)
        proxy = spawn(
            [nginx, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
            cwd=tmp,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            log=tmp / "nginx.log",
            base=public,
        )
        wait_ready(proxy)
        yield Cluster(public, replicas, proxy)
    finally:
        for server in ([proxy] if proxy else []) + replicas:
            stop(server)


def token(aud: str) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, KEY, algorithm="ES384", headers={"kid": KID})


def call(base: str, path: str, body: Any, bearer: str, method: str = "POST") -> tuple[int, Any]:
    return http_json(
        method,
        base + path,
        body,
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )


def rf01_call(cluster: Cluster) -> dict[str, Any]:
    """A patient-view call for a patient with a spasm and a recent neck injury: every prefetch
    key of discovery is sent (``null`` = no data) so that no replica calls out."""

    def condition(cid: str, code: str, onset: str) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
            "subject": {"reference": "Patient/p1"},
            "onsetDateTime": onset,
        }

    conditions = [
        condition("c1", "45352006", "2026-11-28"),
        condition("c2", "90460009", "2026-11-20"),
    ]
    aud = f"{cluster.public}/cds-services"
    status, discovery = call(cluster.public, "/cds-services", None, token(aud), "GET")
    assert status == 200, discovery
    templates = next(s for s in discovery["services"] if s["id"] == SERVICE)["prefetch"]
    prefetch: dict[str, Any] = dict.fromkeys(templates)
    for key, template in templates.items():
        if template.startswith("Condition?"):
            prefetch[key] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": c} for c in conditions],
            }
        elif template.startswith("Patient/"):
            prefetch[key] = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"}
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/x", "patientId": "p1"},
        "prefetch": prefetch,
    }


def test_both_replicas_take_requests_through_nginx(cluster: Cluster) -> None:
    for _ in range(12):
        status, body = http_json("GET", f"{cluster.public}/fhir/metadata")
        assert status == 200 and body["fhirVersion"] == "4.0.1"
    time.sleep(0.5)  # let nginx flush its access log
    upstreams = {
        line.split("upstream=", 1)[1].split()[0]
        for line in cluster.nginx.output().splitlines()
        if "/fhir/metadata" in line and "upstream=" in line
    }
    assert upstreams == {r.base.removeprefix("http://") for r in cluster.replicas}


def test_a_jti_is_accepted_once_across_replicas(cluster: Cluster) -> None:
    aud = f"{cluster.public}/cds-services"
    first, second = cluster.replicas
    once = token(aud)
    assert call(first.base, "/cds-services", None, once, "GET")[0] == 200
    assert call(second.base, "/cds-services", None, once, "GET")[0] == 401
    via_nginx = token(aud)
    assert call(cluster.public, "/cds-services", None, via_nginx, "GET")[0] == 200
    assert call(cluster.public, "/cds-services", None, via_nginx, "GET")[0] == 401


def test_feedback_is_joined_and_idempotent_across_replicas(cluster: Cluster) -> None:
    first, second = cluster.replicas
    service_path = f"/cds-services/{SERVICE}"
    status, answer = call(
        first.base, service_path, rf01_call(cluster), token(cluster.public + service_path)
    )
    assert status == 200, answer
    card = next(c for c in answer["cards"] if c["source"]["topic"]["code"] == "RF-01")
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-12-01T12:05:00Z",
                "overrideReason": {
                    "reason": {"system": "http://example.org/override", "code": "not-relevant"}
                },
            }
        ]
    }
    path = f"{service_path}/feedback"
    status, stored = call(second.base, path, feedback, token(cluster.public + path))
    assert status == 200, stored
    assert stored == {"stored": 1, "duplicates": 0, "unmatched": 0}
    status, again = call(first.base, path, feedback, token(cluster.public + path))
    assert status == 200 and again == {"stored": 0, "duplicates": 1, "unmatched": 0}
    path = f"{service_path}/analytics"
    status, analytics = call(second.base, path, None, token(cluster.public + path), "GET")
    assert status == 200, analytics
    rf01 = next(r for r in analytics["rules"] if r["rule"] == "RF-01")
    assert rf01["issued"] >= 1 and rf01["overridden"] >= 1


def test_nginx_passes_the_service_answers_through(cluster: Cluster) -> None:
    preflight = http_json(
        "OPTIONS",
        f"{cluster.public}/cds-services/{SERVICE}",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert 200 <= preflight[0] < 300
    # 401 from the service (not from nginx), and a 413 OperationOutcome for a body between the
    # service's 5 MiB cap and nginx's 6 MiB client_max_body_size
    status, body = call(cluster.public, f"/cds-services/{SERVICE}", rf01_call(cluster), "not-a-jwt")
    assert status == 401
    big = {
        "resourceType": "Parameters",
        "parameter": [{"name": "x", "valueString": "a" * (5 * 1024 * 1024 + 10)}],
    }
    status, body = http_json(
        "POST", f"{cluster.public}/fhir/Questionnaire/muscle-spasm-assessment/$populate", big
    )
    assert status == 413
    assert body["resourceType"] == "OperationOutcome"
