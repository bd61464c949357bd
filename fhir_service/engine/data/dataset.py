"""The patient data of one call, indexed once by type and by reference.

Sources are lenient JSON (prefetch values, ``$apply`` ``data`` Bundles, hook context): Bundles are
flattened, resources are de-duplicated by ``Type/id``, and contained resources are reachable by
``#id`` from ``resolve()``. Draft orders are kept apart from the record: they are the orders being
decided, never current medication (docs/authoring.md). Whose data it is and what a reference
names are decided by ``engine.data.patient_data``, as for every other operation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_service.engine.data.patient_data import about_other_patient, resolve_reference

#: Resource types that are not R4 (DSTU2/STU3 names); ignored with a warning.
NON_R4_TYPES = frozenset(
    {
        "MedicationOrder",
        "ProcedureRequest",
        "ReferralRequest",
        "DiagnosticOrder",
        "DeviceUseRequest",
    }
)


def flatten(value: Any) -> Iterable[dict[str, Any]]:
    """Yield the resources in ``value`` (a resource, a Bundle, or a list of either)."""
    if isinstance(value, list):
        for item in value:
            yield from flatten(item)
        return
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return
    if value["resourceType"] == "Bundle":
        entries = value.get("entry")
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict):
                yield from flatten(entry.get("resource"))
        return
    yield value


def bundle_problem(value: Any, path: str) -> str | None:
    """Why ``value`` is not usable as a resource or Bundle of resources (None when it is).

    Checked before indexing so that malformed client data is a 400 naming where it is, rather
    than data silently dropped (``flatten`` skips what it cannot read).
    """
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return f"{path} must be a FHIR resource (a JSON object with a resourceType)"
    if value["resourceType"] != "Bundle" or "entry" not in value:
        return None
    entries = value["entry"]
    if not isinstance(entries, list):
        return f"{path}.entry must be an array"
    for index, entry in enumerate(entries):
        where = f"{path}.entry[{index}]"
        if not isinstance(entry, dict):
            return f"{where} must be an object"
        if "resource" in entry:
            problem = bundle_problem(entry["resource"], f"{where}.resource")
            if problem:
                return problem
    return None


def reference_of(resource: Mapping[str, Any]) -> str | None:
    rid = resource.get("id")
    rtype = resource.get("resourceType")
    if isinstance(rid, str) and isinstance(rtype, str):
        return f"{rtype}/{rid}"
    return None


@dataclass
class DataSet:
    """Resources by type, by ``Type/id``, plus the draft orders of the call."""

    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    by_ref: dict[str, dict[str, Any]] = field(default_factory=dict)
    contained: dict[str, dict[str, Any]] = field(default_factory=dict)
    drafts: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    foreign: int = 0
    #: id() of each ``#``-Reference object → the contained resources of the resource holding it
    _owners: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.by_type.values()) + len(self.drafts)

    def add(self, resource: dict[str, Any]) -> None:
        """Add one record resource (de-duplicated by ``Type/id``)."""
        rtype = resource["resourceType"]
        if rtype in NON_R4_TYPES:
            self.ignored.append(rtype)
            return
        ref = reference_of(resource)
        if ref is not None:
            if ref in self.by_ref:
                return
            self.by_ref[ref] = resource
        self.by_type[rtype].append(resource)
        self._index_contained(resource)

    def add_draft(self, resource: dict[str, Any]) -> None:
        """Add an order being decided (hook ``draftOrders``, or a ``draft`` in ``$apply`` data)."""
        if resource["resourceType"] in NON_R4_TYPES:
            self.ignored.append(resource["resourceType"])
            return
        self.drafts.append(resource)
        ref = reference_of(resource)
        if ref is not None:
            self.by_ref.setdefault(ref, resource)
        self._index_contained(resource)

    def _index_contained(self, resource: Mapping[str, Any]) -> None:
        local: dict[str, dict[str, Any]] = {}
        for inner in resource.get("contained") or ():
            if isinstance(inner, dict) and isinstance(inner.get("id"), str):
                self.contained.setdefault("#" + inner["id"], inner)
                local["#" + inner["id"]] = inner
        if not local:
            return
        stack: list[Any] = [v for k, v in resource.items() if k != "contained"]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("reference"), str) and node["reference"].startswith("#"):
                    self._owners[id(node)] = local
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)

    def resolve_scoped(self, reference: Mapping[str, Any]) -> dict[str, Any] | None:
        """Resolve a ``#id`` Reference within the resource that holds this Reference object.

        The data of a call is indexed once, so the Reference objects fhirpathpy hands to
        ``resolve()`` are the very ones indexed here; an unknown object (a copy) falls back to
        the call-wide ``#id`` index.
        """
        target = reference.get("reference")
        if not isinstance(target, str):
            return None
        owner = self._owners.get(id(reference))
        if owner is not None:
            return owner.get(target)
        return self.contained.get(target)

    def resolve(self, reference: str) -> dict[str, Any] | None:
        """The resource a reference names: ``#id``, ``Type/id`` or an absolute URL ending so."""
        return resolve_reference(reference, self.by_ref, self.contained)

    def patient(self, patient_id: str | None) -> dict[str, Any] | None:
        if patient_id:
            found = self.by_ref.get(f"Patient/{patient_id}")
            if found is not None:
                return found
        patients = self.by_type.get("Patient") or []
        return patients[0] if len(patients) == 1 else None

    def is_draft(self, resource: Mapping[str, Any]) -> bool:
        return any(resource is d for d in self.drafts)


def build_data_set(
    record: Iterable[Any],
    drafts: Iterable[Any] = (),
    *,
    drafts_from_status: bool = False,
    patient_id: str | None = None,
) -> DataSet:
    """Index ``record`` and ``drafts``.

    Args:
        record: resources or Bundles of the patient's record.
        drafts: the orders being decided (hook ``context.draftOrders``).
        drafts_from_status: ``$apply`` semantics: a record resource whose ``status`` is
            ``draft`` is an order being decided.
        patient_id: the call's patient; resources about another patient are left out
            (counted in ``foreign``).
    """
    data = DataSet()
    for resource in flatten(list(drafts)):
        if about_other_patient(resource, patient_id):
            data.foreign += 1
            continue
        data.add_draft(resource)
    for resource in flatten(list(record)):
        if about_other_patient(resource, patient_id):
            data.foreign += 1
        elif drafts_from_status and resource.get("status") == "draft":
            data.add_draft(resource)
        else:
            data.add(resource)
    return data
