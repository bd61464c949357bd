"""Feedback body validation (CDS Hooks 2.0 https://cds-hooks.hl7.org/2.0/#feedback)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_service.cds.feedback import FeedbackItem, parse_feedback, parse_rfc3339
from fhir_service.errors import InvalidRequest

TS = "2026-03-01T10:15:00Z"
SANDBOX_DISMISS = {
    "card": "0f1e2d3c-card",
    "outcome": "overridden",
    "outcomeTimestamp": TS,
    "overrideReason": {
        "reason": {"code": "patient-declined", "system": "http://example.org/override"}
    },
}
SANDBOX_ACCEPT = {
    "card": "0f1e2d3c-card",
    "outcome": "accepted",
    "acceptedSuggestions": [{"id": "sugg-1"}],
    "outcomeTimestamp": TS,
}


def expect_400(body: Any) -> list[dict[str, Any]]:
    """Parse ``body``, expecting a 400; return the OperationOutcome issues."""
    with pytest.raises(InvalidRequest) as caught:
        parse_feedback(body)
    assert caught.value.status_code == 400
    outcome = caught.value.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"], outcome
    for issue in outcome["issue"]:
        assert issue["severity"] == "error"
        assert issue["code"] == "invalid"
        assert issue["diagnostics"]
    return list(outcome["issue"])


def expressions(body: Any) -> list[str]:
    return [e for issue in expect_400(body) for e in issue.get("expression", [])]


def item(**changes: Any) -> dict[str, Any]:
    """The accept shape with ``changes`` applied (a value of ``...`` deletes the member)."""
    out = dict(SANDBOX_ACCEPT)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def overridden(**changes: Any) -> dict[str, Any]:
    out = dict(SANDBOX_DISMISS)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# -- valid shapes ------------------------------------------------------------------------------


def test_sandbox_dismiss_shape_without_display_is_valid() -> None:
    [parsed] = parse_feedback({"feedback": [SANDBOX_DISMISS]})
    assert parsed == FeedbackItem(
        card="0f1e2d3c-card",
        outcome="overridden",
        outcome_timestamp=TS,
        accepted_suggestions=(),
        override_reason_code="patient-declined",
        override_reason_system="http://example.org/override",
        override_comment=None,
    )


def test_sandbox_accept_shape_is_valid() -> None:
    [parsed] = parse_feedback({"feedback": [SANDBOX_ACCEPT]})
    assert parsed.outcome == "accepted"
    assert parsed.accepted_suggestions == ("sugg-1",)
    assert parsed.override_reason_code is None
    assert parsed.outcome_instant == datetime(2026, 3, 1, 10, 15, tzinfo=UTC)


def test_empty_feedback_array_is_valid_and_yields_nothing() -> None:
    assert parse_feedback({"feedback": []}) == []


def test_several_items_keep_request_order_and_all_suggestions() -> None:
    body = {
        "feedback": [
            item(card="a", acceptedSuggestions=[{"id": "s2"}, {"id": "s1"}]),
            overridden(card="b"),
            overridden(card="c", overrideReason=...),
        ]
    }
    parsed = parse_feedback(body)
    assert [p.card for p in parsed] == ["a", "b", "c"]
    assert parsed[0].accepted_suggestions == ("s2", "s1")
    assert parsed[2].override_reason_code is None and parsed[2].override_comment is None


def test_override_reason_with_display_and_comment() -> None:
    reason = {
        "reason": {"code": "c", "system": "s", "display": "Patient declined"},
        "userComment": "discussed alternatives",
    }
    [parsed] = parse_feedback({"feedback": [overridden(overrideReason=reason)]})
    assert (parsed.override_reason_code, parsed.override_reason_system) == ("c", "s")
    assert parsed.override_comment == "discussed alternatives"


def test_override_reason_with_user_comment_only() -> None:
    [parsed] = parse_feedback({"feedback": [overridden(overrideReason={"userComment": "n/a"})]})
    assert parsed.override_reason_code is None
    assert parsed.override_comment == "n/a"


def test_unknown_members_are_ignored_everywhere() -> None:
    body = {
        "extension": {"x": 1},
        "feedback": [
            item(
                acceptedSuggestions=[{"id": "s", "extra": True}],
                extension={"vendor": "x"},
            ),
            overridden(
                overrideReason={
                    "reason": {"code": "c", "system": "s", "userSelected": True},
                    "other": 1,
                }
            ),
        ],
    }
    assert len(parse_feedback(body)) == 2


def test_null_optional_members_count_as_absent() -> None:
    body = {
        "feedback": [
            overridden(overrideReason=None, acceptedSuggestions=None),
            item(overrideReason=None),
        ]
    }
    parsed = parse_feedback(body)
    assert parsed[0].accepted_suggestions == ()
    assert parsed[1].accepted_suggestions == ("sugg-1",)


def test_overridden_with_empty_accepted_suggestions_is_valid() -> None:
    [parsed] = parse_feedback({"feedback": [overridden(acceptedSuggestions=[])]})
    assert parsed.accepted_suggestions == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T10:15:00Z", datetime(2026, 3, 1, 10, 15, tzinfo=UTC)),
        ("2026-03-01t10:15:00z", datetime(2026, 3, 1, 10, 15, tzinfo=UTC)),
        ("2026-03-01T12:15:00+02:00", datetime(2026, 3, 1, 10, 15, tzinfo=UTC)),
        ("2026-03-01T05:45:00-04:30", datetime(2026, 3, 1, 10, 15, tzinfo=UTC)),
        ("2026-03-01T10:15:00.5Z", datetime(2026, 3, 1, 10, 15, 0, 500000, tzinfo=UTC)),
        (
            "2026-03-01T10:15:00.123456789+00:00",
            datetime(2026, 3, 1, 10, 15, 0, 123456, tzinfo=UTC),
        ),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
    ],
)
def test_rfc3339_timestamps_are_accepted(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected
    [parsed] = parse_feedback({"feedback": [item(outcomeTimestamp=text)]})
    assert parsed.outcome_timestamp == text
    assert parsed.outcome_instant == expected
    assert parsed.outcome_instant.tzinfo is UTC


# -- 400 cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, [], ["feedback"], "feedback", 3, True])
def test_body_that_is_not_an_object_is_400(body: Any) -> None:
    expect_400(body)


@pytest.mark.parametrize("body", [{}, {"feedback": None}, {"other": []}])
def test_missing_feedback_member_is_400(body: Any) -> None:
    assert expressions(body) == ["feedback"]


@pytest.mark.parametrize("value", [{}, SANDBOX_ACCEPT, "[]", 0])
def test_feedback_that_is_not_an_array_is_400(value: Any) -> None:
    assert expressions({"feedback": value}) == ["feedback"]


@pytest.mark.parametrize("value", [None, "card", 1, ["x"]])
def test_item_that_is_not_an_object_is_400(value: Any) -> None:
    assert expressions({"feedback": [SANDBOX_ACCEPT, value]}) == ["feedback[1]"]


@pytest.mark.parametrize("card", [..., None, "", 12, {"uuid": "x"}])
def test_item_without_string_card_is_400(card: Any) -> None:
    assert expressions({"feedback": [item(card=card)]}) == ["feedback[0].card"]


@pytest.mark.parametrize("timestamp", [..., None])
def test_item_without_outcome_timestamp_is_400(timestamp: Any) -> None:
    issues = expect_400({"feedback": [item(outcomeTimestamp=timestamp)]})
    assert [i["expression"] for i in issues] == [["feedback[0].outcomeTimestamp"]]


@pytest.mark.parametrize(
    "timestamp",
    [
        "garbage",
        "",
        "2026-03-01",
        "2026-03-01T10:15:00",  # no offset
        "2026-03-01 10:15:00Z",  # space separator
        "2026-03-01T10:15Z",  # no seconds
        "2026-13-01T10:15:00Z",
        "2026-02-30T10:15:00Z",
        "2026-03-01T24:00:00Z",
        "2026-03-01T10:60:00Z",
        "2026-03-01T10:15:61Z",
        "2026-03-01T10:15:00+24:00",
        "2026-03-01T10:15:00+0200",
        "2026-03-01T10:15:00.Z",
        "2026-03-01T10:15:00ZZ",
        "2026-03-01T10:15:00Z\n",
        " 2026-03-01T10:15:00Z",
        "\uff12\uff10\uff12\uff16-03-01T10:15:00Z",  # full-width digits
        "0001-01-01T00:00:00+01:00",  # before datetime.min in UTC
        1772360100,
        ["2026-03-01T10:15:00Z"],
    ],
)
def test_malformed_outcome_timestamp_is_400(timestamp: Any) -> None:
    assert expressions({"feedback": [item(outcomeTimestamp=timestamp)]}) == [
        "feedback[0].outcomeTimestamp"
    ]


@pytest.mark.parametrize("outcome", [..., None, "dismissed", "Accepted", "", 1])
def test_cds_fb_1_outcome_must_be_accepted_or_overridden(outcome: Any) -> None:
    issues = expect_400({"feedback": [item(outcome=outcome)]})
    assert [i["expression"] for i in issues] == [["feedback[0].outcome"]]
    assert "cds-fb-1" in issues[0]["diagnostics"]


@pytest.mark.parametrize(
    ("suggestions", "where"),
    [
        (..., "feedback[0].acceptedSuggestions"),
        (None, "feedback[0].acceptedSuggestions"),
        ([], "feedback[0].acceptedSuggestions"),
        ({"id": "s"}, "feedback[0].acceptedSuggestions"),
        ("s", "feedback[0].acceptedSuggestions"),
        (["s"], "feedback[0].acceptedSuggestions[0]"),
        ([{"id": "s"}, {}], "feedback[0].acceptedSuggestions[1].id"),
        ([{"id": 7}], "feedback[0].acceptedSuggestions[0].id"),
        ([{"id": ""}], "feedback[0].acceptedSuggestions[0].id"),
        ([{"uuid": "s"}], "feedback[0].acceptedSuggestions[0].id"),
    ],
)
def test_cds_fb_2_accepted_needs_suggestion_objects_with_ids(suggestions: Any, where: str) -> None:
    issues = expect_400({"feedback": [item(acceptedSuggestions=suggestions)]})
    assert [i["expression"] for i in issues] == [[where]]
    assert "cds-fb-2" in issues[0]["diagnostics"]


def test_accepted_suggestions_with_overridden_is_400() -> None:
    body = {"feedback": [overridden(acceptedSuggestions=[{"id": "sugg-1"}])]}
    assert expressions(body) == ["feedback[0].acceptedSuggestions"]


def test_override_reason_with_accepted_is_400() -> None:
    body = {"feedback": [item(overrideReason={"userComment": "why"})]}
    assert expressions(body) == ["feedback[0].overrideReason"]


def test_cds_fb_3_empty_override_reason_is_400() -> None:
    issues = expect_400({"feedback": [overridden(overrideReason={})]})
    assert [i["expression"] for i in issues] == [["feedback[0].overrideReason"]]
    assert "cds-fb-3" in issues[0]["diagnostics"]


def test_cds_fb_3_override_reason_with_only_unknown_members_is_400() -> None:
    issues = expect_400({"feedback": [overridden(overrideReason={"note": "x"})]})
    assert "cds-fb-3" in issues[0]["diagnostics"]


@pytest.mark.parametrize(
    ("reason", "where"),
    [
        ("patient-declined", "feedback[0].overrideReason"),
        ({"reason": "code"}, "feedback[0].overrideReason.reason"),
        ({"reason": {"system": "s"}}, "feedback[0].overrideReason.reason.code"),
        ({"reason": {"code": "c"}}, "feedback[0].overrideReason.reason.system"),
        ({"reason": {"code": 1, "system": "s"}}, "feedback[0].overrideReason.reason.code"),
        ({"userComment": 5}, "feedback[0].overrideReason.userComment"),
    ],
)
def test_malformed_override_reason_is_400(reason: Any, where: str) -> None:
    assert expressions({"feedback": [overridden(overrideReason=reason)]}) == [where]


def test_expression_names_the_failing_item_and_every_issue_is_reported() -> None:
    body = {
        "feedback": [
            SANDBOX_ACCEPT,
            item(outcome="maybe"),
            SANDBOX_DISMISS,
            item(card=..., outcomeTimestamp="yesterday"),
        ]
    }
    assert expressions(body) == [
        "feedback[1].outcome",
        "feedback[3].card",
        "feedback[3].outcomeTimestamp",
    ]


def test_one_bad_item_rejects_the_whole_body() -> None:
    with pytest.raises(InvalidRequest):
        parse_feedback({"feedback": [SANDBOX_ACCEPT, item(outcome="nope")]})


def test_issue_list_is_capped_for_huge_bodies() -> None:
    issues = expect_400({"feedback": [1] * 500})
    assert len(issues) == 101
    assert issues[0]["expression"] == ["feedback[0]"]
    assert "400 further issue(s)" in issues[-1]["diagnostics"]
