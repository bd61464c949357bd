"""HTTP face of ``ValueSet/$expand`` and ``ValueSet/$validate-code``: parse, call, serialise.

GET takes the operation's parameters from the query string; POST from a ``Parameters`` body
(``coding`` and ``codeableConcept`` only there). Bad input is a 400 OperationOutcome, an
unknown value set a 404. The operations themselves are in ``operations/valueset.py``; the body
is read within the limits by ``deps.JsonBodyDep``, after the ``_format`` check, as elsewhere.

Spec: https://hl7.org/fhir/R4/valueset-operation-expand.html,
https://hl7.org/fhir/R4/valueset-operation-validate-code.html, https://hl7.org/fhir/R4/operations.html.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from fhir_service.api.fhir_rest import check_format
from fhir_service.api.parameters import one, require_parameters
from fhir_service.api.responses import FhirResponse
from fhir_service.deps import JsonBodyDep, RuntimeDep
from fhir_service.errors import InvalidRequest
from fhir_service.operations.valueset import (
    CodingInput,
    ExpandInput,
    ValidateCodeInput,
    ValueSetRef,
    expand,
    validate_code,
)
from fhir_service.runtime import Runtime

router = APIRouter(prefix="/fhir", tags=["Terminology"])

#: ``_format``/``Accept`` checked first, before the body is read (declared before ``JsonBodyDep``).
FormatDep = Annotated[None, Depends(check_format)]

#: Parameter name → the ``value[x]`` it must carry in a POSTed Parameters.
VALUE_TYPES = {
    "url": ("valueUri", "valueCanonical", "valueString"),
    "valueSetVersion": ("valueString",),
    "count": ("valueInteger",),
    "offset": ("valueInteger",),
    "filter": ("valueString",),
    "includeDefinition": ("valueBoolean",),
    "code": ("valueCode", "valueString"),
    "system": ("valueUri", "valueString"),
    "display": ("valueString",),
    "coding": ("valueCoding",),
    "codeableConcept": ("valueCodeableConcept",),
}
UNSUPPORTED = {
    "valueSet": "this server expands and validates against the ValueSets it holds only "
    "(name one by id or url)",
    "context": "validation in a context is not supported",
}


class _Inputs:
    """The operation's inputs, whether from a query string or a Parameters body."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise InvalidRequest(
                f"parameter {name!r} must be a non-empty string", expression=[name]
            )
        return value

    def integer(self, name: str) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(f"{name} must be a non-negative integer", expression=[name])
        return value

    def boolean(self, name: str) -> bool:
        value = self.values.get(name)
        if value in (None, False, "false"):
            return False
        if value in (True, "true"):
            return True
        raise InvalidRequest(f"{name} must be true or false", expression=[name])

    def value_set(self, rid: str | None) -> ValueSetRef:
        url = self.text("url")
        if rid is None and url is None:
            raise InvalidRequest("the ValueSet is named by the 'url' parameter", expression=["url"])
        return ValueSetRef(id=rid, url=None if rid else url, version=self.text("valueSetVersion"))


def _posted_values(body: Any) -> dict[str, Any]:
    """The named values of a Parameters body, each of the type its operation defines."""
    params = require_parameters(body)
    values: dict[str, Any] = {}
    for name in {p["name"] for p in params}:
        if name in UNSUPPORTED:
            raise InvalidRequest(f"parameter {name!r}: {UNSUPPORTED[name]}", expression=[name])
        if name not in VALUE_TYPES:
            continue  # other parameters of the operations (displayLanguage, …) change nothing
        param = one(params, name)
        assert param is not None
        found = [k for k in param if k.startswith("value")]
        if len(found) != 1 or found[0] not in VALUE_TYPES[name]:
            raise InvalidRequest(
                f"parameter {name!r} must carry one of {', '.join(VALUE_TYPES[name])}",
                expression=[name],
            )
        values[name] = param[found[0]]
    return values


def _read(request: Request, body: Any) -> _Inputs:
    if request.method == "GET":
        query = request.query_params
        for name in UNSUPPORTED:
            if name in query:
                raise InvalidRequest(f"parameter {name!r}: {UNSUPPORTED[name]}", expression=[name])
        for name in ("coding", "codeableConcept"):
            if name in query:
                raise InvalidRequest(
                    f"{name} is a POST parameter (Parameters body)", expression=[name]
                )
        for name in VALUE_TYPES:
            if len(query.getlist(name)) > 1:
                raise InvalidRequest(f"parameter {name!r} may appear only once", expression=[name])
        return _Inputs({k: v for k, v in query.items() if k in VALUE_TYPES})
    return _Inputs(_posted_values(body))


def _coding(value: Any, where: str) -> CodingInput:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{where} must be a Coding", expression=[where])
    system, code, display = value.get("system"), value.get("code"), value.get("display")
    if not isinstance(system, str) or not system or not isinstance(code, str) or not code:
        raise InvalidRequest(f"{where} needs a system and a code", expression=[where])
    if display is not None and not isinstance(display, str):
        raise InvalidRequest(f"{where}.display must be a string", expression=[f"{where}.display"])
    return CodingInput(system, code, display)


def _codings(inputs: _Inputs) -> tuple[CodingInput, ...]:
    given = [n for n in ("code", "coding", "codeableConcept") if inputs.values.get(n) is not None]
    if len(given) != 1:
        raise InvalidRequest(
            "give exactly one of code (with system), coding or codeableConcept",
            expression=given or ["code"],
        )
    if given[0] == "code":
        system = inputs.text("system")
        if system is None:
            raise InvalidRequest(
                "parameter 'system' is required with 'code'", expression=["system"]
            )
        return (CodingInput(system, str(inputs.text("code")), inputs.text("display")),)
    if given[0] == "coding":
        return (_coding(inputs.values["coding"], "coding"),)
    concept = inputs.values["codeableConcept"]
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    if not isinstance(codings, list) or not codings:
        raise InvalidRequest(
            "codeableConcept needs at least one coding", expression=["codeableConcept"]
        )
    return tuple(_coding(c, f"codeableConcept.coding[{i}]") for i, c in enumerate(codings))


def _expand(request: Request, runtime: Runtime, body: Any, rid: str | None) -> FhirResponse:
    inputs = _read(request, body)
    call = ExpandInput(
        value_set=inputs.value_set(rid),
        count=inputs.integer("count"),
        offset=inputs.integer("offset") or 0,
        filter=inputs.text("filter"),
        include_definition=inputs.boolean("includeDefinition"),
    )
    now = runtime.now().isoformat(timespec="seconds")
    return FhirResponse(expand(runtime.knowledge, call, now))


def _validate(request: Request, runtime: Runtime, body: Any, rid: str | None) -> FhirResponse:
    inputs = _read(request, body)
    call = ValidateCodeInput(value_set=inputs.value_set(rid), codings=_codings(inputs))
    return FhirResponse(validate_code(runtime.knowledge, call))


@router.get("/ValueSet/$expand", response_class=FhirResponse)
@router.post("/ValueSet/$expand", response_class=FhirResponse)
async def expand_by_url(
    request: Request, runtime: RuntimeDep, _format: FormatDep, body: JsonBodyDep
) -> FhirResponse:
    """Type-level ``$expand`` of the ValueSet whose canonical is ``url``."""
    return _expand(request, runtime, body, None)


@router.get("/ValueSet/{rid}/$expand", response_class=FhirResponse)
@router.post("/ValueSet/{rid}/$expand", response_class=FhirResponse)
async def expand_by_id(
    rid: str, request: Request, runtime: RuntimeDep, _format: FormatDep, body: JsonBodyDep
) -> FhirResponse:
    """Instance-level ``$expand``: every member code with system, code and display."""
    return _expand(request, runtime, body, rid)


@router.get("/ValueSet/$validate-code", response_class=FhirResponse)
@router.post("/ValueSet/$validate-code", response_class=FhirResponse)
async def validate_code_by_url(
    request: Request, runtime: RuntimeDep, _format: FormatDep, body: JsonBodyDep
) -> FhirResponse:
    """Type-level ``$validate-code`` against the ValueSet whose canonical is ``url``."""
    return _validate(request, runtime, body, None)


@router.get("/ValueSet/{rid}/$validate-code", response_class=FhirResponse)
@router.post("/ValueSet/{rid}/$validate-code", response_class=FhirResponse)
async def validate_code_by_id(
    rid: str, request: Request, runtime: RuntimeDep, _format: FormatDep, body: JsonBodyDep
) -> FhirResponse:
    """Instance-level ``$validate-code``: ``result`` and, for a member, its display."""
    return _validate(request, runtime, body, rid)
