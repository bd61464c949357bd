"""Authoring command: compute each ValueSet's ``expansion`` from its ``compose`` and write it.

Usage::

    python -m fhir_service.tools.expand_valuesets [--definitions DIR] [--check]
        [--terminology-server URL [--parent-url TEMPLATE]] [ValueSet-id ...]

* Without options, every ``definitions/ValueSet-*.json`` gets the expansion its compose defines:
  listed concepts as written, ICD-10-CM ``is-a``/``descendent-of`` filters expanded from the
  FY2026 tabular list (``tools/icd10cm.py``), excludes applied. Only files whose expansion
  changed are rewritten; an unchanged expansion keeps its ``timestamp``.
* ``--check`` writes nothing and exits 1 listing every ValueSet whose stored expansion differs
  from its compose (the drift test runs the same check).
* ``--terminology-server URL`` first refreshes the SNOMED CT enumerations: for every include
  carrying the ``enumerated-parent`` extension it asks the server's ``ValueSet/$expand`` for
  ``TEMPLATE`` (default the FHIR implicit value set ``{system}?fhir_vs=isa/{code}``, i.e. the
  parent and all its descendants) and adds the codes it returns to that include's concept list
  for review; listed codes the server did not return are kept and reported. The service itself
  never calls a terminology server (clinical-rules R2.3).

Spec: https://hl7.org/fhir/R4/valueset-operation-expand.html, https://hl7.org/fhir/R4/snomedct.html
(implicit value sets), docs/terminology.md "Expansions".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from fhir_service.engine.terminology.valueset_compose import (
    ENUMERATED_PARENT_URL,
    ICD10CM,
    code_key,
    unsupported_compose,
)
from fhir_service.tools.icd10cm import Icd10Cm, icd10cm

DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"
IMPLICIT_ISA = "{system}?fhir_vs=isa/{code}"
PAGE = 1000
FHIR_JSON = "application/fhir+json"


class ExpansionError(Exception):
    """The compose cannot be expanded (an unknown code, an unsupported form)."""


def _entry(system: str, code: str, display: str | None, extension: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if extension:
        entry["extension"] = extension
    entry.update({"system": system, "code": code})
    if display:
        entry["display"] = display
    return entry


def _icd_code(icd: Icd10Cm, code: str, where: str) -> str:
    if not icd.is_code(code):
        raise ExpansionError(
            f"{where}: {code!r} is not an ICD-10-CM code or category of the {icd.version} "
            f"tabular list ({icd.release}); write it with its dot, as printed"
        )
    return code


def _filtered(icd: Icd10Cm, rule: Mapping[str, Any], where: str) -> list[str]:
    """The codes an ICD-10-CM include/exclude's filters select (AND-ed), in tabular order."""
    selected: list[str] | None = None
    for position, flt in enumerate(rule.get("filter") or ()):
        value = _icd_code(icd, str(flt.get("value")), f"{where}.filter[{position}]")
        codes = icd.descendants(value)
        if flt.get("op") == "is-a":
            codes = [value, *codes]
        if selected is None:
            selected = codes
        else:
            keep = set(codes)
            selected = [c for c in selected if c in keep]
    return selected or []


def _rule_entries(icd: Icd10Cm, rule: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    system = str(rule.get("system"))
    out: list[dict[str, Any]] = []
    for index, concept in enumerate(rule.get("concept") or ()):
        code, display = str(concept.get("code")), concept.get("display")
        if system == ICD10CM:
            _icd_code(icd, code, f"{where}.concept[{index}]")
            display = display or icd.display(code)
        out.append(_entry(system, code, display, concept.get("extension")))
    if rule.get("filter"):
        inherited = [
            e for e in rule.get("extension") or () if e.get("url") != ENUMERATED_PARENT_URL
        ]
        out += [
            _entry(system, code, icd.display(code), inherited)
            for code in _filtered(icd, rule, where)
        ]
    return out


def compute_expansion(vs: Mapping[str, Any], icd: Icd10Cm) -> dict[str, Any]:
    """The expansion ``vs.compose`` defines (``identifier`` from its content, no timestamp)."""
    problems = unsupported_compose(vs)
    if problems:
        raise ExpansionError("; ".join(problems))
    compose = vs.get("compose") or {}
    excluded: set[tuple[str, str]] = set()
    for index, rule in enumerate(compose.get("exclude") or ()):
        for entry in _rule_entries(icd, rule, f"compose.exclude[{index}]"):
            excluded.add(code_key(entry["system"], entry["code"]))
    contains: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for index, rule in enumerate(compose.get("include") or ()):
        for entry in _rule_entries(icd, rule, f"compose.include[{index}]"):
            key = code_key(entry["system"], entry["code"])
            if key not in seen and key not in excluded:
                seen.add(key)
                contains.append(entry)
    parameter = []
    if any(entry["system"] == ICD10CM for entry in contains):
        parameter.append({"name": "used-codesystem", "valueUri": icd.canonical})
    digest = hashlib.sha256(
        json.dumps([vs.get("url"), vs.get("version"), parameter, contains]).encode()
    ).hexdigest()
    expansion: dict[str, Any] = {
        "identifier": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, digest)}",
        "timestamp": "",
        "total": len(contains),
    }
    if parameter:
        expansion["parameter"] = parameter
    expansion["contains"] = contains
    return expansion


def _same(stored: Mapping[str, Any] | None, computed: Mapping[str, Any]) -> bool:
    """Equal but for the timestamp (when the expansion was produced)."""
    if not isinstance(stored, Mapping):
        return False
    strip = ("timestamp",)
    return {k: v for k, v in stored.items() if k not in strip} == {
        k: v for k, v in computed.items() if k not in strip
    }


def drift(vs: Mapping[str, Any], icd: Icd10Cm) -> dict[str, Any] | None:
    """The expansion to store when it differs from the stored one (None when it does not)."""
    computed = compute_expansion(vs, icd)
    stored = vs.get("expansion")
    if _same(stored, computed):
        return None
    return computed


# --- SNOMED CT enumerations from a terminology server ---------------------------------------


def server_expansion(
    client: httpx.Client, server: str, url: str, page_size: int = PAGE
) -> list[dict[str, Any]]:
    """Every ``contains`` entry of ``GET [server]/ValueSet/$expand?url=``, page by page."""
    out: list[dict[str, Any]] = []
    while True:
        response = client.get(
            f"{server.rstrip('/')}/ValueSet/$expand",
            params={"url": url, "count": page_size, "offset": len(out)},
            headers={"Accept": FHIR_JSON},
        )
        if response.status_code != 200:
            raise ExpansionError(f"$expand of {url}: HTTP {response.status_code}")
        body = response.json()
        expansion = body.get("expansion") if isinstance(body, dict) else None
        if not isinstance(expansion, dict):
            raise ExpansionError(f"$expand of {url}: the answer holds no expansion")
        page = [c for c in expansion.get("contains") or () if isinstance(c, dict)]
        out += page
        total = expansion.get("total")
        if not page or (isinstance(total, int) and len(out) >= total) or len(page) < page_size:
            return out


def _parents(rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        e["valueCoding"]
        for e in rule.get("extension") or ()
        if e.get("url") == ENUMERATED_PARENT_URL and isinstance(e.get("valueCoding"), dict)
    ]


def refresh_enumerations(
    vs: dict[str, Any], client: httpx.Client, server: str, template: str, page_size: int = PAGE
) -> list[str]:
    """Add to each enumerating include the codes the server expands its parent(s) to.

    Returns the review notes (codes added, listed codes the server did not return).
    """
    notes: list[str] = []
    for index, rule in enumerate((vs.get("compose") or {}).get("include") or ()):
        system = rule.get("system")
        parents = _parents(rule)
        if not parents or not isinstance(system, str):
            continue
        returned: dict[str, str | None] = {}
        for parent in parents:
            url = template.format(system=parent.get("system", system), code=parent.get("code"))
            for item in server_expansion(client, server, url, page_size):
                if item.get("system") == system and isinstance(item.get("code"), str):
                    returned.setdefault(item["code"], item.get("display"))
        concepts = rule.setdefault("concept", [])
        listed = {c.get("code") for c in concepts}
        for code, display in returned.items():
            if code not in listed:
                concepts.append({"code": code, **({"display": display} if display else {})})
                notes.append(f"compose.include[{index}]: added {code} {display or ''}".rstrip())
        for code in sorted(str(c) for c in listed - set(returned)):
            notes.append(f"compose.include[{index}]: {code} kept, not in the server's expansion")
    return notes


# --- the command ----------------------------------------------------------------------------


def _files(definitions: Path, ids: Sequence[str]) -> list[Path]:
    if ids:
        return [definitions / f"ValueSet-{i.removeprefix('ValueSet-')}.json" for i in ids]
    return sorted(definitions.glob("ValueSet-*.json"))


def _write(path: Path, resource: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(resource, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(
    definitions: Path,
    *,
    check: bool = False,
    server: str | None = None,
    template: str = IMPLICIT_ISA,
    ids: Sequence[str] = (),
    transport: httpx.BaseTransport | None = None,
    out: Any = sys.stdout,
    page_size: int = PAGE,
) -> int:
    """Expand (or check) the ValueSets of ``definitions``; 0 when nothing is wrong or left."""
    icd = icd10cm()
    failed = drifted = 0
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    with httpx.Client(timeout=60, transport=transport) as client:
        for path in _files(definitions, ids):
            vs = json.loads(path.read_text(encoding="utf-8"))
            try:
                notes = (
                    refresh_enumerations(vs, client, server, template, page_size) if server else []
                )
                computed = drift(vs, icd)
            except (ExpansionError, httpx.HTTPError, ValueError) as exc:
                print(f"{path.name}: {exc}", file=out)
                failed += 1
                continue
            for note in notes:
                print(f"{path.name}: {note}", file=out)
            if computed is None and not notes:
                continue
            drifted += 1
            if check:
                print(f"{path.name}: stored expansion differs from its compose", file=out)
                continue
            if computed is not None:
                computed["timestamp"] = now
                vs.pop("expansion", None)
                vs["expansion"] = computed
            _write(path, vs)
            print(
                f"{path.name}: expansion written ({len(vs['expansion']['contains'])} codes)",
                file=out,
            )
    if failed:
        return 2
    return 1 if check and drifted else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fhir_service.tools.expand_valuesets", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("ids", nargs="*", help="ValueSet ids (default: all)")
    parser.add_argument("--definitions", type=Path, default=DEFINITIONS)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on drift")
    parser.add_argument(
        "--terminology-server",
        metavar="URL",
        help="FHIR base whose ValueSet/$expand refreshes SNOMED CT enumerations",
    )
    parser.add_argument(
        "--parent-url",
        default=IMPLICIT_ISA,
        metavar="TEMPLATE",
        help="value set to $expand per enumerated parent (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    return run(
        args.definitions,
        check=args.check,
        server=args.terminology_server,
        template=args.parent_url,
        ids=args.ids,
    )


if __name__ == "__main__":
    raise SystemExit(main())
