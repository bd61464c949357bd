"""The loader refuses a bad knowledge base, naming the file and the problem (authoring.md).

Each ``tests/fixtures/definitions-bad-<problem>/`` holds two or three good files of the tiny
``definitions-mini`` base plus one bad file. ``load_definitions``, ``build_runtime`` and
``create_app`` must all refuse it with a ``KnowledgeError``. The real ``definitions/`` must
load, and every file must round-trip through its R4B model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_service import fhir
from fhir_service.engine.fhirpath import FhirPathCompiler
from fhir_service.knowledge.loader import (
    KNOWLEDGE_TYPES,
    Artifact,
    KnowledgeError,
    check_unique,
    load_definitions,
)
from fhir_service.main import create_app
from fhir_service.runtime import build_runtime
from fhir_service.settings import DEFAULT_DEFINITIONS, Settings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MINI = FIXTURES / "definitions-mini"

#: fixture folder suffix → (file named in the message, words of the problem)
BAD_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "json": ("PlanDefinition-bad.json", ("not valid JSON",)),
    "not-knowledge": ("Patient-p1.json", ("not a knowledge resource",)),
    "unknown-element": ("PlanDefinition-bad.json", ("invalid PlanDefinition", "colour")),
    "r4b-element": ("PlanDefinition-bad.json", ("not in FHIR R4", "subjectCanonical")),
    "file-name": ("PlanDefinition-other.json", ("file name must be PlanDefinition-<id>.json",)),
    "url": ("PlanDefinition-bad.json", ("url must be", "/PlanDefinition/bad")),
    "dangling-definition": (
        "PlanDefinition-bad.json",
        ("definitionCanonical", "ActivityDefinition/missing", "does not resolve"),
    ),
    "dangling-library": (
        "PlanDefinition-bad.json",
        ("library[0]", "Library/missing", "does not resolve"),
    ),
    "unknown-valueset": (
        "PlanDefinition-bad.json",
        ("value set", "ValueSet/vs-missing", "does not resolve"),
    ),
    "parse": ("PlanDefinition-bad.json", ("condition[0]", "does not parse")),
    "undefined-variable": ("PlanDefinition-bad.json", ("undefined variable", "noSuchVariable")),
    "variable-twice": (
        "Library-mini-other.json",
        ("already defined by another Library", "Library-mini-common.json", "recentSpasm"),
    ),
    "variable-cycle": ("PlanDefinition-bad.json", ("%loopA depends on itself",)),
    "language": ("PlanDefinition-bad.json", ("text/cql-identifier", "not supported")),
    "kind": ("ActivityDefinition-bad.json", ("kind 'Observation'", "request resource type")),
    "dynamic-path": ("PlanDefinition-bad.json", ("dynamicValue[0].path", "not a simple path")),
    "nested-cycle": ("PlanDefinition-bad.json", ("lead back to itself",)),
}


def _settings(tmp_path: Path, definitions: Path) -> Settings:
    return Settings(
        auth="off",
        database_url=f"sqlite:///{tmp_path / 'test.db'}",
        definitions_dir=definitions,
    )


def _assert_names(error: KnowledgeError, file: str, words: tuple[str, ...]) -> None:
    message = str(error)
    matching = [p for p in error.problems if p.startswith(f"{file}:")]
    assert matching, f"no problem names {file}: {message}"
    assert any(all(w in p for w in words) for p in matching), message


def test_every_bad_fixture_folder_has_a_case() -> None:
    folders = {p.name.removeprefix("definitions-bad-") for p in FIXTURES.glob("definitions-bad-*")}
    assert folders == set(BAD_CASES)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_load_definitions_refuses_a_bad_knowledge_base(case: str) -> None:
    file, words = BAD_CASES[case]
    with pytest.raises(KnowledgeError) as caught:
        load_definitions(FIXTURES / f"definitions-bad-{case}")
    _assert_names(caught.value, file, words)
    assert file in str(caught.value)


@pytest.mark.parametrize("case", ["json", "undefined-variable", "unknown-valueset", "parse"])
def test_build_runtime_and_create_app_refuse_to_start(case: str, tmp_path: Path) -> None:
    file, words = BAD_CASES[case]
    settings = _settings(tmp_path, FIXTURES / f"definitions-bad-{case}")
    with pytest.raises(KnowledgeError) as caught:
        build_runtime(settings)
    _assert_names(caught.value, file, words)
    with pytest.raises(KnowledgeError) as caught_app:
        create_app(settings)
    _assert_names(caught_app.value, file, words)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="definitions directory not found"):
        load_definitions(tmp_path / "nope")


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    for source in ("definitions-bad-json", "definitions-bad-kind"):
        for path in (FIXTURES / source).glob("*.json"):
            (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(KnowledgeError) as caught:
        load_definitions(tmp_path)
    _assert_names(caught.value, "PlanDefinition-bad.json", ("not valid JSON",))
    _assert_names(caught.value, "ActivityDefinition-bad.json", ("request resource type",))


def test_duplicate_url_version_is_refused() -> None:
    """File name = id and url = base/Type/id make a duplicate impossible through files, so
    the check that guards it is exercised directly."""
    resource: dict[str, Any] = {"resourceType": "ValueSet", "id": "x"}
    url = "http://example.org/fhir/muscle-spasm/ValueSet/x"
    first = Artifact("ValueSet", "x", url, "0.1.0", resource, "ValueSet-x.json")
    second = Artifact("ValueSet", "x", url, "0.1.0", resource, "copy/ValueSet-x.json")
    other_version = Artifact("ValueSet", "x", url, "0.2.0", resource, "v2/ValueSet-x.json")
    problems = check_unique([first, second, other_version])
    assert problems == [
        f"copy/ValueSet-x.json: url|version {url}|0.1.0 already defined by ValueSet-x.json"
    ]


def _mini_copy(tmp_path: Path) -> Path:
    for path in MINI.glob("*.json"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


def _edit(folder: Path, name: str, change: Any) -> None:
    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_variable_defined_twice_in_one_library_is_refused(tmp_path: Path) -> None:
    folder = _mini_copy(tmp_path)

    def twice(lib: dict[str, Any]) -> None:
        lib["extension"].append(lib["extension"][0])

    _edit(folder, "Library-mini-common.json", twice)
    with pytest.raises(KnowledgeError) as caught:
        load_definitions(folder)
    _assert_names(
        caught.value, "Library-mini-common.json", ("defined more than once", "validConditions")
    )


def test_plan_variable_may_not_shadow_a_library_name(tmp_path: Path) -> None:
    folder = _mini_copy(tmp_path)

    def shadow(plan: dict[str, Any]) -> None:
        plan["extension"] = [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/variable",
                "valueExpression": {
                    "name": "recentSpasm",
                    "language": "text/fhirpath",
                    "expression": "1",
                },
            }
        ]

    _edit(folder, "PlanDefinition-mini-rule.json", shadow)
    with pytest.raises(KnowledgeError) as caught:
        load_definitions(folder)
    _assert_names(caught.value, "PlanDefinition-mini-rule.json", ("by a Library", "recentSpasm"))


def test_activity_definition_variables_are_checked(tmp_path: Path) -> None:
    folder = _mini_copy(tmp_path)

    def undefined(ad: dict[str, Any]) -> None:
        ad["dynamicValue"][0]["expression"]["expression"] = "%notDefinedAnywhere"

    _edit(folder, "ActivityDefinition-mini-referral.json", undefined)
    with pytest.raises(KnowledgeError) as caught:
        load_definitions(folder)
    _assert_names(
        caught.value,
        "ActivityDefinition-mini-referral.json",
        ("undefined variable", "notDefinedAnywhere"),
    )


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("%recentSpasm and", ("does not parse",)),
        ("'the seed's text' + 'x'", ("does not parse", "seed's")),
        ("%Condition.where(code = ).exists(", ("does not parse",)),
        ("%Condition.foo()", ("foo() is not supported",)),
        ("%Condition.where()", ("where() takes 1 argument",)),
    ],
)
def test_expressions_that_fhirpathpy_would_silently_recover_are_refused(
    tmp_path: Path, expression: str, words: tuple[str, ...]
) -> None:
    folder = _mini_copy(tmp_path)

    def bad(plan: dict[str, Any]) -> None:
        plan["action"][3]["condition"][0]["expression"]["expression"] = expression

    _edit(folder, "PlanDefinition-mini-rule.json", bad)
    with pytest.raises(KnowledgeError) as caught:
        load_definitions(folder)
    _assert_names(caught.value, "PlanDefinition-mini-rule.json", ("action[3]", *words))


def test_the_mini_fixture_loads() -> None:
    artifacts, terminology, compiler = load_definitions(MINI)
    assert {a.source for a in artifacts} == {p.name for p in MINI.glob("*.json")}
    assert "http://example.org/fhir/muscle-spasm/ValueSet/vs-mini-spasm" in terminology
    assert compiler.compiled_count > 0


def test_the_real_definitions_load() -> None:
    artifacts, _terminology, compiler = load_definitions(DEFAULT_DEFINITIONS)
    types = {a.resource_type for a in artifacts}
    assert types <= set(KNOWLEDGE_TYPES)
    assert {"PlanDefinition", "ActivityDefinition", "Library", "ValueSet"} <= types
    assert compiler.compiled_count > 0


DEFINITION_FILES = sorted(DEFAULT_DEFINITIONS.glob("*.json"))


@pytest.mark.parametrize("path", DEFINITION_FILES, ids=[p.name for p in DEFINITION_FILES])
def test_definition_round_trips_through_its_r4b_model(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = fhir.validate_resource(data)
    dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    again = fhir.validate_resource(dumped)
    assert again.model_dump(mode="json", by_alias=True, exclude_none=True) == dumped
    assert dumped["resourceType"] == data["resourceType"]
    assert dumped["id"] == data["id"]
    assert dumped.get("url") == data.get("url")


def test_compiler_rejects_what_fhirpathpy_would_accept() -> None:
    compiler = FhirPathCompiler()
    for text in ("1 +", "a..b", "a b c", "((1)", "%x.exists() and"):
        with pytest.raises(ValueError, match="does not parse"):
            compiler.compile(text)
    assert compiler.compiled_count == 0


def test_latest_version_wins_by_canonical() -> None:
    from fhir_service.engine.terminology.membership import Terminology
    from fhir_service.knowledge.repository import KnowledgeBase, version_key

    url = "http://example.org/fhir/muscle-spasm/PlanDefinition/x"
    arts = [
        Artifact("PlanDefinition", f"x{v}", url, v, {"id": f"x{v}"}, f"x{v}.json")
        for v in ("0.9.0", "0.10.0", "0.2.0")
    ]
    knowledge = KnowledgeBase(arts, Terminology(), FhirPathCompiler())
    latest = knowledge.by_canonical(url)
    assert latest is not None and latest.version == "0.10.0"
    pinned = knowledge.by_canonical(f"{url}|0.9.0")
    assert pinned is not None and pinned.version == "0.9.0"
    assert knowledge.by_canonical(f"{url}|1.0.0") is None
    assert knowledge.by_canonical(url, "ValueSet") is None
    assert version_key("1.0.0-rc1") < version_key("1.0.1")
    assert version_key(None) < version_key("0.0.1")


def test_a_warning_or_critical_action_must_offer_override_reasons(tmp_path: Path) -> None:
    """clinical-rules R2.6: every warning/critical card offers the guideline's override reasons."""
    folder = _mini_copy(tmp_path)

    def without(plan: dict[str, Any]) -> None:
        del plan["action"][0]["extension"]

    _edit(folder, "PlanDefinition-mini-rule.json", without)
    with pytest.raises(KnowledgeError) as caught:
        load_definitions(folder)
    _assert_names(
        caught.value, "PlanDefinition-mini-rule.json", ("warning or critical", "override-reasons")
    )


def test_override_reasons_must_name_a_code_system(tmp_path: Path) -> None:
    folder = _mini_copy(tmp_path)

    def elsewhere(plan: dict[str, Any]) -> None:
        plan["action"][0]["extension"][0]["valueCanonical"] = "http://example.org/nowhere"

    _edit(folder, "PlanDefinition-mini-rule.json", elsewhere)
    with pytest.raises(KnowledgeError) as caught:
        load_definitions(folder)
    _assert_names(caught.value, "PlanDefinition-mini-rule.json", ("override-reasons", "CodeSystem"))
