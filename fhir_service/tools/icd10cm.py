"""The ICD-10-CM tabular list (CMS, FY2026) as shipped by the ``simple-icd-10-cm`` package.

Authoring-time only: the package parses the whole tabular list when imported (about 3 s of CPU
and 160 MB of memory), so the running service never imports it; the expansion command
(``expand_valuesets``) and the drift test do. docs/terminology.md "ICD-10-CM source" says why
this package was chosen.

Spec: https://hl7.org/fhir/R4/icd.html (system ``http://hl7.org/fhir/sid/icd-10-cm``, codes
written with their dot as in the tabular list).
"""

from __future__ import annotations

import importlib
import importlib.resources
import re
import warnings
from functools import cache
from types import ModuleType

from fhir_service.engine.terminology.valueset_compose import ICD10CM, ICD10CM_CODE_RE

__all__ = ["ICD10CM", "Icd10Cm", "icd10cm"]

PACKAGE = "simple_icd_10_cm"
VERSION_RE = re.compile(rb"<version>\s*([^<\s]+)\s*</version>")


class Icd10Cm:
    """Codes, displays and descendants of one ICD-10-CM release."""

    def __init__(self, module: ModuleType, version: str, release: str) -> None:
        self._m = module
        #: the fiscal year of the tabular list (``<version>`` of the CMS XML), e.g. ``2026``
        self.version = version
        #: the data file the package ships, e.g. ``icd10c-tabular-April-1-2026.xml``
        self.release = release

    def is_code(self, code: str) -> bool:
        """A category, subcategory or code as printed in the tabular list (not a block)."""
        return bool(
            ICD10CM_CODE_RE.fullmatch(code)
            and self._m.is_valid_item(code)
            and self._m.is_category_or_subcategory(code)
        )

    def display(self, code: str) -> str:
        return str(self._m.get_description(code))

    def descendants(self, code: str) -> list[str]:
        """Every descendant of ``code`` in tabular-list order (7th-character codes included)."""
        return [str(c) for c in self._m.get_descendants(code)]

    @property
    def canonical(self) -> str:
        """``system|version``, as an expansion's ``used-codesystem`` parameter names it."""
        return f"{ICD10CM}|{self.version}"


@cache
def icd10cm() -> Icd10Cm:
    """Load the package once (its import parses the tabular list)."""
    with warnings.catch_warnings():
        # the package reads its data with importlib.resources.read_text, deprecated in 3.11
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(PACKAGE)
    data = importlib.resources.files(f"{PACKAGE}.data")
    tabular = [
        entry for entry in data.iterdir() if re.fullmatch(r"icd10c-tabular-.*\.xml", entry.name)
    ]
    if len(tabular) != 1:
        raise RuntimeError(f"{PACKAGE} ships {len(tabular)} tabular lists; expected one")
    with tabular[0].open("rb") as handle:
        head = handle.read(4096)
    found = VERSION_RE.search(head)
    if found is None:
        raise RuntimeError(f"{tabular[0].name} names no <version>")
    return Icd10Cm(module, found.group(1).decode(), tabular[0].name)
