"""Session fixtures for the integration tests: SEKMET with the example patients loaded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration._servers import (
    ROOT,
    CannotInstall,
    Server,
    load_transaction,
    sekmet_executable,
    sekmet_server,
)

PATIENTS_DIR = ROOT / "examples" / "patients"


def example_bundles() -> dict[str, dict[str, Any]]:
    """``examples/patients/<name>.json`` by name."""
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(PATIENTS_DIR.glob("*.json"))
    }


@dataclass
class Ehr:
    """A running SEKMET with every example patient loaded."""

    server: Server
    #: example name → ``{"Patient": id, "Encounter": id, ...}`` (first resource of each type)
    ids: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.server.base

    @property
    def origin(self) -> str:
        return self.base.rsplit("/fhir", 1)[0]


@pytest.fixture(scope="session")
def sekmet_bin() -> Path:
    try:
        return sekmet_executable()
    except CannotInstall as exc:
        pytest.skip(f"SEKMET (sekmet-fhir) cannot be installed into .venv-ehr: {exc}")


def start_ehr(workdir: Path, sekmet: Path, **options: Any) -> Iterator[Ehr]:
    with sekmet_server(workdir, sekmet, **options) as server:
        ehr = Ehr(server)
        made: dict[str, dict[str, str]] = {}
        for name, bundle in example_bundles().items():
            made[name] = load_transaction(server.base, bundle)
            ids: dict[str, str] = {}
            for ref in made[name].values():
                rtype, rid = ref.split("/", 1)
                ids.setdefault(rtype, rid)
            ehr.ids[name] = ids
        # Loading again creates nothing: every entry carries ifNoneExist.
        for name, bundle in example_bundles().items():
            assert load_transaction(server.base, bundle) == made[name], name
        yield ehr


@pytest.fixture(scope="session")
def ehr(sekmet_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ehr]:
    yield from start_ehr(tmp_path_factory.mktemp("sekmet"), sekmet_bin)
