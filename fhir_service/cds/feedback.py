"""Validation of CDS Hooks 2.0 feedback bodies (``POST /cds-services/{id}/feedback``).

The rules come from CDS Hooks 2.0 "Feedback" (https://cds-hooks.hl7.org/2.0/#feedback): the
body is ``{"feedback": [Feedback, ...]}`` and every item needs ``card`` and an RFC 3339
``outcomeTimestamp``, and meets the invariants

* ``cds-fb-1``: ``outcome`` is ``accepted`` or ``overridden``;
* ``cds-fb-2``: an ``accepted`` item carries a non-empty ``acceptedSuggestions`` array of
  ``{"id": <suggestion uuid>}`` objects;
* ``cds-fb-3``: an ``overrideReason`` (allowed with ``overridden`` only) is not empty: it holds a
  ``reason`` Coding and/or a ``userComment``. A ``reason`` without ``display`` (the sandbox shape)
  is accepted.

Validation is lenient on members the standard does not define (they are ignored) and treats a
JSON ``null`` optional member as absent. Every failure becomes one OperationOutcome issue whose
``expression`` names the offending member (``feedback[1].outcome``); all issues of a body are
reported together in one :class:`~fhir_service.errors.InvalidRequest` (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fhir_service.errors import InvalidRequest, Issue

OUTCOMES = ("accepted", "overridden")

# RFC 3339 §5.6 ``date-time``: full-date "T" partial-time [time-secfrac] time-offset.
_RFC3339 = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[Tt]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<off_hour>\d{2}):(?P<off_minute>\d{2}))",
    re.ASCII,
)

# Issues beyond this many are summarised in one last issue (the body cap bounds the work anyway).
_MAX_ISSUES = 100


@dataclass(frozen=True)
class FeedbackItem:
    """One validated feedback entry (CDS Hooks 2.0 ``Feedback``).

    Attributes:
        card: The ``card.uuid`` the feedback is about (may be unknown to the service).
        outcome: ``accepted`` or ``overridden`` (cds-fb-1).
        outcome_timestamp: ``outcomeTimestamp`` exactly as sent; a valid RFC 3339 date-time
            (see :func:`parse_rfc3339` for the instant it denotes).
        accepted_suggestions: The ``acceptedSuggestions[].id`` values, in the order sent
            (non-empty exactly when ``outcome`` is ``accepted``, cds-fb-2).
        override_reason_code: ``overrideReason.reason.code``, when a reason was chosen.
        override_reason_system: ``overrideReason.reason.system``, when a reason was chosen.
        override_comment: ``overrideReason.userComment``, when given (free text; never logged).
    """

    card: str
    outcome: str
    outcome_timestamp: str
    accepted_suggestions: tuple[str, ...]
    override_reason_code: str | None
    override_reason_system: str | None
    override_comment: str | None

    @property
    def outcome_instant(self) -> datetime:
        """``outcome_timestamp`` as an aware UTC datetime (microsecond precision)."""
        return parse_rfc3339(self.outcome_timestamp)


def parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 §5.6 ``date-time`` into an aware UTC datetime.

    Accepts ``Z``/``z`` and numeric offsets (``+02:00``, ``-05:30``), ``T`` or ``t`` as the
    separator and any number of fraction digits (truncated to microseconds). A leap second
    (``:60``) is mapped to the last microsecond of its minute. Anything else, including a
    date-time without an offset, a bare date or out-of-range fields, is rejected.

    Args:
        value: The text to parse.

    Returns:
        The instant, with ``tzinfo`` UTC.

    Raises:
        ValueError: ``value`` is not an RFC 3339 date-time.
    """
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError("not an RFC 3339 date-time")
    second = int(match["second"])
    fraction = match["fraction"] or ""
    microsecond = int((fraction + "000000")[:6])
    if second == 60:  # RFC 3339 §5.6 time-second allows a leap second.
        second, microsecond = 59, 999_999
    if match["utc"]:
        tz: timezone = UTC
    else:
        off_hour, off_minute = int(match["off_hour"]), int(match["off_minute"])
        if off_hour > 23 or off_minute > 59:
            raise ValueError("RFC 3339 offset out of range")
        offset = timedelta(hours=off_hour, minutes=off_minute)
        tz = timezone(-offset if match["sign"] == "-" else offset)
    parsed = datetime(
        int(match["year"]),
        int(match["month"]),
        int(match["day"]),
        int(match["hour"]),
        int(match["minute"]),
        second,
        microsecond,
        tzinfo=tz,
    )
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00
        raise ValueError("RFC 3339 date-time out of range") from exc


class _Issues:
    """Collects the 400 issues of one body, capped at ``_MAX_ISSUES``."""

    def __init__(self) -> None:
        self.items: list[Issue] = []
        self.dropped = 0

    def add(self, diagnostics: str, expression: str) -> None:
        if len(self.items) < _MAX_ISSUES:
            self.items.append(Issue("error", "invalid", diagnostics, (expression,)))
        else:
            self.dropped += 1

    def raise_if_any(self) -> None:
        if not self.items:
            return
        issues = list(self.items)
        if self.dropped:
            issues.append(
                Issue("error", "invalid", f"{self.dropped} further issue(s) not listed", ())
            )
        raise InvalidRequest(issues=issues)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _check_timestamp(raw: dict[str, Any], where: str, issues: _Issues) -> str | None:
    value = raw.get("outcomeTimestamp")
    if value is None:
        issues.add("outcomeTimestamp is required", f"{where}.outcomeTimestamp")
        return None
    if not isinstance(value, str):
        issues.add("outcomeTimestamp must be an RFC 3339 date-time", f"{where}.outcomeTimestamp")
        return None
    try:
        parse_rfc3339(value)
    except ValueError:
        issues.add("outcomeTimestamp must be an RFC 3339 date-time", f"{where}.outcomeTimestamp")
        return None
    return value


def _check_suggestions(
    raw: dict[str, Any], outcome: Any, where: str, issues: _Issues
) -> tuple[str, ...] | None:
    value = raw.get("acceptedSuggestions")
    field = f"{where}.acceptedSuggestions"
    if outcome == "overridden":
        if value is None or value == []:
            return ()
        issues.add("acceptedSuggestions is only allowed when outcome is 'accepted'", field)
        return None
    if outcome != "accepted":
        return ()  # cds-fb-1 already failed; nothing more to say about suggestions.
    if value is None:
        issues.add("cds-fb-2: an accepted outcome requires acceptedSuggestions", field)
        return None
    if not isinstance(value, list) or not value:
        issues.add("cds-fb-2: acceptedSuggestions must be a non-empty array", field)
        return None
    ids: list[str] = []
    ok = True
    for j, suggestion in enumerate(value):
        if not isinstance(suggestion, dict):
            issues.add("cds-fb-2: each accepted suggestion must be an object", f"{field}[{j}]")
            ok = False
        elif not _nonempty_str(suggestion.get("id")):
            issues.add(
                "cds-fb-2: each accepted suggestion needs a string id (the suggestion uuid)",
                f"{field}[{j}].id",
            )
            ok = False
        else:
            ids.append(suggestion["id"])
    return tuple(ids) if ok else None


def _check_override(
    raw: dict[str, Any], outcome: Any, where: str, issues: _Issues
) -> tuple[str | None, str | None, str | None] | None:
    """Return (code, system, comment) of ``overrideReason`` or None after adding issues."""
    value = raw.get("overrideReason")
    field = f"{where}.overrideReason"
    if value is None:
        return None, None, None
    if outcome == "accepted":
        issues.add("overrideReason is only allowed when outcome is 'overridden'", field)
        return None
    if not isinstance(value, dict):
        issues.add("overrideReason must be an object", field)
        return None
    reason, comment = value.get("reason"), value.get("userComment")
    if reason is None and comment is None:
        issues.add("cds-fb-3: overrideReason must contain reason and/or userComment", field)
        return None
    ok = True
    code = system = None
    if reason is not None:
        if not isinstance(reason, dict):
            issues.add("overrideReason.reason must be a Coding object", f"{field}.reason")
            ok = False
        else:
            code, system = reason.get("code"), reason.get("system")
            # Coding (CDS Hooks 2.0): code and system REQUIRED; display is not required here.
            for name, member in (("code", code), ("system", system)):
                if not _nonempty_str(member):
                    issues.add(
                        f"overrideReason.reason.{name} must be a non-empty string",
                        f"{field}.reason.{name}",
                    )
                    ok = False
    if comment is not None and not isinstance(comment, str):
        issues.add("overrideReason.userComment must be a string", f"{field}.userComment")
        ok = False
    return (code, system, comment) if ok else None


def _parse_item(raw: Any, where: str, issues: _Issues) -> FeedbackItem | None:
    if not isinstance(raw, dict):
        issues.add("each feedback item must be an object", where)
        return None
    before = len(issues.items) + issues.dropped
    card = raw.get("card")
    if not _nonempty_str(card):
        issues.add("card is required and must be a string (the card uuid)", f"{where}.card")
    timestamp = _check_timestamp(raw, where, issues)
    outcome = raw.get("outcome")
    if outcome not in OUTCOMES:
        issues.add("cds-fb-1: outcome must be 'accepted' or 'overridden'", f"{where}.outcome")
    suggestions = _check_suggestions(raw, outcome, where, issues)
    override = _check_override(raw, outcome, where, issues)
    if (
        len(issues.items) + issues.dropped != before
        or not isinstance(card, str)
        or not isinstance(outcome, str)
        or timestamp is None
        or suggestions is None
        or override is None
    ):
        return None
    code, system, comment = override
    return FeedbackItem(
        card=card,
        outcome=outcome,
        outcome_timestamp=timestamp,
        accepted_suggestions=suggestions,
        override_reason_code=code,
        override_reason_system=system,
        override_comment=comment,
    )


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Validate a feedback request body (CDS Hooks 2.0 "Feedback").

    Args:
        body: The decoded JSON body.

    Returns:
        The items in request order; an empty list for ``{"feedback": []}`` (valid, nothing to
        record).

    Raises:
        InvalidRequest: (400) the body is not an object, ``feedback`` is missing or not an
            array, or an item breaks a rule listed in the module docstring. Each issue's
            ``expression`` names the member, e.g. ``feedback[1].outcome``.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the feedback body must be a JSON object")
    entries = body.get("feedback")
    if not isinstance(entries, list):
        raise InvalidRequest("feedback is required and must be an array", expression=("feedback",))
    issues = _Issues()
    items: list[FeedbackItem] = []
    for index, raw in enumerate(entries):
        item = _parse_item(raw, f"feedback[{index}]", issues)
        if item is not None:
            items.append(item)
    issues.raise_if_any()
    return items
