"""Per-rule analytics: cards issued and their feedback outcomes, for one CDS service.

Spec: CDS Hooks 2.0 feedback https://cds-hooks.hl7.org/2.0/#feedback; the report's shape is the
project's own (README, ``GET /cds-services/{id}/analytics``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import distinct, func, select

from fhir_service.store.database import Database
from fhir_service.store.schema import clean, feedback_rows, issued_cards


def analytics(db: Database, service_id: str) -> dict[str, Any]:
    """Per-rule counts of issued cards and their outcomes; see :meth:`SqlStore.analytics`.

    Raises:
        StoreUnavailable: The database cannot be reached.
    """
    service = clean(service_id)
    issued_q = (
        select(issued_cards.c.rule_id, func.count())
        .where(issued_cards.c.service_id == service)
        .group_by(issued_cards.c.rule_id)
    )
    fb = feedback_rows.c
    outcome_q = (
        select(fb.rule_id, fb.outcome, func.count(distinct(fb.card_uuid)))
        .where(fb.service_id == service, fb.rule_id.is_not(None))
        .group_by(fb.rule_id, fb.outcome)
    )
    reason_q = (
        select(
            fb.rule_id,
            fb.override_reason_system,
            fb.override_reason_code,
            func.count(distinct(fb.card_uuid)),
        )
        .where(
            fb.service_id == service,
            fb.rule_id.is_not(None),
            fb.outcome == "overridden",
            fb.override_reason_code.is_not(None),
        )
        .group_by(fb.rule_id, fb.override_reason_system, fb.override_reason_code)
    )
    rules: dict[str, dict[str, Any]] = {}

    def entry(rule: str) -> dict[str, Any]:
        return rules.setdefault(
            rule,
            {"rule": rule, "issued": 0, "accepted": 0, "overridden": 0, "overrideReasons": []},
        )

    with db.transaction("analytics", write=False) as conn:
        for rule, count in conn.execute(issued_q):
            entry(rule)["issued"] = int(count)
        for rule, outcome, count in conn.execute(outcome_q):
            if outcome in ("accepted", "overridden"):
                entry(rule)[outcome] = int(count)
        for rule, system, code, count in conn.execute(reason_q):
            entry(rule)["overrideReasons"].append(
                {"code": code, "system": system, "count": int(count)}
            )
    for value in rules.values():
        value["overrideReasons"].sort(key=lambda r: (-r["count"], r["system"] or "", r["code"]))
    return {"service": service_id, "rules": [rules[k] for k in sorted(rules)]}
