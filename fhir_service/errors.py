"""One error vocabulary: every failure the caller sees is an OperationOutcome.

Tree::

    FhirError (status 500, code exception)
    ├── InvalidRequest      400 invalid
    ├── Unauthorized        401 login        (no detail is ever sent)
    ├── NotFound            404 not-found
    ├── NotAcceptable       406 not-supported
    ├── UnsupportedMediaType 415 not-supported
    ├── PreconditionFailed  412 processing   (CDS Hooks: data could not be obtained)
    ├── PayloadTooLarge     413 too-costly
    ├── BusinessRuleError   422 business-rule
    └── ServiceUnavailable  503 transient

Inside the engine, faults are recorded as issues (``IssueLog``) and never raised; these
exceptions are for caller errors only. See https://hl7.org/fhir/R4/operationoutcome.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: str
    code: str
    diagnostics: str | None = None
    expression: tuple[str, ...] = ()
    details: str | None = None

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        if self.details:
            out["details"] = {"text": self.details}
        if self.diagnostics:
            out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue], outcome_id: str | None = None) -> dict[str, Any]:
    """Build an OperationOutcome resource (R4 JSON) from ``issues``."""
    out: dict[str, Any] = {"resourceType": "OperationOutcome"}
    if outcome_id:
        out["id"] = outcome_id
    out["issue"] = [i.to_fhir() for i in issues] or [
        {"severity": "information", "code": "informational", "diagnostics": "ok"}
    ]
    return out


@dataclass
class IssueLog:
    """Issues gathered while evaluating knowledge; evaluation goes on after each one."""

    issues: list[Issue] = field(default_factory=list)

    def error(self, diagnostics: str, *expression: str, details: str | None = None) -> None:
        """Record an error; ``details`` may quote the caller's data, so it is returned to that
        caller (``$apply``) but never logged — log ``diagnostics`` only."""
        self.issues.append(Issue("error", "processing", diagnostics, tuple(expression), details))

    def warning(self, diagnostics: str, *expression: str) -> None:
        self.issues.append(Issue("warning", "processing", diagnostics, tuple(expression)))

    def information(self, diagnostics: str, *expression: str) -> None:
        self.issues.append(Issue("information", "informational", diagnostics, tuple(expression)))

    def __bool__(self) -> bool:
        return bool(self.issues)


class FhirError(Exception):
    """Base of every caller-visible error; carries its HTTP status and issues."""

    status_code = 500
    issue_code = "exception"

    def __init__(
        self,
        diagnostics: str = "",
        *,
        expression: tuple[str, ...] | list[str] = (),
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.issues = issues or [
            Issue("error", self.issue_code, diagnostics or None, tuple(expression))
        ]
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class InvalidRequest(FhirError):
    status_code = 400
    issue_code = "invalid"


class Unauthorized(FhirError):
    status_code = 401
    issue_code = "login"

    def __init__(self, reason: str = "") -> None:
        # The reason is for logs only: a 401 never tells the caller why.
        super().__init__("")
        self.reason = reason
        self.issues = [Issue("error", "login")]


class NotFound(FhirError):
    status_code = 404
    issue_code = "not-found"


class NotAcceptable(FhirError):
    status_code = 406
    issue_code = "not-supported"


class PreconditionFailed(FhirError):
    status_code = 412
    issue_code = "processing"


class PayloadTooLarge(FhirError):
    status_code = 413
    issue_code = "too-costly"


class UnsupportedMediaType(FhirError):
    status_code = 415
    issue_code = "not-supported"


class BusinessRuleError(FhirError):
    status_code = 422
    issue_code = "business-rule"


class ServiceUnavailable(FhirError):
    status_code = 503
    issue_code = "transient"
