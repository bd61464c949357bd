"""Settings read once at start from ``FHIR_SERVICE_*`` variables (README "Settings").

Malformed values refuse the start with a message naming the variable. ``FHIR_SERVICE_AUTH=off``
is allowed for development and logged as a warning by ``main.create_app``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_DEFINITIONS = PACKAGE_ROOT.parent / "definitions"
#: SMART App Launch 2.x scopes of the assessment app (docs/smart-launch.md): launch context,
#: read what $populate and the patient-view rules read, create the QuestionnaireResponse and
#: what $extract makes (Observation, Condition).
DEFAULT_SMART_SCOPES = " ".join(
    ["launch", "launch/patient", "patient/Patient.rs"]
    + [
        f"patient/{t}.rs"
        for t in (
            "Observation Condition QuestionnaireResponse MedicationRequest MedicationStatement"
            " MedicationDispense ServiceRequest Procedure Encounter"
        ).split()
    ]
    + ["patient/QuestionnaireResponse.c", "patient/Observation.c", "patient/Condition.c"]
)


def _parse_instant(value: str) -> datetime:
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _check_allowlist_entry(entry: str) -> str:
    if entry == "*":
        return entry
    parts = urlsplit(entry)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"allowlist entry {entry!r} is not '*' or scheme://host[:port][/path]")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"allowlist entry {entry!r} may not carry query, fragment or userinfo")
    return entry.rstrip("/") if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}"


class Settings(BaseSettings):
    """The contract's settings plus a few operational limits with safe defaults."""

    model_config = SettingsConfigDict(env_prefix="FHIR_SERVICE_", extra="ignore", frozen=True)

    now: datetime | None = None
    auth: Literal["jwt", "off"] = "jwt"
    trusted_issuers: Path | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    fhir_server_allowlist: Annotated[tuple[str, ...], NoDecode] = ()
    database_url: str = "sqlite:///./var/fhir_service.db"
    log_level: str = "INFO"

    # Operational limits (not in the contract; documented in the README).
    definitions_dir: Path = DEFAULT_DEFINITIONS
    max_body_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    max_resources: int = Field(default=5000, gt=0)
    max_json_depth: int = Field(default=64, gt=0)
    prefetch_deadline_seconds: float = Field(default=4.0, gt=0, le=10)
    upstream_max_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    upstream_max_pages: int = Field(default=5, gt=0)
    evaluation_concurrency: int = Field(default=2, gt=0)

    # SMART App Launch of the assessment form (docs/smart-launch.md); no launch URL = no links.
    smart_launch_url: str | None = None
    smart_client_id: str = "muscle-spasm-assessment"
    smart_redirect_uri: str | None = None
    smart_scopes: str = DEFAULT_SMART_SCOPES

    @field_validator("now", mode="before")
    @classmethod
    def _now(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            return _parse_instant(value)
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("smart_launch_url", "smart_redirect_uri", mode="before")
    @classmethod
    def _smart_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            parts = urlsplit(value.strip())
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise ValueError("must be an absolute http(s) URL without a fragment")
            return value.strip()
        return value

    @field_validator("smart_client_id", "smart_scopes")
    @classmethod
    def _smart_tokens(cls, value: str, info: ValidationInfo) -> str:
        tokens = value.split()
        if not tokens or any(not t.isprintable() or '"' in t or "\\" in t for t in tokens):
            raise ValueError("must be non-empty printable text (RFC 6749 §3.3 scope tokens)")
        if info.field_name == "smart_client_id" and len(tokens) != 1:
            raise ValueError("must be one client id without spaces")
        return " ".join(tokens)

    @field_validator("fhir_server_allowlist", mode="before")
    @classmethod
    def _allowlist(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(_check_allowlist_entry(v) for v in value)

    @field_validator("trusted_issuers", mode="before")
    @classmethod
    def _issuers(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
            raise ValueError("must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
        return level

    def load_trusted_issuers(self) -> dict[str, dict[str, Any]]:
        """Read ``trusted_issuers`` (``{"<iss>": {"jku": url} | {"jwks": {...}}}``)."""
        if self.trusted_issuers is None:
            return {}
        data = json.loads(self.trusted_issuers.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("FHIR_SERVICE_TRUSTED_ISSUERS must hold a JSON object")
        for iss, binding in data.items():
            if not isinstance(binding, dict) or len(set(binding) & {"jku", "jwks"}) != 1:
                raise ValueError(f"issuer {iss!r} needs exactly one of 'jku' or 'jwks'")
        return data
