"""Shared pieces of the fuzz suite: example budget, case counter, response invariants.

``FUZZ_EXAMPLES`` scales every generator (``make fuzz`` sets 2000); the default keeps the suite
well inside ``make test``'s budget while still sending more than 1,000 generated requests.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

#: Examples per schemathesis operation / per hypothesis body test (``make fuzz``: 2000).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
#: Requests sent per test id, and in total (checked by ``test_zz_totals``).
SENT: Counter[str] = Counter()
#: Status codes seen, per endpoint family (printed in the terminal summary).
STATUSES: Counter[str] = Counter()
SEED = 20261201


def examples(default: int) -> int:
    return EXAMPLES if EXAMPLES is not None else default


def check_response(status: int, body: bytes, content_type: str, what: str) -> None:
    """The invariants of every fuzzed answer: never 5xx; every 4xx is an OperationOutcome."""
    STATUSES[str(status)] += 1
    assert status < 500, f"{what}: HTTP {status}: {body[:300]!r}"
    if 400 <= status < 500:
        import orjson

        try:
            parsed: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise AssertionError(f"{what}: {status} body is not JSON: {body[:200]!r}") from None
        assert isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome", (
            f"{what}: {status} body is not an OperationOutcome: {body[:200]!r}"
        )
        assert parsed.get("issue"), f"{what}: OperationOutcome without issue"
        assert "json" in content_type, f"{what}: {status} content type {content_type!r}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SENT:
        terminalreporter.write_line(
            f"fuzz: {sum(SENT.values())} generated requests ({len(SENT)} operations or endpoints); "
            f"statuses {dict(sorted(STATUSES.items()))}"
        )
