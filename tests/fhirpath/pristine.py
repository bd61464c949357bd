"""A snapshot of every attribute of every fhirpathpy module, to prove nothing reassigned them.

``snapshot()`` must run before ``fhir_service`` is imported (the tests run it first thing in a
fresh interpreter). It records, per module of the fhirpathpy package, each attribute object, and
the entries of fhirpathpy's mutable tables (the evaluator table, the function registry and its
entries); ``changes(before)`` lists what is no longer the identical object.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from typing import Any

import fhirpathpy

Snapshot = dict[str, Any]


def _modules() -> list[types.ModuleType]:
    names = [fhirpathpy.__name__]
    for info in pkgutil.walk_packages(fhirpathpy.__path__, fhirpathpy.__name__ + "."):
        names.append(info.name)
    return [importlib.import_module(name) for name in sorted(names)]


def _tables() -> dict[str, dict[str, Any]]:
    from fhirpathpy.engine import base_invocation_registry
    from fhirpathpy.engine.evaluators import evaluators

    tables: dict[str, dict[str, Any]] = {"evaluators": dict(evaluators)}
    tables["invocation_registry"] = dict(base_invocation_registry)
    for name, entry in base_invocation_registry.items():
        tables[f"invocation_registry[{name!r}]"] = dict(entry)
    return tables


def snapshot() -> Snapshot:
    """Every module attribute and table entry of fhirpathpy, by identity."""
    attributes = {
        f"{module.__name__}.{name}": value
        for module in _modules()
        for name, value in vars(module).items()
    }
    return {"attributes": attributes, "tables": _tables()}


def changes(before: Snapshot) -> list[str]:
    """What differs from ``before``: reassigned, added or removed attributes and entries."""
    after = snapshot()
    out: list[str] = []
    for kind in ("attributes",):
        old, new = before[kind], after[kind]
        out += [f"reassigned {k}" for k in old if k in new and new[k] is not old[k]]
        out += [f"removed {k}" for k in old if k not in new]
        out += [f"added {k}" for k in new if k not in old and not _submodule(new[k])]
    old_tables, new_tables = before["tables"], after["tables"]
    for table, entries in old_tables.items():
        current = new_tables.get(table, {})
        out += [f"{table}: changed {k}" for k in entries if current.get(k) is not entries[k]]
        out += [f"{table}: added {k}" for k in current if k not in entries]
    return out


def _submodule(value: Any) -> bool:
    """A submodule imported later (lazily) appears as a package attribute: not a patch."""
    return isinstance(value, types.ModuleType)
