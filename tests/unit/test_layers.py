"""The packages depend one way: api → operations/cds → engine; knowledge → engine; store and
security → nothing above them (no import cycle engine ↔ knowledge, store → cds)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fhir_service"

#: package → packages of fhir_service it must never import
FORBIDDEN = {
    "engine": {"api", "cds", "knowledge", "operations", "store", "security", "main", "runtime"},
    "knowledge": {"api", "cds", "operations", "store", "main", "runtime"},
    "store": {"api", "cds", "engine", "knowledge", "operations", "main", "runtime"},
    "security": {"api", "cds", "engine", "knowledge", "operations", "store", "main"},
    "cds": {"api", "operations", "main"},
    "operations": {"api", "cds", "main"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {
        name.split(".")[1] for name in names if name.startswith("fhir_service.") and "." in name
    }


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    wrong = {
        f"{path.relative_to(PACKAGE)} imports fhir_service.{name}"
        for path in (PACKAGE / package).rglob("*.py")
        for name in imported_packages(path) & FORBIDDEN[package]
    }
    assert not wrong, sorted(wrong)
