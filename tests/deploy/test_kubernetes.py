"""Kubernetes manifests (deploy/kubernetes/base, a kustomize base): valid against the Kubernetes
schemas offline (kubernetes-validate ships them; run with the network cut off where
``unshare`` allows), what the service needs (probes, security context, writable emptyDirs
only, PostgreSQL from a Secret, egress limited to DNS, the database and the EHR servers), and
no failed checkov check (skips are annotated in the manifests with their reasons).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
KUBERNETES_VERSION = "1.37.0"
TOOLS = ROOT / ".venv-tools"
CHECKOV = TOOLS / "bin" / "checkov"


def manifests() -> dict[str, dict[str, Any]]:
    """``kind`` → the manifest of that kind (one resource per file)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(BASE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert len(docs) == 1, path
        out[docs[0]["kind"]] = docs[0]
    return out


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "fhir-service"
    assert set(manifests()) == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }


@pytest.mark.parametrize("kind", sorted(manifests()))
def test_manifest_is_valid_against_the_kubernetes_schema(kind: str) -> None:
    kubernetes_validate.validate(manifests()[kind], KUBERNETES_VERSION, strict=True)


def _offline_prefix() -> list[str]:
    """``unshare --net`` (no network at all) where this process may use it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], check=False).returncode == 0:
        return [unshare, "--net"]
    return []


def test_schemas_need_no_network() -> None:
    """The CLI, as docs/deployment.md runs it, with the network namespace empty."""
    prefix = _offline_prefix()
    if not prefix:
        pytest.skip("unshare --net not permitted here (the Python API test above still ran)")
    files = [str(BASE / f"{name}.yaml") for name in ("deployment", "networkpolicy", "hpa")]
    cli = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run(
        [*prefix, str(cli), "--strict", "-k", KUBERNETES_VERSION, *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == 3, done.stdout


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifests()["Deployment"]["spec"]["template"]["spec"]
    return spec


def test_deployment_probes_resources_and_security_context() -> None:
    spec = pod_spec()
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert "args" not in container and "command" not in container  # the image's entry point
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["runAsNonRoot"] is True and context["runAsUser"] >= 10000
    assert context["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False


def test_the_app_writes_only_to_empty_dirs() -> None:
    spec = pod_spec()
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    env = {e["name"]: e for e in container["env"]}
    writable = {}
    for mount in container["volumeMounts"]:
        if not mount.get("readOnly"):
            assert "emptyDir" in volumes[mount["name"]], mount
            writable[mount["mountPath"]] = mount["name"]
    metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]["value"]
    assert metrics_dir in writable  # the workers' metrics files
    assert "/tmp" in writable
    assert int(env["FHIR_SERVICE_WORKERS"]["value"]) == int(container["resources"]["limits"]["cpu"])


def test_database_url_is_postgresql_from_a_secret() -> None:
    (container,) = pod_spec()["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["FHIR_SERVICE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    secret = manifests()["Secret"]
    assert ref["name"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]].startswith("postgresql+psycopg://")
    config = manifests()["ConfigMap"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    issuers = json.loads(config["data"]["trusted-issuers.json"])
    assert all(set(binding) in ({"jku"}, {"jwks"}) for binding in issuers.values())
    assert "FHIR_SERVICE_DATABASE_URL" not in config["data"]


def test_selectors_match_the_pods() -> None:
    m = manifests()
    labels = m["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        m["Deployment"]["spec"]["selector"]["matchLabels"],
        m["Service"]["spec"]["selector"],
        m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        m["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    target = m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", m["Deployment"]["metadata"]["name"])
    assert m["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # the PDB can hold


def test_network_policy_egress_only_dns_database_and_ehr_servers() -> None:
    policy = manifests()["NetworkPolicy"]["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    kinds = []
    for rule in policy["egress"]:
        assert rule.get("to"), "an egress rule without 'to' would allow every destination"
        ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert ports == {("TCP", 443)}
                assert not peer["ipBlock"]["cidr"].startswith("0.0.0.0")
                assert not peer["ipBlock"].get("except")
                kinds.append("ehr")
            elif ports <= {("UDP", 53), ("TCP", 53)}:
                assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                kinds.append("dns")
            else:
                assert ports == {("TCP", 5432)}
                assert "podSelector" in peer and "namespaceSelector" not in peer
                kinds.append("database")
    assert sorted(set(kinds)) == ["database", "dns", "ehr"]
    for rule in policy["ingress"]:
        assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("TCP", 8000)}


def checkov() -> Path:
    """checkov from its own pinned venv (.venv-tools; scripts/tools-deps.sh)."""
    if not CHECKOV.exists():
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "tools-deps.sh")],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if done.returncode != 0 or not CHECKOV.exists():
            pytest.skip(f"checkov could not be installed: {(done.stderr or done.stdout)[-800:]}")
    return CHECKOV


@pytest.mark.slow
def test_checkov_finds_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "CKV_"))}
    env["LOG_LEVEL"] = "WARNING"
    done = subprocess.run(
        [*_offline_prefix(), str(checkov()), "--quiet", "--compact", "--skip-download"]
        + ["--framework", "kubernetes", "-d", str(BASE), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        (c["check_id"], c.get("check_name"), c.get("resource"))
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert failed == [], failed
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert passed > 50, done.stdout[-2000:]
    skipped = [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]
    for check in skipped:  # every skip says why
        assert len(check.get("check_result", {}).get("suppress_comment", "")) > 20, check
