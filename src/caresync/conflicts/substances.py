"""Which drugs an allergy to a substance rules out: a small table, extensible.

The built-in table is deliberately small and conservative; it exists so the
allergy-versus-prescription rule has something to check, and is no substitute
for a clinical drug database. Applications pass their own table (or extend
this one with :meth:`SubstanceTable.extended`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_SUBSTANCES", "SubstanceTable", "normalise"]

_WORDS = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
# Rules normalise the same few drug and substance names for every record they check.
_CACHED_TEXT_LENGTH = 200  # longer texts are rare and would make the cache large


def normalise(text: object) -> str:
    """Lower case, words only, single spaces: " Amoxicillin  500 MG" → "amoxicillin 500 mg"."""
    if not isinstance(text, str):
        return ""
    if len(text) <= _CACHED_TEXT_LENGTH:
        return _normalise_short(text)
    return _normalise(text)


def _normalise(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


_normalise_short = functools.lru_cache(maxsize=4096)(_normalise)


@dataclass(frozen=True, slots=True)
class SubstanceTable:
    """Substance (allergen) → drugs that contain it or cross-react with it."""

    drugs_by_substance: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, table: Mapping[str, Iterable[str]]) -> SubstanceTable:
        """Build a table; names are normalised, and each substance also matches itself."""
        built: dict[str, frozenset[str]] = {}
        for substance, drugs in table.items():
            key = normalise(substance)
            built[key] = frozenset({key, *(normalise(d) for d in drugs)})
        return cls(built)

    def extended(self, table: Mapping[str, Iterable[str]]) -> SubstanceTable:
        """A copy with more substances or more drugs for a known substance."""
        merged = {k: set(v) for k, v in self.drugs_by_substance.items()}
        for substance, drugs in SubstanceTable.of(table).drugs_by_substance.items():
            merged.setdefault(substance, set()).update(drugs)
        return SubstanceTable({k: frozenset(v) for k, v in merged.items()})

    def digest(self) -> str:
        """A digest of the table's contents: equal for tables that match alike."""
        canonical = sorted((k, sorted(v)) for k, v in self.drugs_by_substance.items())
        text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def matches(self, substance: object, drug: object) -> bool:
        """True if a patient allergic to ``substance`` should not simply get ``drug``.

        A drug matches when one of the substance's drug names appears in it as whole
        words ("amoxicillin 500 mg capsules" matches "amoxicillin").
        """
        drug_text = f" {normalise(drug)} "
        candidates = self.drugs_by_substance.get(normalise(substance))
        if candidates is None or drug_text.strip() == "":
            return False
        return any(f" {name} " in drug_text for name in candidates)


DEFAULT_SUBSTANCES = SubstanceTable.of(
    {
        "penicillin": [
            "amoxicillin",
            "ampicillin",
            "co-amoxiclav",
            "flucloxacillin",
            "benzylpenicillin",
            "phenoxymethylpenicillin",
            "piperacillin",
            "penicillin v",
        ],
        "cephalosporin": ["cefalexin", "cephalexin", "ceftriaxone", "cefuroxime", "cefazolin"],
        "sulfonamide": ["sulfamethoxazole", "co-trimoxazole", "trimethoprim-sulfamethoxazole"],
        "aspirin": ["acetylsalicylic acid", "ibuprofen", "naproxen", "diclofenac"],
        "nsaid": ["ibuprofen", "naproxen", "diclofenac", "aspirin", "ketorolac"],
        "codeine": ["co-codamol", "morphine"],
        "macrolide": ["erythromycin", "clarithromycin", "azithromycin"],
        "latex": [],
    }
)
