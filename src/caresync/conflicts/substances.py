"""Which drugs an allergy rules out: a substance table, and how names are matched.

A table holds **classes** (penicillins, NSAIDs, ...; each with the names of the
class itself, its members and how they relate) and **substances** (a generic
drug with its synonyms and brand names; a combination product with the
substances it contains). The bundled table, :data:`DEFAULT_SUBSTANCES`, is data
(``caresync/conflicts/data/substances.json``, its sources named in the file),
loaded once at import. It covers the common drug-allergy classes and is no
substitute for a clinical drug database: :meth:`SubstanceTable.recognises`
says when an allergen is not in it, and the allergy rule reports such an
allergen as not checked. Applications pass their own table
(:meth:`SubstanceTable.from_data`, or :meth:`SubstanceTable.extended`).

Matching an allergen ("Penicilin allergy", "allergic to sulfa drugs",
"Augmentin") normalises case, punctuation and spacing, strips words such as
"allergy to", "intolerance" or a reaction ("rash", "anaphylaxis"), reads
plurals, and tolerates small misspellings of the table's names (an
optimal-string-alignment distance of 1 for names of 5 to 8 letters, 2 for
longer ones, none for shorter ones, and only when exactly one name of the
table is that close and no known drug outside it is). A drug ("Augmentin 625 mg
tablets") is read the same way, name by name. A substance always matches
itself, even one the table does not know.

Everything here is pure: the same answer for the same table and texts, on
every replica. Answers are kept in small bounded caches, since the allergy
rule asks about the same names after every merge.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, NamedTuple

from caresync.exceptions import InvalidInputError

__all__ = [
    "DEFAULT_SUBSTANCES",
    "TABLE_FORMAT",
    "Match",
    "MatchKind",
    "Reading",
    "SubstanceTable",
    "normalise",
]

TABLE_FORMAT = "caresync-substances/1"
"""The ``format`` of a substance table's data (see :meth:`SubstanceTable.from_data`)."""

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


# ------------------------------------------------------------------ public answers


class MatchKind(StrEnum):
    """Why an allergy rules a drug out."""

    SAME = "same"
    """The drug contains the allergen itself (or a product containing it)."""
    CLASS = "class"
    """The drug belongs to the class the allergy covers: as serious as the allergy."""
    CROSS_REACTIVITY = "cross-reactivity"
    """The drug may cross-react (a cephalosporin for a penicillin allergy): flagged only."""


@dataclass(frozen=True, slots=True)
class Match:
    """Why an allergen rules out a drug: what :meth:`SubstanceTable.match` returns."""

    kind: MatchKind
    substance: str
    """The substance of the drug involved ("amoxicillin" for "Augmentin 625 mg")."""
    allergen: str
    """What the allergen was read as: a class ("penicillins") or a substance."""
    reason: str
    """One phrase a clinician can read: "it contains cefalexin, a cephalosporin: ..."."""
    corrected: bool = False
    """The allergen or the drug was read through a misspelling ("Penicilin")."""

    @property
    def cross_reactivity(self) -> bool:
        """True when the drug only may cross-react (never more than a flag)."""
        return self.kind is MatchKind.CROSS_REACTIVITY


@dataclass(frozen=True, slots=True)
class Reading:
    """How a table reads an allergen: what it recognised in it, and what not."""

    recognised: tuple[str, ...]
    """Classes and substances the allergen was read as ("penicillins", "co-amoxiclav")."""
    unrecognised: tuple[str, ...]
    """Parts of the text the table does not know (the whole text if nothing was known)."""
    corrected: bool = False
    """A misspelling was read as one of the table's names."""
    anaphylaxis: bool = False
    """The text itself mentions anaphylaxis ("penicillin - anaphylaxis")."""


# ------------------------------------------------------------------ text


# Letters and digits are separate words: a dose typed against the name
# ("Amoxicillin500mg", "Augmentin625") must not hide the name.
_TOKEN = re.compile(r"[^\W\d_]+|\d+")


def _tokens(text: str) -> tuple[str, ...]:
    """Words of a text: accents dropped, lower case, split at anything not a letter or
    digit and between letters and digits ("amoxicillin500mg": amoxicillin, 500, mg)."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return tuple(_TOKEN.findall(plain))


def _key(text: str) -> str:
    return " ".join(_tokens(text))


# Words around an allergen that do not name it: stripped from both ends of a text.
_FILLER: frozenset[tuple[str, ...]] = frozenset(
    tuple(phrase.split())
    for phrase in [
        "allergy",
        "allergies",
        "allergic",
        "allergen",
        "allergy to",
        "allergies to",
        "allergic to",
        "allergic reaction",
        "allergic reactions",
        "allergic reaction to",
        "intolerance",
        "intolerances",
        "intolerant",
        "intolerance to",
        "intolerant to",
        "intolerance of",
        "hypersensitivity",
        "hypersensitivity to",
        "hypersensitive to",
        "sensitivity",
        "sensitivity to",
        "sensitive to",
        "reaction",
        "reactions",
        "reaction to",
        "adverse reaction",
        "adverse reaction to",
        "adverse drug reaction",
        "adverse drug reaction to",
        "adverse effect",
        "side effect",
        "side effects",
        "adr",
        "adr to",
        "history of",
        "h o",
        "hx",
        "hx of",
        "known",
        "suspected",
        "possible",
        "probable",
        "confirmed",
        "severe",
        "mild",
        "moderate",
        "true",
        "drug",
        "drugs",
        "medication",
        "medications",
        "medicine",
        "medicines",
        "antibiotic",
        "antibiotics",
        "antibacterial",
        "antibacterials",
        "class",
        "group",
        "family",
        "type",
        "derivative",
        "derivatives",
        "product",
        "products",
        "containing",
        "to",
        "of",
        "all",
        "any",
        "the",
        "patient",
        "pt",
        "reports",
        "causes",
        "caused",
        "rash",
        "rashes",
        "hives",
        "urticaria",
        "itch",
        "itching",
        "itchy",
        "pruritus",
        "swelling",
        "angioedema",
        "anaphylaxis",
        "anaphylactic",
        "anaphylactic shock",
        "anaphylactic reaction",
        "anaphylactoid",
        "anaphylactoid reaction",
        "shock",
        "nausea",
        "vomiting",
        "diarrhoea",
        "diarrhea",
        "gi upset",
        "upset stomach",
        "wheeze",
        "wheezing",
        "bronchospasm",
        "sjs",
        "stevens johnson syndrome",
        "stevens johnson",
        "toxic epidermal necrolysis",
        "unknown",
        "unknown reaction",
        "reaction unknown",
        "not known",
        "childhood",
        "as a child",
        "in childhood",
    ]
)
_FILLER_LONGEST = max(len(p) for p in _FILLER)
# Separators of several allergens in one text ("penicillin, sulfa"), tried only when
# the whole text is not a name ("trimethoprim/sulfamethoxazole" is one).
_SPLIT = re.compile(r"[,;/+&|\n]+|\b(?:and|or|with)\b", re.IGNORECASE)
# A name right after these words, or right before "free", is not there ("latex-free").
_NEGATING_BEFORE = frozenset({"non", "no", "without"})
_NEGATING_AFTER = frozenset({"free"})
_MIN_FUZZY = 5  # letters: shorter names are never read through a misspelling
_LONG_NAME = 9  # letters: from here two edits are tolerated, below one
_FUZZY_PREFIX = 7  # letters of each name indexed for misspellings


def _strip_filler(tokens: tuple[str, ...]) -> tuple[str, ...]:
    changed = True
    while tokens and changed:
        changed = False
        for n in range(min(_FILLER_LONGEST, len(tokens)), 0, -1):
            if tokens[:n] in _FILLER:
                tokens, changed = tokens[n:], True
                break
            if tokens[-n:] in _FILLER:
                tokens, changed = tokens[:-n], True
                break
    return tokens


def _singular_variants(tokens: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """ "penicillins" → "penicillin", "ace inhibitors" → "ace inhibitor"."""

    def singular(word: str) -> str:
        if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
            return word[:-1]
        return word

    last = (*tokens[:-1], singular(tokens[-1]))
    every = tuple(singular(t) for t in tokens)
    yield last
    if every != last:
        yield every


def _budget(length: int) -> int:
    """How many edits a name of this length tolerates."""
    if length < _MIN_FUZZY:
        return 0
    return 1 if length < _LONG_NAME else 2


def _deletions(word: str, depth: int) -> set[str]:
    found = {word}
    frontier = {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        found |= frontier
    return found


def osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment (restricted Damerau-Levenshtein) distance, capped.

    Insertions, deletions, substitutions and swaps of two adjacent letters each
    cost one; any distance over ``limit`` is returned as ``limit + 1``.
    """
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                value = min(value, before[j - 2] + 1)
            current[j] = value
        if min(current) > limit:
            return limit + 1
        before, previous = previous, current
    return min(previous[-1], limit + 1)


# ------------------------------------------------------------------ the model

# A node of the table: ("c", class id), ("s", substance id) or ("o", other name).
_Node = tuple[str, str]
_MEMBER_ALLERGY = ("class", "cross-reactivity", "self")


@dataclass(frozen=True, slots=True)
class _Class:
    id: str
    label: str
    member_label: str
    terms: frozenset[str]
    members: frozenset[str]
    includes: frozenset[str]
    member_allergy: str
    cross_classes: frozenset[str]
    cross_members: frozenset[str]
    sources: str


@dataclass(frozen=True, slots=True)
class _Substance:
    id: str
    names: frozenset[str]
    contains: frozenset[str]


class _Why(NamedTuple):
    """Why an allergy rules out one substance; the smallest is the best explanation."""

    rank: int  # 0 same, 1 class, 2 cross-reactivity
    member_class: str  # the class whose member label describes the substance, or ""
    cross_from: str  # the class it may cross-react with, or ""
    like: str  # the allergen's own substance, when the relation goes through its class
    allergen: str  # what the allergen was read as


_KINDS = (MatchKind.SAME, MatchKind.CLASS, MatchKind.CROSS_REACTIVITY)


class _Part(NamedTuple):
    tokens: tuple[str, ...]
    nodes: frozenset[_Node]
    corrected: bool


class _AllergenReading(NamedTuple):
    public: Reading
    parts: tuple[_Part, ...]
    literals: tuple[tuple[str, ...], ...]  # every part's own words: a name matches itself


class _Hit(NamedTuple):
    nodes: frozenset[_Node]
    corrected: bool


class _Scan(NamedTuple):
    tokens: tuple[str, ...]
    hits: tuple[_Hit, ...]


_CACHE_SIZE = 8192
_UNSET: Any = object()


class SubstanceTable:
    """Substances and classes, and which drugs an allergy to each rules out.

    Build one with :meth:`from_data` (the bundled table's format), :meth:`of`
    (a plain mapping: allergen → drugs it rules out) or :meth:`extended`.
    Tables are immutable; equal when their digests are.
    """

    __slots__ = (
        "_by_compact",
        "_by_key",
        "_cache_pairs",
        "_cache_readings",
        "_cache_ruled",
        "_cache_scans",
        "_classes",
        "_classes_of",
        "_digest",
        "_expanded",
        "_fuzzy",
        "_ingredients",
        "_max_words",
        "_meta",
        "_other",
        "_substances",
    )

    def __init__(
        self,
        classes: Mapping[str, _Class],
        substances: Mapping[str, _Substance],
        other: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Internal: use :meth:`from_data`, :meth:`of` or :meth:`extended`."""
        self._classes = dict(sorted(classes.items()))
        self._substances = dict(sorted(substances.items()))
        self._other = frozenset(_key(o) for o in other if _key(o))
        self._meta = dict(meta or {})
        self._check()
        by_key: dict[str, set[_Node]] = {}
        for cid, cls in self._classes.items():
            for term in cls.terms:
                by_key.setdefault(term, set()).add(("c", cid))
        for sid, sub in self._substances.items():
            for name in sub.names:
                by_key.setdefault(name, set()).add(("s", sid))
        for name in self._other:
            if name in by_key:
                raise InvalidInputError(f"substance table: {name!r} is both a table name and other")
            by_key[name] = {("o", name)}
        self._by_key = {k: frozenset(v) for k, v in by_key.items()}
        by_compact: dict[str, set[_Node]] = {}
        for key, nodes in self._by_key.items():
            by_compact.setdefault(key.replace(" ", ""), set()).update(nodes)
        self._by_compact = {k: frozenset(v) for k, v in by_compact.items()}
        self._max_words = max((k.count(" ") + 1 for k in self._by_key), default=1)
        self._classes_of: dict[str, tuple[str, ...]] = {}
        for cid, cls in self._classes.items():
            for member in cls.members:
                self._classes_of[member] = (*self._classes_of.get(member, ()), cid)
        self._expanded = {cid: self._expand(cid) for cid in self._classes}
        self._ingredients = {sid: self._ingredients_of(sid) for sid in self._substances}
        self._digest: str | None = None
        self._fuzzy: dict[str, tuple[str, ...]] | None = None  # built on first misspelling
        self._cache_readings: dict[object, _AllergenReading] = {}
        self._cache_scans: dict[str, _Scan] = {}
        self._cache_ruled: dict[frozenset[_Node], dict[str, _Why]] = {}
        self._cache_pairs: dict[tuple[str, str], Match | None] = {}

    # -------------------------------------------------------------- building

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> SubstanceTable:
        """A table from data in the bundled table's format (parsed JSON).

        ``{"format": "caresync-substances/1", "classes": [...], "substances": {...},
        "other_names": [...]}``; see ``caresync/conflicts/data/substances.json``
        and docs/conflicts.md. Raises InvalidInputError naming what is wrong.
        """
        if not isinstance(data, Mapping) or data.get("format") != TABLE_FORMAT:
            raise InvalidInputError(f"substance table: 'format' must be {TABLE_FORMAT!r}")
        names: dict[str, set[str]] = {}
        contains: dict[str, set[str]] = {}

        def add_substance(raw_id: object, spec: object, where: str) -> str:
            sid = _display(raw_id, where)
            if isinstance(spec, Mapping):
                listed, parts = spec.get("names", []), spec.get("contains")
            else:
                listed, parts = spec, None
            names.setdefault(sid, {_key(sid)}).update(_keys(listed, f"{where}: {sid}"))
            if parts is not None:
                contains.setdefault(sid, set()).update(
                    _display(p, f"{where}: {sid}") for p in _list(parts, f"{where}: {sid}")
                )
            return sid

        built: dict[str, dict[str, Any]] = {}
        for raw in _list(data.get("classes", []), "classes"):
            if not isinstance(raw, Mapping):
                raise InvalidInputError(f"substance table: a class must be an object, got {raw!r}")
            cid = _display(raw.get("id"), "class id")
            if cid in built:
                raise InvalidInputError(f"substance table: class {cid!r} is given twice")
            where = f"class {cid}"
            members: set[str] = set()
            raw_members = raw.get("members", {})
            if not isinstance(raw_members, Mapping):
                raise InvalidInputError(f"substance table: {where}: members must be an object")
            for member, spec in raw_members.items():
                sid = add_substance(member, spec, where)
                is_product = isinstance(spec, Mapping) and spec.get("contains") is not None
                if not is_product:
                    members.add(sid)
            allergy = raw.get("member_allergy", "class")
            if allergy not in _MEMBER_ALLERGY:
                raise InvalidInputError(
                    f"substance table: {where}: member_allergy must be one of {_MEMBER_ALLERGY}"
                )
            label = _text(raw.get("label", cid), f"{where}: label")
            built[cid] = {
                "label": label,
                "member_label": _text(raw.get("member_label", f"listed under {label}"), where),
                "terms": {_key(cid), *_keys(raw.get("terms", []), f"{where}: terms")},
                "members": members,
                "includes": {_display(c, where) for c in _list(raw.get("includes", []), where)},
                "member_allergy": allergy,
                "cross_classes": {
                    _display(c, where) for c in _list(raw.get("cross_reactive_classes", []), where)
                },
                "cross_members": {
                    _display(c, where) for c in _list(raw.get("cross_reactive_members", []), where)
                },
                "sources": _text(raw.get("sources", ""), f"{where}: sources"),
            }
        raw_substances = data.get("substances", {})
        if not isinstance(raw_substances, Mapping):
            raise InvalidInputError("substance table: 'substances' must be an object")
        for sid, spec in raw_substances.items():
            add_substance(sid, spec, "substances")
        classes = {
            cid: _Class(
                id=cid,
                label=c["label"],
                member_label=c["member_label"],
                terms=frozenset(c["terms"]),
                members=frozenset(c["members"]),
                includes=frozenset(c["includes"]),
                member_allergy=c["member_allergy"],
                cross_classes=frozenset(c["cross_classes"]),
                cross_members=frozenset(c["cross_members"]),
                sources=c["sources"],
            )
            for cid, c in built.items()
        }
        substances = {
            sid: _Substance(sid, frozenset(n), frozenset(contains.get(sid, ())))
            for sid, n in names.items()
        }
        other = _keys(data.get("other_names", []), "other_names")
        meta = {k: data[k] for k in ("title", "notice", "sources") if k in data}
        return cls(classes, substances, other, meta)

    @classmethod
    def from_json(cls, text: str | bytes) -> SubstanceTable:
        """A table from the JSON text of a file in the bundled table's format."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidInputError(f"substance table: not JSON ({exc})") from exc
        return cls.from_data(data)

    @classmethod
    def of(cls, table: Mapping[str, Iterable[str]]) -> SubstanceTable:
        """A table from a plain mapping: an allergen → the drugs an allergy to it rules out.

        Each allergen becomes a class whose members are the drugs; an allergy to
        one of the drugs rules out only that drug. Names are normalised.
        """
        return cls({}, {}).extended(table)

    def extended(self, table: Mapping[str, Iterable[str]]) -> SubstanceTable:
        """A copy with more allergens, or more drugs ruled out by a known one.

        A key that names a class of this table adds the drugs to it as members
        (``{"penicillin": ["newcillin"]}``); any other key becomes a class of its
        own. A drug already known keeps what it is; a new one is a new substance.
        """
        classes = dict(self._classes)
        substances = dict(self._substances)
        for raw_key, drugs in table.items():
            cid = _display(raw_key, "allergen")
            key = _key(cid)
            existing = sorted(n for n in self._lookup(key) if n[0] == "c")
            target = existing[0][1] if existing else cid
            current = classes.get(target)
            members: set[str] = set(current.members) if current else set()
            includes: set[str] = set(current.includes) if current else set()
            for raw_drug in _list(list(drugs), f"drugs of {cid}"):
                drug = _display(raw_drug, f"drugs of {cid}")
                known = sorted(self._lookup(_key(drug)))
                if any(kind == "o" for kind, _ in known):
                    raise InvalidInputError(f"substance table: {drug!r} is listed as other_names")
                if not known:
                    known = [("s", drug)]
                    if drug not in substances:
                        substances[drug] = _Substance(drug, frozenset({_key(drug)}), frozenset())
                for kind, ident in known:
                    if kind == "s":
                        members.add(ident)
                    elif ident != target:
                        includes.add(ident)
            if current is None:
                classes[target] = _Class(
                    id=target,
                    label=cid,
                    member_label=f"listed under {cid}",
                    terms=frozenset({key}),
                    members=frozenset(members),
                    includes=frozenset(includes),
                    member_allergy="self",
                    cross_classes=frozenset(),
                    cross_members=frozenset(),
                    sources="",
                )
            else:
                classes[target] = _Class(
                    id=current.id,
                    label=current.label,
                    member_label=current.member_label,
                    terms=current.terms,
                    members=frozenset(members),
                    includes=frozenset(includes),
                    member_allergy=current.member_allergy,
                    cross_classes=current.cross_classes,
                    cross_members=current.cross_members,
                    sources=current.sources,
                )
        return SubstanceTable(classes, substances, self._other, self._meta)

    def to_data(self) -> dict[str, Any]:
        """The table as data in the bundled format (JSON-ready, canonical order).

        ``SubstanceTable.from_data(table.to_data())`` is an equal table.
        """
        members = {m for c in self._classes.values() for m in c.members}

        def spec(sub: _Substance) -> object:
            listed = sorted(sub.names - {_key(sub.id)})
            if sub.contains:
                return {"names": listed, "contains": sorted(sub.contains)}
            return listed

        classes = [
            {
                "id": c.id,
                "label": c.label,
                "member_label": c.member_label,
                "terms": sorted(c.terms - {_key(c.id)}),
                "member_allergy": c.member_allergy,
                "includes": sorted(c.includes),
                "cross_reactive_classes": sorted(c.cross_classes),
                "cross_reactive_members": sorted(c.cross_members),
                "sources": c.sources,
                "members": {m: spec(self._substances[m]) for m in sorted(c.members)},
            }
            for c in self._classes.values()
        ]
        return {
            "format": TABLE_FORMAT,
            **self._meta,
            "classes": classes,
            "substances": {
                sid: spec(sub) for sid, sub in self._substances.items() if sid not in members
            },
            "other_names": sorted(self._other),
        }

    def _check(self) -> None:
        for cls in self._classes.values():
            for ref in (*cls.includes, *cls.cross_classes):
                if ref not in self._classes:
                    raise InvalidInputError(f"substance table: class {cls.id}: no class {ref!r}")
            for ref in (*cls.members, *cls.cross_members):
                if ref not in self._substances:
                    raise InvalidInputError(
                        f"substance table: class {cls.id}: no substance {ref!r}"
                    )
        for sub in self._substances.values():
            for ref in sub.contains:
                if ref not in self._substances:
                    raise InvalidInputError(
                        f"substance table: {sub.id} contains {ref!r}, which is no substance"
                    )
        seen: dict[str, str] = {}
        for sub in self._substances.values():
            for name in sub.names:
                if seen.setdefault(name, sub.id) != sub.id:
                    raise InvalidInputError(
                        f"substance table: {name!r} names both {seen[name]!r} and {sub.id!r}"
                    )
        terms: dict[str, str] = {}
        for cls in self._classes.values():
            for term in cls.terms:
                if terms.setdefault(term, cls.id) != cls.id:
                    raise InvalidInputError(
                        f"substance table: {term!r} names two classes, "
                        f"{terms[term]!r} and {cls.id!r}"
                    )

    def _expand(self, cid: str, seen: frozenset[str] = frozenset()) -> dict[str, str]:
        """Every substance of a class (with included classes): substance → its own class."""
        if cid in seen:
            return {}
        cls = self._classes[cid]
        found = {m: cid for m in sorted(cls.members)}
        for inner in sorted(cls.includes):
            for m, owner in self._expand(inner, seen | {cid}).items():
                found.setdefault(m, owner)
        return found

    def _ingredients_of(self, sid: str) -> frozenset[str]:
        found = {sid}
        todo = [sid]
        while todo:
            for part in self._substances[todo.pop()].contains:
                if part not in found:
                    found.add(part)
                    todo.append(part)
        return frozenset(found)

    # -------------------------------------------------------------- identity

    def digest(self) -> str:
        """A digest of the table's contents: equal for tables that match alike."""
        if self._digest is None:
            data = self.to_data()
            for key in self._meta:
                data.pop(key, None)  # titles and sources do not change what matches
            text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        return self._digest

    @property
    def sources(self) -> tuple[str, ...]:
        """The sources the table's data names (empty for a table built by :meth:`of`)."""
        raw = self._meta.get("sources", [])
        if not isinstance(raw, list):
            return ()
        return tuple(str(s.get("name", "")) if isinstance(s, Mapping) else str(s) for s in raw if s)

    @property
    def classes(self) -> tuple[str, ...]:
        """The ids of the table's classes, sorted."""
        return tuple(self._classes)

    def names(self) -> frozenset[str]:
        """Every name the table knows (normalised): class terms, substances, synonyms."""
        return frozenset(k for k, nodes in self._by_key.items() if all(n[0] != "o" for n in nodes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubstanceTable):
            return NotImplemented
        return self.digest() == other.digest()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        return (
            f"<SubstanceTable {len(self._classes)} classes, {len(self._substances)} substances, "
            f"digest {self.digest()[:12]}>"
        )

    # -------------------------------------------------------------- asking

    def read(self, allergen: object) -> Reading:
        """How the table reads an allergen's text: what it recognised, and what not."""
        return self._read(allergen).public

    def recognises(self, allergen: object) -> bool:
        """True when every part of the allergen names a class or substance of the table.

        An allergen not recognised still matches a drug that names it, but
        nothing related to it is checked.
        """
        reading = self._read(allergen).public
        return bool(reading.recognised) and not reading.unrecognised

    def matches(self, substance: object, drug: object) -> bool:
        """True if a patient allergic to ``substance`` should not simply get ``drug``."""
        return self.match(substance, drug) is not None

    def match(self, allergen: object, drug: object) -> Match | None:
        """Why an allergy to ``allergen`` rules out ``drug``, or None.

        The best reason wins: the substance itself, then its class, then
        possible cross-reactivity.
        """
        if not isinstance(allergen, str) or not isinstance(drug, str):
            return None
        pair = (allergen, drug)
        cached = self._cache_pairs.get(pair, _UNSET)
        if cached is not _UNSET:
            return cached if isinstance(cached, Match) else None
        result = self._match(self._read(allergen), self._scan(drug))
        _remember(self._cache_pairs, pair, result)
        return result

    # -------------------------------------------------------------- internals

    def _lookup(self, key: str) -> frozenset[_Node]:
        found = self._by_key.get(key)
        if found is None and key:
            found = self._by_compact.get(key.replace(" ", ""))
        return found or frozenset()

    def _read(self, allergen: object) -> _AllergenReading:
        cached = self._cache_readings.get(allergen) if isinstance(allergen, str) else None
        if cached is not None:
            return cached
        if not isinstance(allergen, str):
            text = json.dumps(allergen, ensure_ascii=False, default=str)
            return _AllergenReading(Reading((), (text,)), (), ())
        reading = self._read_text(allergen)
        _remember(self._cache_readings, allergen, reading)
        return reading

    def _read_text(self, text: str) -> _AllergenReading:
        tokens = _tokens(text)
        anaphylaxis = any(t.startswith("anaphyla") for t in tokens)
        parts: list[_Part] = []
        unknown: list[str] = []
        stripped = _strip_filler(tokens)
        exact = self._lookup(" ".join(tokens))
        whole = _table_part(tokens, exact, False) if exact else self._read_name(stripped)
        if whole is not None:
            parts.append(whole)
        elif stripped:
            pieces = [p for p in _SPLIT.split(text) if p and p.strip()]
            for piece in pieces if len(pieces) > 1 else [text]:
                words = _strip_filler(_tokens(piece))
                if not words:
                    continue
                part = self._read_name(words) or self._read_scanned(words)
                if part is None:
                    unknown.append(piece.strip(" \t\r\n.:()[]{}\"'"))
                    parts.append(_Part(words, frozenset(), False))
                else:
                    parts.append(part)
        if not parts:
            unknown.append(text.strip())
        recognised = sorted({self._label(n) for p in parts for n in p.nodes})
        public = Reading(
            recognised=tuple(recognised),
            unrecognised=tuple(u for u in unknown if u) or (() if recognised else (text,)),
            corrected=any(p.corrected for p in parts),
            anaphylaxis=anaphylaxis,
        )
        literals = tuple(p.tokens for p in parts if p.tokens)
        return _AllergenReading(public, tuple(p for p in parts if p.nodes), literals)

    def _read_name(self, words: tuple[str, ...]) -> _Part | None:
        """The whole of ``words`` as one name: exactly, in the singular, or misspelt."""
        if not words:
            return None
        candidates = [words, *_singular_variants(words)]
        for variant in candidates:
            nodes = self._lookup(" ".join(variant))
            if nodes:
                return _table_part(words, nodes, corrected=False)
        for variant in candidates:
            nodes = self._fuzzy_lookup("".join(variant))
            if nodes:
                return _table_part(words, nodes, corrected=True)
        return None

    def _read_scanned(self, words: tuple[str, ...]) -> _Part | None:
        """Names found inside a longer text ("penicillin as a child, lips swelled")."""
        scan = self._scan_tokens(words)
        nodes = frozenset(n for hit in scan.hits for n in hit.nodes)
        if not nodes:
            return None
        return _Part(words, nodes, any(hit.corrected for hit in scan.hits))

    def _scan(self, drug: str) -> _Scan:
        cached = self._cache_scans.get(drug)
        if cached is None:
            cached = self._scan_tokens(_tokens(drug))
            _remember(self._cache_scans, drug, cached)
        return cached

    def _scan_tokens(self, tokens: tuple[str, ...]) -> _Scan:
        """Every name in a text, longest first ("nurofen plus" over "nurofen")."""
        hits: list[_Hit] = []
        other = False
        i = 0
        while i < len(tokens):
            found: frozenset[_Node] = frozenset()
            width = 0
            for n in range(min(self._max_words, len(tokens) - i), 0, -1):
                found = self._lookup(" ".join(tokens[i : i + n]))
                if found:
                    width = n
                    break
            corrected = False
            if not found:
                word = tokens[i]
                singular = next(_singular_variants((word,)))
                found = self._lookup(singular[0]) if singular != (word,) else frozenset()
                if not found:
                    found = self._fuzzy_lookup(word)
                    corrected = bool(found)
                width = 1
            if found:
                end = i + width
                if (i > 0 and tokens[i - 1] in _NEGATING_BEFORE) or (
                    end < len(tokens) and tokens[end] in _NEGATING_AFTER
                ):
                    pass  # "latex-free", "non-latex": not there
                elif any(kind == "o" for kind, _ in found):
                    other = True
                else:
                    hits.append(_Hit(found, corrected))
            i += width
        if other:
            # A class word next to a drug the table does not know qualifies that
            # drug ("gadolinium contrast", "naloxone, opioid antagonist").
            hits = [_Hit(frozenset(n for n in h.nodes if n[0] != "c"), h.corrected) for h in hits]
            hits = [h for h in hits if h.nodes]
        return _Scan(tokens, tuple(hits))

    def _fuzzy_lookup(self, word: str) -> frozenset[_Node]:
        """The table name nearest ``word`` within a few edits; nothing if none, or a tie.

        The nearest name must be unique (synonyms count as one), and no drug
        outside the table (``other_names``) may be as near: "penicilin" reads as
        penicillin, "penicillamine" as nothing.
        """
        near = self._near_names(word)
        if not near:
            return frozenset()
        nearest_distance = min(near.values())
        nearest = {self._by_compact[n] for n, d in near.items() if d == nearest_distance}
        if len(nearest) != 1:
            return frozenset()  # two different names as near: never guess between them
        (nodes,) = nearest
        if any(kind == "o" for kind, _ in nodes):
            return frozenset()  # a drug outside the table, not a misspelling of one in it
        return nodes

    def _near_names(self, word: str) -> dict[str, int]:
        """Every name (spaces removed) within its edit budget of ``word``, with its distance."""
        budget = _budget(len(word))
        if budget == 0 or not word.isalpha():
            return {}
        index = self._fuzzy_index()
        near: dict[str, int] = {}
        for variant in _deletions(word[:_FUZZY_PREFIX], budget):
            for name in index.get(variant, ()):
                if name in near:
                    continue
                limit = min(budget, _budget(len(name)))
                distance = osa_distance(word, name, limit)
                if distance <= limit:
                    near[name] = distance
        return near

    def _fuzzy_index(self) -> dict[str, tuple[str, ...]]:
        """Deletion neighbourhoods of the names' first letters (SymSpell's prefix index).

        Two words within ``k`` edits share a string made by at most ``k``
        deletions from each of their first few letters, so looking up the
        query's deletions finds every candidate; each is then measured in full.
        """
        if self._fuzzy is None:
            index: dict[str, list[str]] = {}
            for name in sorted(self._by_compact):
                budget = _budget(len(name))
                if budget == 0 or not name.isalpha():
                    continue
                for variant in _deletions(name[:_FUZZY_PREFIX], budget):
                    index.setdefault(variant, []).append(name)
            self._fuzzy = {k: tuple(v) for k, v in index.items()}
        return self._fuzzy

    def _label(self, node: _Node) -> str:
        kind, ident = node
        return self._classes[ident].label if kind == "c" else ident

    def _ruled_out(self, nodes: frozenset[_Node]) -> dict[str, _Why]:
        """Every substance an allergy to these nodes rules out, with the best reason."""
        cached = self._cache_ruled.get(nodes)
        if cached is not None:
            return cached
        ruled: dict[str, _Why] = {}

        def put(sid: str, why: _Why) -> None:
            old = ruled.get(sid)
            if old is None or why < old:
                ruled[sid] = why

        def cross_of(cid: str, allergen: str) -> None:
            cls = self._classes[cid]
            for target in sorted(cls.cross_classes):
                for m, owner in self._expanded[target].items():
                    put(m, _Why(2, owner, cid, "", allergen))
            for m in sorted(cls.cross_members):
                for part in sorted(self._ingredients[m]):
                    put(part, _Why(2, "", cid, "", allergen))

        for kind, ident in sorted(nodes):
            if kind == "s":
                for sid in sorted(self._ingredients[ident]):
                    put(sid, _Why(0, "", "", "", ident))
                    for cid in self._classes_of.get(sid, ()):
                        cls = self._classes[cid]
                        if cls.member_allergy == "self":
                            continue
                        rank = 1 if cls.member_allergy == "class" else 2
                        for m, owner in self._expanded[cid].items():
                            put(m, _Why(rank, owner, "", sid, ident))
                        cross_of(cid, ident)
            elif kind == "c":
                label = self._classes[ident].label
                for m, owner in self._expanded[ident].items():
                    put(m, _Why(1, owner, "", "", label))
                for cid in sorted({ident, *self._expanded_classes(ident)}):
                    cross_of(cid, label)
        _remember(self._cache_ruled, nodes, ruled)
        return ruled

    def _expanded_classes(self, cid: str) -> set[str]:
        found: set[str] = set()
        todo = [cid]
        while todo:
            for inner in self._classes[todo.pop()].includes:
                if inner not in found:
                    found.add(inner)
                    todo.append(inner)
        return found

    def _match(self, reading: _AllergenReading, scan: _Scan) -> Match | None:
        best: tuple[_Why, str, str, bool] | None = None  # why, substance, drug class, corrected
        allergen_corrected = reading.public.corrected
        for part in reading.parts:
            ruled = self._ruled_out(part.nodes)
            for hit in scan.hits:
                corrected = hit.corrected or part.corrected
                for kind, ident in sorted(hit.nodes):
                    if kind == "s":
                        for sid in sorted(self._ingredients[ident]):
                            why = ruled.get(sid)
                            if why is not None:
                                best = _better(best, (why, sid, "", corrected))
                    elif kind == "c":
                        # A drug named by its class ("penicillin 250 mg"): at most a class match.
                        for sid in self._expanded[ident]:
                            why = ruled.get(sid)
                            if why is not None:
                                why = why._replace(rank=max(why.rank, 1))
                                best = _better(best, (why, sid, ident, corrected))
        for words in reading.literals if best is None or best[0].rank == 2 else ():
            if _contains(scan, words):
                literal = _Why(0, "", "", "", " ".join(words))
                best = _better(best, (literal, " ".join(words), "", allergen_corrected))
        if best is None:
            return None
        why, substance, drug_class, corrected = best
        return Match(
            kind=_KINDS[why.rank],
            substance=substance,
            allergen=why.allergen,
            reason=self._reason(why, substance, drug_class),
            corrected=corrected,
        )

    def _reason(self, why: _Why, substance: str, drug_class: str) -> str:
        if drug_class:
            text = f"it is {self._classes[drug_class].member_label}"
        else:
            text = f"it contains {substance}"
            if why.rank > 0 and why.member_class:
                text += f", {self._classes[why.member_class].member_label}"
        if why.like and why.like != substance:
            text += f" like {why.like}"
        if why.rank == 2:
            text += ": possible cross-reactivity"
            if why.cross_from:
                text += f" with {self._classes[why.cross_from].label}"
        return text


# ------------------------------------------------------------------ helpers


def _table_part(words: tuple[str, ...], nodes: frozenset[_Node], corrected: bool) -> _Part | None:
    if any(kind == "o" for kind, _ in nodes):
        return None  # a drug outside the table: not recognised
    return _Part(words, nodes, corrected)


def _better(
    best: tuple[_Why, str, str, bool] | None, candidate: tuple[_Why, str, str, bool]
) -> tuple[_Why, str, str, bool]:
    return candidate if best is None or candidate < best else best


def _contains(scan: _Scan, words: tuple[str, ...]) -> bool:
    """True if ``words`` appear together in the scanned text, not negated ("latex-free")."""
    tokens, n = scan.tokens, len(words)
    for i in range(len(tokens) - n + 1):
        if tokens[i : i + n] == words:
            before = tokens[i - 1] if i > 0 else ""
            after = tokens[i + n] if i + n < len(tokens) else ""
            if before not in _NEGATING_BEFORE and after not in _NEGATING_AFTER:
                return True
    return False


def _remember(cache: dict[Any, Any], key: object, value: object) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()  # bounded; the answers are recomputed alike
    cache[key] = value


def _display(raw: object, where: str) -> str:
    text = normalise(raw) if isinstance(raw, str) else ""
    if not text:
        raise InvalidInputError(f"substance table: {where}: {raw!r} is not a name")
    return text


def _text(raw: object, where: str) -> str:
    if not isinstance(raw, str):
        raise InvalidInputError(f"substance table: {where}: {raw!r} is not text")
    return raw


def _list(raw: object, where: str) -> list[object]:
    if not isinstance(raw, list):
        raise InvalidInputError(f"substance table: {where}: expected a list, got {raw!r}")
    return raw


def _keys(raw: object, where: str) -> set[str]:
    keys = set()
    for name in _list(raw, where):
        key = _key(name) if isinstance(name, str) else ""
        if not key:
            raise InvalidInputError(f"substance table: {where}: {name!r} is not a name")
        keys.add(key)
    return keys


def _load_bundled() -> SubstanceTable:
    data = resources.files("caresync.conflicts").joinpath("data").joinpath("substances.json")
    text = data.read_text("utf-8")
    return SubstanceTable.from_json(text)


DEFAULT_SUBSTANCES = _load_bundled()
"""The bundled table (``caresync/conflicts/data/substances.json``), loaded once at import."""
