"""A YAML collector for FHIRPath cases, in the style of fhirpath-py's own test suite.

Every ``tests/fhirpath/*.yaml`` file holds ``tests:``, a list of cases or of groups
(``{"group: <name>": [cases]}``). A case has:

``desc``
    what it shows (the test id);
``expression``
    the FHIRPath, compiled by the service's ``FhirPathCompiler`` (strict parse, the engine's
    functions, memberOf() over the ValueSets of ``tests/fixtures/definitions-mini``);
``result``
    the expected collection, as JSON (dates as strings, Quantities as FHIR Quantities);
``inputfile``
    a file of ``resources/`` the expression is evaluated on (default: an empty object); when
    it is a Bundle, ``resolve()`` finds its resources;
``variables``
    ``%variables`` (JSON); ``%now`` and ``%today`` come from the pinned clock as in the engine;
``now``
    the pinned clock (default ``2026-12-01T12:00:00Z``): ``now()``/``today()`` read it;
``error``
    ``true`` when compiling or evaluating must fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhir_service.engine.apply.values import to_json
from fhir_service.engine.data.dataset import build_data_set
from fhir_service.engine.fhirpath import (
    EvaluationSession,
    FhirPathCompiler,
    fhir_date,
    fhir_datetime,
)
from fhir_service.engine.terminology.membership import Terminology

HERE = Path(__file__).resolve().parent
MINI = HERE.parent / "fixtures" / "definitions-mini"
DEFAULT_NOW = "2026-12-01T12:00:00Z"
CASE_KEYS = frozenset({"desc", "expression", "result", "inputfile", "variables", "now", "error"})


@cache
def compiler() -> FhirPathCompiler:
    value_sets = [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted(MINI.glob("ValueSet-*.json"))
    ]
    return FhirPathCompiler(Terminology(value_sets))


@cache
def input_file(name: str) -> str:
    return (HERE / "resources" / name).read_text(encoding="utf-8")


def evaluate(case: dict[str, Any]) -> list[Any]:
    """Compile and evaluate one case the way the engine does."""
    now = datetime.fromisoformat(str(case.get("now", DEFAULT_NOW)).replace("Z", "+00:00"))
    resource = json.loads(input_file(case["inputfile"])) if "inputfile" in case else {}
    env: dict[str, Any] = {"now": fhir_datetime(now), "today": fhir_date(now)}
    env.update(case.get("variables") or {})
    data = build_data_set([resource] + [v for v in env.values() if isinstance(v, dict | list)])
    compiled = compiler().compile(case["expression"])
    session = EvaluationSession(now, data.resolve, data.resolve_scoped)
    return [to_json(v) for v in compiled.evaluate(resource, env, session)]


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix == ".yaml" and file_path.parent == HERE:
        return YamlFile.from_parent(parent, path=file_path)
    return None


class YamlFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        content = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        seen: set[str] = set()
        for group, case in _cases(content.get("tests") or []):
            name = f"{group}: {case['desc']}" if group else str(case["desc"])
            assert name not in seen, f"{self.path.name}: duplicate case {name!r}"
            seen.add(name)
            yield YamlCase.from_parent(self, name=name, case=case)


def _cases(items: list[Any], group: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for item in items:
        if isinstance(item, dict) and len(item) == 1 and next(iter(item)).startswith("group:"):
            key = next(iter(item))
            yield from _cases(item[key], key.removeprefix("group:").strip())
        else:
            yield group, item


class YamlCase(pytest.Item):
    def __init__(self, *, case: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        unknown = set(self.case) - CASE_KEYS
        assert not unknown, f"unknown keys {sorted(unknown)}"
        assert "result" in self.case or self.case.get("error"), "a case needs result or error"
        if self.case.get("error"):
            with pytest.raises(Exception):  # noqa: B017,PT011 - any failure is the expectation
                evaluate(self.case)
            return
        assert evaluate(self.case) == self.case["result"]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        case = self.case
        return (
            f"expression: {case['expression']}\n"
            f"expected:   {case.get('result', 'an error')}\n"
            f"failure:    {excinfo.exconly()}"
        )

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"fhirpath: {self.name}"
