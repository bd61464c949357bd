"""QuestionnaireResponse helpers: finding answers, ``enableWhen``, and validation.

Shared by ``$populate`` (which drops answers of disabled items), ``$extract`` (which validates
the response first) and the CDS rules (which read an Assessment QR's answers).

Answers are found by ``linkId`` at any depth — under groups, under other items, under answers,
or at the top level — as the assessment rules of ``docs/authoring.md`` require; a
response therefore does not have to mirror the Questionnaire's group structure.

Validation follows SDC "Validating QuestionnaireResponses"
(https://hl7.org/fhir/uv/sdc/behavior.html) and R4
https://hl7.org/fhir/R4/questionnaireresponse.html: every answer belongs to a known question,
has the value type of that question's ``type``, belongs to its ``answerOption`` list, meets the
``minValue``/``maxValue``/``maxLength`` constraints and ``repeats``; an answer option flagged
``questionnaire-optionExclusive`` (e.g. "none") is not combined with other answers (R5/SDC
extension, clinical-rules R2.7); answers are given only to
enabled items; ``required`` items are answered when the status is ``completed``/``amended``
(an ``in-progress`` response may still be incomplete).

``enableWhen`` follows R4 (``questionnaire-enable-operator``): ``exists`` compares answer
presence to a boolean; ``=`` is true when at least one answer equals; ``!=`` when no answer
equals; ``>``, ``<``, ``>=``, ``<=`` when at least one answer compares so. ``enableBehavior``
``all`` (the default) or ``any`` combines several conditions. An item is disabled when its parent
is; a question that is itself disabled counts as unanswered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fhir_service import fhir
from fhir_service.errors import BusinessRuleError, InvalidRequest, Issue

MIN_VALUE_URL = "http://hl7.org/fhir/StructureDefinition/minValue"
OPTION_EXCLUSIVE_URL = "http://hl7.org/fhir/StructureDefinition/questionnaire-optionExclusive"
MAX_VALUE_URL = "http://hl7.org/fhir/StructureDefinition/maxValue"
COMPLETE_STATUSES = frozenset({"completed", "amended"})
#: R4 ``QuestionnaireResponse.status`` (required binding ``questionnaire-answers-status``).
STATUSES = frozenset({"in-progress", "completed", "amended", "entered-in-error", "stopped"})

#: The answer ``value[x]`` each item type takes (choice types also follow their answerOption).
VALUE_KEYS: dict[str, tuple[str, ...]] = {
    "boolean": ("valueBoolean",),
    "decimal": ("valueDecimal",),
    "integer": ("valueInteger",),
    "date": ("valueDate",),
    "dateTime": ("valueDateTime",),
    "time": ("valueTime",),
    "string": ("valueString",),
    "text": ("valueString",),
    "url": ("valueUri",),
    "attachment": ("valueAttachment",),
    "reference": ("valueReference",),
    "quantity": ("valueQuantity",),
    "choice": ("valueCoding",),
    "open-choice": ("valueCoding", "valueString"),
}
NO_ANSWER_TYPES = frozenset({"group", "display"})
DATE_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


# --------------------------------------------------------------------------------------------
# The Questionnaire side


@dataclass(frozen=True)
class QuestionnaireIndex:
    """A Questionnaire's items by ``linkId``, with their parent and FHIRPath location."""

    items: dict[str, dict[str, Any]]
    parents: dict[str, str | None]
    paths: dict[str, str]

    def item(self, link_id: str) -> dict[str, Any] | None:
        return self.items.get(link_id)


def index_questionnaire(questionnaire: Mapping[str, Any]) -> QuestionnaireIndex:
    """Index every item of ``questionnaire`` (any depth) by ``linkId``."""
    items: dict[str, dict[str, Any]] = {}
    parents: dict[str, str | None] = {}
    paths: dict[str, str] = {}

    def walk(children: Any, parent: str | None, path: str) -> None:
        for index, item in enumerate(children or ()):
            if not isinstance(item, dict) or not isinstance(item.get("linkId"), str):
                continue
            here = f"{path}.item[{index}]"
            items[item["linkId"]] = item
            parents[item["linkId"]] = parent
            paths[item["linkId"]] = here
            walk(item.get("item"), item["linkId"], here)

    walk(questionnaire.get("item"), None, "Questionnaire")
    return QuestionnaireIndex(items, parents, paths)


def canonical_of(questionnaire: Mapping[str, Any]) -> str:
    """``url|version`` of a Questionnaire (``url`` alone when it has no version)."""
    url = str(questionnaire.get("url", ""))
    version = questionnaire.get("version")
    return f"{url}|{version}" if version else url


def refers_to(canonical: Any, questionnaire: Mapping[str, Any]) -> bool:
    """True when ``canonical`` names ``questionnaire``: its url, with or without ``|version``.

    Any version of the url counts (``docs/authoring.md``, "Files and identity").
    """
    if not isinstance(canonical, str) or not canonical:
        return False
    return canonical.partition("|")[0] == questionnaire.get("url")


def require_questionnaire(qr: Mapping[str, Any], questionnaire: Mapping[str, Any]) -> None:
    """Raise ``BusinessRuleError`` (422) unless ``qr`` answers ``questionnaire``."""
    if not refers_to(qr.get("questionnaire"), questionnaire):
        raise BusinessRuleError(
            f"QuestionnaireResponse.questionnaire {qr.get('questionnaire')!r} is not "
            f"{questionnaire.get('url')} (with or without |version)",
            expression=("QuestionnaireResponse.questionnaire",),
        )


# --------------------------------------------------------------------------------------------
# The response side


def parse_response(data: Any) -> dict[str, Any]:
    """Check that ``data`` is a structurally valid R4 QuestionnaireResponse.

    Raises:
        InvalidRequest: (400) for another resource type or an invalid structure.
    """
    if not isinstance(data, dict) or data.get("resourceType") != "QuestionnaireResponse":
        found = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
        raise InvalidRequest(f"expected a QuestionnaireResponse, got {found!r}")
    try:
        fhir.validate_resource(data)
    except ValueError as exc:
        raise InvalidRequest(f"invalid QuestionnaireResponse: {exc}") from None
    if data.get("status") not in STATUSES:
        raise InvalidRequest(
            f"QuestionnaireResponse.status {data.get('status')!r} is not one of "
            f"{', '.join(sorted(STATUSES))}",
            expression=("QuestionnaireResponse.status",),
        )
    return data


def iter_items(qr: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, item)`` for every item of ``qr`` at any depth, in document order.

    Locations are FHIRPath-style, e.g. ``QuestionnaireResponse.item[0].answer[1].item[0]``.
    """

    def walk(items: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for index, item in enumerate(items or ()):
            if not isinstance(item, dict):
                continue
            here = f"{path}.item[{index}]"
            yield here, item
            yield from walk(item.get("item"), here)
            for a_index, answer in enumerate(item.get("answer") or ()):
                if isinstance(answer, dict):
                    yield from walk(answer.get("item"), f"{here}.answer[{a_index}]")

    yield from walk(qr.get("item"), "QuestionnaireResponse")


def answer_value(answer: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The ``(value[x] key, value)`` of an answer, or None when it carries no value."""
    for key, value in answer.items():
        if key.startswith("value") and key != "value":
            return key, value
    return None


def answers_by_link_id(qr: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every answer that carries a value, grouped by its item's ``linkId`` (any depth)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _path, item in iter_items(qr):
        link_id = item.get("linkId")
        if not isinstance(link_id, str):
            continue
        for answer in item.get("answer") or ():
            if isinstance(answer, dict) and answer_value(answer) is not None:
                out.setdefault(link_id, []).append(answer)
    return out


def find_answers(qr: Mapping[str, Any], link_id: str) -> list[Any]:
    """The answer values (``value[x]`` contents) of ``link_id``, at any depth of ``qr``."""
    values = []
    for answer in answers_by_link_id(qr).get(link_id, []):
        found = answer_value(answer)
        if found is not None:
            values.append(found[1])
    return values


# --------------------------------------------------------------------------------------------
# enableWhen


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value))
    if isinstance(value, Mapping) and "value" in value:
        return _number(value["value"])
    return None


def values_equal(actual: Any, expected: Any) -> bool:
    """Answer equality as enableWhen and answerOption use it (Coding: system and code)."""
    if isinstance(expected, Mapping) and "code" in expected:
        if not isinstance(actual, Mapping) or actual.get("code") != expected.get("code"):
            return False
        systems = (actual.get("system"), expected.get("system"))
        return None in systems or systems[0] == systems[1]
    if isinstance(expected, Mapping) and "reference" in expected:
        return isinstance(actual, Mapping) and actual.get("reference") == expected["reference"]
    left, right = _number(actual), _number(expected)
    if left is not None and right is not None:
        return left == right
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    return bool(actual == expected)


def _compare(actual: Any, expected: Any) -> int | None:
    left, right = _number(actual), _number(expected)
    if left is not None and right is not None:
        return (left > right) - (left < right)
    if isinstance(actual, str) and isinstance(expected, str):
        return (actual > expected) - (actual < expected)
    return None


_ORDERING = {
    ">": lambda c: c > 0,
    "<": lambda c: c < 0,
    ">=": lambda c: c >= 0,
    "<=": lambda c: c <= 0,
}


def condition_met(condition: Mapping[str, Any], answers: list[Any]) -> bool:
    """One ``enableWhen`` against the answer values of its question (R4 semantics)."""
    operator = condition.get("operator")
    expected = next((v for k, v in condition.items() if k.startswith("answer")), None)
    if operator == "exists":
        return bool(answers) == bool(expected)
    if operator == "=":
        return any(values_equal(a, expected) for a in answers)
    if operator == "!=":
        return not any(values_equal(a, expected) for a in answers)
    test = _ORDERING.get(str(operator))
    if test is None:
        return False
    for answer in answers:
        result = _compare(answer, expected)
        if result is not None and test(result):
            return True
    return False


@dataclass
class Enablement:
    """Which items of a Questionnaire are enabled, given a response's answers."""

    index: QuestionnaireIndex
    answers: Mapping[str, list[dict[str, Any]]]
    _memo: dict[str, bool] = field(default_factory=dict)
    _visiting: set[str] = field(default_factory=set)

    def values(self, link_id: str) -> list[Any]:
        """Answer values of ``link_id``; none when the item is disabled."""
        if not self.enabled(link_id):
            return []
        out = []
        for answer in self.answers.get(link_id, []):
            found = answer_value(answer)
            if found is not None:
                out.append(found[1])
        return out

    def enabled(self, link_id: str) -> bool:
        """True when ``link_id`` and all its ancestors are enabled (unknown ids are enabled)."""
        if link_id in self._memo:
            return self._memo[link_id]
        if link_id in self._visiting:  # a cycle of enableWhen: treat the loop as enabled
            return True
        self._visiting.add(link_id)
        try:
            result = self._compute(link_id)
        finally:
            self._visiting.discard(link_id)
        self._memo[link_id] = result
        return result

    def _compute(self, link_id: str) -> bool:
        item = self.index.item(link_id)
        if item is None:
            return True
        parent = self.index.parents.get(link_id)
        if parent is not None and not self.enabled(parent):
            return False
        conditions = [c for c in item.get("enableWhen") or () if isinstance(c, Mapping)]
        if not conditions:
            return True
        results = [condition_met(c, self.values(str(c.get("question")))) for c in conditions]
        if item.get("enableBehavior") == "any":
            return any(results)
        return all(results)


# --------------------------------------------------------------------------------------------
# Answer constraints


def _extension_value(item: Mapping[str, Any], url: str) -> Any:
    for ext in item.get("extension") or ():
        if isinstance(ext, Mapping) and ext.get("url") == url:
            found = answer_value(ext)
            return found[1] if found else None
    return None


def allowed_value_keys(item: Mapping[str, Any]) -> tuple[str, ...]:
    """The answer ``value[x]`` keys an item accepts (choice items: their answerOption type)."""
    item_type = str(item.get("type"))
    option_keys = tuple(
        dict.fromkeys(
            found[0]
            for option in item.get("answerOption") or ()
            if isinstance(option, Mapping) and (found := answer_value(option)) is not None
        )
    )
    if item_type == "choice" and option_keys:
        return option_keys
    if item_type == "open-choice" and option_keys:
        return tuple(dict.fromkeys((*option_keys, "valueString")))
    return VALUE_KEYS.get(item_type, ())


def answer_problems(item: Mapping[str, Any], key: str, value: Any) -> list[str]:
    """What is wrong with one answer ``value[x]`` for ``item`` (empty list when it is valid)."""
    item_type = str(item.get("type"))
    if item_type in NO_ANSWER_TYPES:
        return [f"a {item_type} item takes no answer"]
    allowed = allowed_value_keys(item)
    if key not in allowed:
        return [f"{key} does not fit item type {item_type!r} (expected {' or '.join(allowed)})"]
    problems: list[str] = []
    options = [found for o in item.get("answerOption") or () if (found := answer_value(o))]
    in_list = [v for k, v in options if k == key]
    if in_list and not (item_type == "open-choice" and key == "valueString"):
        if not any(values_equal(value, option) for option in in_list):
            problems.append(f"{_show(value)} is not one of the item's answerOption values")
    low, high = _extension_value(item, MIN_VALUE_URL), _extension_value(item, MAX_VALUE_URL)
    if low is not None and (c := _compare(value, low)) is not None and c < 0:
        problems.append(f"{_show(value)} is below minValue {low}")
    if high is not None and (c := _compare(value, high)) is not None and c > 0:
        problems.append(f"{_show(value)} is above maxValue {high}")
    max_length = item.get("maxLength")
    if isinstance(value, str) and isinstance(max_length, int) and len(value) > max_length:
        problems.append(f"the answer is longer than maxLength {max_length}")
    return problems


def _show(value: Any) -> str:
    if isinstance(value, Mapping) and "code" in value:
        return f"{value.get('system', '')}|{value['code']}"
    return repr(value)


# --------------------------------------------------------------------------------------------
# Validation


def _error(diagnostics: str, expression: str, code: str = "invalid") -> Issue:
    return Issue("error", code, diagnostics, (expression,))


def _check_item(
    item: dict[str, Any], path: str, index: QuestionnaireIndex, enablement: Enablement
) -> list[Issue]:
    link_id = item.get("linkId")
    definition = index.item(str(link_id))
    if definition is None:
        return [_error(f"linkId {link_id!r} is not an item of the Questionnaire", path)]
    answers = [a for a in item.get("answer") or () if isinstance(a, dict)]
    valued = [(i, found) for i, a in enumerate(answers) if (found := answer_value(a))]
    issues: list[Issue] = []
    if valued and not enablement.enabled(str(link_id)):
        issues.append(
            _error(
                f"item {link_id!r} is answered but disabled by its enableWhen",
                path,
                "business-rule",
            )
        )
    if len(valued) > 1 and not definition.get("repeats"):
        issues.append(
            _error(f"item {link_id!r} does not repeat but has {len(valued)} answers", path)
        )
    for a_index, (key, value) in valued:
        for problem in answer_problems(definition, key, value):
            issues.append(_error(f"{link_id}: {problem}", f"{path}.answer[{a_index}]"))
    if len(valued) > 1:
        for a_index, (_key, value) in valued:
            if is_exclusive(definition, value):
                issues.append(
                    _error(
                        f"{link_id}: {_show(value)} is an exclusive answer and cannot be"
                        " combined with other answers",
                        f"{path}.answer[{a_index}]",
                        "business-rule",
                    )
                )
    return issues


def is_exclusive(item: Mapping[str, Any], value: Any) -> bool:
    """True when ``value`` is an answerOption of ``item`` flagged ``optionExclusive``."""
    for option in item.get("answerOption") or ():
        found = answer_value(option) if isinstance(option, Mapping) else None
        if found and values_equal(value, found[1]):
            return _extension_value(option, OPTION_EXCLUSIVE_URL) is True
    return False


def _answered(link_id: str, index: QuestionnaireIndex, answers: Mapping[str, Any]) -> bool:
    if answers.get(link_id):
        return True
    return any(
        _answered(child, index, answers)
        for child, parent in index.parents.items()
        if parent == link_id
    )


def validate_response(questionnaire: Mapping[str, Any], qr: Mapping[str, Any]) -> list[Issue]:
    """Check ``qr``'s answers against ``questionnaire`` (SDC validation; see module doc).

    The response is taken as structurally valid (``parse_response``) and as answering this
    Questionnaire (``require_questionnaire``). Returns error issues whose ``expression`` locates
    the offending item or answer, e.g. ``QuestionnaireResponse.item[0].item[2].answer[0]``.
    """
    index = index_questionnaire(questionnaire)
    answers = answers_by_link_id(qr)
    enablement = Enablement(index, answers)
    issues: list[Issue] = []
    for path, item in iter_items(qr):
        issues.extend(_check_item(item, path, index, enablement))
    if qr.get("status") in COMPLETE_STATUSES:
        for link_id, definition in index.items.items():
            if (
                definition.get("required")
                and enablement.enabled(link_id)
                and not _answered(link_id, index, answers)
            ):
                issues.append(
                    _error(
                        f"required item {link_id!r} is not answered",
                        "QuestionnaireResponse",
                        "required",
                    )
                )
    return issues


def date_like(value: Any) -> bool:
    """True for a FHIR ``date`` string (year, year-month or full date)."""
    return isinstance(value, str) and bool(DATE_RE.match(value))
