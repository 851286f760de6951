"""The same person registered twice: who a record is, how alike two are, and what was decided.

Pure (the store calls :func:`pair_of` inside its write transactions). A
:class:`PersonCard` is read from a record: its identifying fields (name, birth
date, sex, identifiers, phone), the link decisions it holds (``links/<other
record id>``) and who registered it. :func:`pair_of` compares two cards: a
score from the fields that agree and disagree, and the decisions either record
holds about the other. The store keeps every record's card, finds the cards
worth comparing by their :meth:`PersonCard.blocking_keys`, and keeps the pairs
:func:`pair_of` returns, in the same transaction as the record. A pair is a
function of the two cards only, so every replica holding both records holds
the same pair, whatever order the records arrived in. Nothing is ever merged:
a possible duplicate is a finding on both records (``caresync.conflicts.duplicates``),
and a person decides.
"""

from __future__ import annotations

import datetime
import json
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, KeysView, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from caresync.exceptions import InvalidInputError
from caresync.records.clock import Timestamp
from caresync.records.ids import finding_id_for
from caresync.records.record import Record
from caresync.records.revision import Revision
from caresync.records.values import JSONValue

__all__ = [
    "CARD_FORMAT",
    "DIFFERENT_PEOPLE",
    "DISPUTED_RULE",
    "DUPLICATE_RULE",
    "LINKS_FIELD",
    "LINK_DECISIONS",
    "MATCH_THRESHOLD",
    "PERSON_MATCH_VERSION",
    "SAME_PERSON",
    "UNLINKED",
    "PairState",
    "PersonCard",
    "PersonCards",
    "PersonPair",
    "Registration",
    "link_path",
    "match_score",
    "pair_of",
    "person_card",
]

PERSON_MATCH_VERSION = 3  # 2: birth dates written D/M/Y, Y/M/D, YYYYMMDD read as dates;
# names in any script, and letters NFKD does not decompose (ø, ł, đ, æ), kept; 3: a name
# in Han, kana or Hangul read as one word whatever its spaces (family name first), and
# scored as a whole name, not as one word of it; a month in words (12 Apr 1990) read
"""Bumped whenever cards are read, keys made or pairs scored differently (re-indexes).

Part of every rulebook's fingerprint: a database indexed under another version
is re-indexed at its next open, and replicas trust each other's cards and pairs
only under the same one. Not the format of a card's bytes (:data:`CARD_FORMAT`),
which a stored card keeps until then.
"""

CARD_FORMAT = 1
"""The ``"v"`` of a card's bytes: bumped only when what a card holds changes shape."""

LINKS_FIELD = "links"
"""The field under which a record keeps its link decisions: ``links/<other record id>``."""
SAME_PERSON = "same-person"
"""A link decision: the two records are one person (they are shown together)."""
DIFFERENT_PEOPLE = "different-people"
"""A link decision: two people, however alike (the finding does not come back)."""
UNLINKED = "unlinked"
"""A link decision undone: as if never decided (a match is a finding again)."""
LINK_DECISIONS = frozenset({SAME_PERSON, DIFFERENT_PEOPLE, UNLINKED})
_CONTESTED = "contested"  # a card's link decision with concurrent different values

DUPLICATE_RULE = "possible-duplicate"
"""The finding on both records of a pair that looks like one person."""
DISPUTED_RULE = "link-disputed"
"""The finding on both records of a pair whose link decisions disagree."""

MATCH_THRESHOLD = 7.0
"""A pair scoring this or more, with no decision, is a possible duplicate."""

# The weights (docs/conflicts.md explains them): agreement adds, disagreement subtracts.
_SAME_IDENTIFIER = 8.0
_DIFFERENT_IDENTIFIER = -10.0
_SAME_BIRTH = 4.0
_NEAR_BIRTH = 2.5  # day and month swapped, or one digit apart
_SAME_BIRTH_PART = 1.0  # "1990" and "1990-04-12": as far as both go
_DIFFERENT_BIRTH = -4.0
_NAME_FULL = 4.0  # every token of the shorter name found in the other
_NAME_NONE = -2.0  # no token alike
_ONE_TOKEN_NAME_CAP = 2.0  # "Awa" alone says little
_SAME_SEX = 0.5
_DIFFERENT_SEX = -3.0
_SAME_PHONE = 2.0

_MAX_TEXT = 256
_MAX_ITEMS = 16
_MIN_IDENTIFIER = 4
_MIN_PHONE_DIGITS = 7
_PHONE_DIGITS_KEPT = 9  # the subscriber part: "+221 77 123 45 67" equals "77 123 45 67"
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")
# A whole date written otherwise: year first (1990/04/12, 1990-4-12, 19900412) or last
# (12/04/1990, 12.04.1990, 04/25/1990), read before _DATE (which would keep "1990" only).
_YEAR_FIRST = re.compile(r"(\d{4})(?:[-/. ](\d{1,2})[-/. ](\d{1,2})|(\d{2})(\d{2}))(?!\d)")
_YEAR_LAST = re.compile(r"(\d{1,2})[-/. ](\d{1,2})[-/. ](\d{4})(?!\d)")
# The month in words, in English or French: day first (12 Apr 1990, 12-Apr-1990,
# 12 avril 1990) or month first (April 12, 1990).
_DAY_MONTH_WORD = re.compile(
    r"(\d{1,2})(?:st|nd|rd|th|er)?[-/. ]+([^\W\d_]+)\.?[-/., ]+(\d{4})(?!\d)"
)
_MONTH_WORD_DAY = re.compile(
    r"([^\W\d_]+)\.?[-/. ]+(\d{1,2})(?:st|nd|rd|th|er)?,?[-/. ]+(\d{4})(?!\d)"
)
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            "jan january janv janvier",
            "feb february fev fevr fevrier",
            "mar march mars",
            "apr april avr avril",
            "may mai",
            "jun june juin",
            "jul july juil juillet",
            "aug august aou aout",
            "sep sept september septembre",
            "oct october octobre",
            "nov november novembre",
            "dec december decembre",
        ),
        start=1,
    )
    for name in names.split()
}
# Letters and digits of any script: a name written in Arabic, Cyrillic or Ge'ez
# script is a name too (an ASCII-only token dropped it, and split "Søren" in two).
_TOKEN = re.compile(r"[^\W_]+")
# Scripts that write a name without spaces between its parts: Han, kana, Hangul (its
# syllables, and the jamo NFKD decomposes them into). A run of them is one word.
_UNSPACED = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003134f]+"
)
# Latin letters NFKD does not decompose, as they are written without their mark.
_UNMARKED = str.maketrans(
    {
        "ø": "o",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "ħ": "h",
        "\u0131": "i",
        "æ": "ae",
        "œ": "oe",
        "þ": "th",
    }
)
# Marks written as an apostrophe ("N'Diaye", "N\u2019Diaye", "N`Diaye"): each joins.
_APOSTROPHES = str.maketrans(dict.fromkeys("'\u2018\u2019\u02bc\u0060\u00b4", None))
_SEXES = {
    "m": "male",
    "male": "male",
    "man": "male",
    "f": "female",
    "female": "female",
    "woman": "female",
}
_UNKNOWN_SEX = frozenset({"", "u", "unknown", "other", "not known", "unk"})
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof", "mme", "mlle", "m"})


class PairState(StrEnum):
    """What a stored pair of records is."""

    POSSIBLE = "possible"
    """Alike enough, and nobody decided yet: a finding on both records."""
    LINKED = "linked"
    """Decided to be one person: shown together, the allergy check runs across them."""
    DISPUTED = "disputed"
    """The two records hold different decisions: a block finding on both."""


@dataclass(frozen=True, slots=True)
class Registration:
    """Who wrote a record's identifying fields, where and when (a candidate shows it)."""

    author: str
    replica: str
    at: Timestamp
    revision: str


@dataclass(frozen=True, slots=True)
class PersonCard:
    """What identifies the person of one record, normalised, and its link decisions.

    Every field holds alternatives: a field in conflict contributes each of its
    values (any of them may be the right one). ``names`` are token tuples,
    ``identifiers`` (system, value) pairs, ``links`` (other record id, decision)
    pairs with the decision ``"contested"`` while concurrent values disagree.
    """

    record_id: str
    display: str = ""
    names: tuple[tuple[str, ...], ...] = ()
    birth_dates: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    identifiers: tuple[tuple[str, str], ...] = ()
    phones: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    registration: Registration | None = None

    @property
    def identifying(self) -> bool:
        """True when the card holds anything a match could be made on."""
        return bool(self.names or self.birth_dates or self.identifiers or self.phones)

    def decision_about(self, other_id: str) -> str | None:
        """The link decision this record holds about ``other_id`` (None: none)."""
        for linked, decision in self.links:
            if linked == other_id:
                return decision
        return None

    def blocking_keys(self) -> frozenset[str]:
        """Blocking keys: two cards are compared only when they share one.

        Every way two cards can score a possible duplicate shares a key (a test
        checks it over generated cards): the same identifier; the same phone; the
        same full birth date and a name token starting alike (a misspelt name);
        the same birth year and two tokens of one name (a mistyped birth date
        scores only with the whole name alike); and the record ids a link
        decision names, so that a decided pair is always compared. Keys are
        narrow on purpose: a key shared by many records (a common name and a
        year) would make every write compare against all of them.
        """
        return frozenset(
            _key_list(
                self.record_id,
                self.links,
                self.identifiers,
                self.phones,
                self.birth_dates,
                self.names,
            )
        )

    def to_bytes(self) -> bytes:
        """The card as compact JSON (what the store keeps and a first copy carries)."""
        data: dict[str, Any] = {"v": CARD_FORMAT, "id": self.record_id}
        if self.display:
            data["display"] = self.display
        for name, value in (
            ("names", [list(n) for n in self.names]),
            ("birth", list(self.birth_dates)),
            ("sex", list(self.sexes)),
            ("ids", [list(i) for i in self.identifiers]),
            ("phones", list(self.phones)),
            ("links", [list(link) for link in self.links]),
        ):
            if value:
                data[name] = value
        if self.registration is not None:
            reg = self.registration
            data["reg"] = [reg.author, reg.replica, reg.at.wall_ms, reg.at.counter, reg.revision]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PersonCard:
        """A card from :meth:`to_bytes`; InvalidInputError for anything else (untrusted)."""
        # Only an escape \uD800-\uDFFF, or bytes json.loads decodes with "surrogatepass",
        # can give a lone surrogate, which no card of to_bytes holds (nor keys can hash).
        unsure = b"\\ud" in data or b"\\uD" in data
        if not unsure and (card := _typed_card(data)) is not None:
            return card  # a card as to_bytes writes it, read and checked in one pass
        raw = _object_of(data)
        unsure = unsure or raw is None
        if raw is None:
            try:
                raw = json.loads(data)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise InvalidInputError(f"person card: not JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("v") != CARD_FORMAT:
            raise InvalidInputError(
                f"person card: not a card of version {CARD_FORMAT} (an object with "
                f'"v": {CARD_FORMAT})'
            )
        # A card as to_bytes writes it takes one quick pass (a first copy reads 100,000s);
        # anything else the careful one, which gives the same card or names the fault.
        card = _plain_card(cls, raw) or cls._checked(raw)
        if unsure:
            try:
                card.to_bytes()
            except UnicodeEncodeError:
                raise InvalidInputError("person card: text that is not Unicode") from None
        return card

    @classmethod
    def _checked(cls, raw: dict[str, Any]) -> PersonCard:
        """The card of a parsed object, each field checked in turn (InvalidInputError)."""
        registration = None
        reg = raw.get("reg")
        if reg is not None:
            if not (
                isinstance(reg, list)
                and len(reg) == 5
                and all(isinstance(x, str) for x in (reg[0], reg[1], reg[4]))
                and all(type(x) is int and 0 <= x < 2**63 for x in (reg[2], reg[3]))
            ):
                raise InvalidInputError("person card: 'reg' must be [author, replica, ms, n, id]")
            registration = Registration(
                _text(reg[0], "reg"), _text(reg[1], "reg"), Timestamp(reg[2], reg[3]), reg[4]
            )
        return cls(
            record_id=_text(raw.get("id"), "id", empty=False),
            display=_text(raw.get("display", ""), "display"),
            names=tuple(
                tuple(_text(t, "names", empty=False) for t in _items(n, "names"))
                for n in _items(raw.get("names", []), "names")
            ),
            birth_dates=tuple(_text(b, "birth") for b in _items(raw.get("birth", []), "birth")),
            sexes=tuple(_text(s, "sex") for s in _items(raw.get("sex", []), "sex")),
            identifiers=tuple(_pair(i, "ids") for i in _items(raw.get("ids", []), "ids")),
            phones=tuple(_text(p, "phones") for p in _items(raw.get("phones", []), "phones")),
            links=tuple(_link(x) for x in _items(raw.get("links", []), "links")),
            registration=registration,
        )


@dataclass(frozen=True, slots=True)
class PersonPair:
    """Two records that may be, or were decided to be, one person.

    ``first`` has the smaller record id. ``score`` and ``reasons`` say how alike
    they are; ``state`` what the records' decisions make of it.
    """

    first: PersonCard
    second: PersonCard
    state: PairState
    score: float
    reasons: tuple[str, ...]

    @property
    def record_ids(self) -> tuple[str, str]:
        return self.first.record_id, self.second.record_id

    @property
    def rule(self) -> str:
        return DISPUTED_RULE if self.state is PairState.DISPUTED else DUPLICATE_RULE

    @property
    def id(self) -> str:
        """The id of the pair's finding: the same on both records and every replica."""
        return finding_id_for("*", self.rule, "", self.record_ids)

    def other(self, record_id: str) -> PersonCard:
        """The card of the record that is not ``record_id``."""
        return self.second if record_id == self.first.record_id else self.first

    def to_bytes(self) -> bytes:
        """The pair as compact JSON (what the store keeps)."""
        return json.dumps(
            {
                "first": json.loads(self.first.to_bytes()),
                "second": json.loads(self.second.to_bytes()),
                "state": self.state.value,
                "score": self.score,
                "reasons": list(self.reasons),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PersonPair:
        """A pair from :meth:`to_bytes`; InvalidInputError for anything else."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidInputError(f"person pair: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise InvalidInputError("person pair: not an object")
        try:
            state = PairState(str(raw.get("state")))
        except ValueError:
            raise InvalidInputError(f"person pair: unknown state {raw.get('state')!r}") from None
        score = raw.get("score")
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise InvalidInputError("person pair: 'score' must be a number")
        cards = [
            PersonCard.from_bytes(json.dumps(raw.get(side)).encode())
            for side in ("first", "second")
        ]
        return cls(
            cards[0],
            cards[1],
            state,
            float(score),
            tuple(_text(r, "reasons") for r in _items(raw.get("reasons", []), "reasons")),
        )


def _key_list(
    record_id: str,
    links: Sequence[tuple[str, str]],
    identifiers: Sequence[tuple[str, str]],
    phones: Sequence[str],
    births: Sequence[str],
    names: Sequence[Sequence[str]],
    *,
    own: bool = True,
) -> list[str]:
    """The blocking keys of a card's fields (:meth:`PersonCard.blocking_keys`), as a list
    that may name a key twice; without the card's own key (``r:<record id>``) unless
    ``own``. One function for a card and for a first copy's cards read without one
    (:class:`PersonCards`), so that both give the same keys.
    """
    # Lists joined once, and name parts worked out only with a birth date (a first
    # copy makes 100,000s of cards' keys); a test compares it with the plain sets.
    keys = ["r:" + record_id] if own else []
    if links:
        keys += ["r:" + other for other, _decision in links]
    if identifiers:
        keys += [f"i:{system}={value}" for system, value in identifiers]
    if phones:
        keys += ["p:" + phone for phone in phones]
    if births and names:
        starts: Collection[str]
        pairs: Collection[str]
        if (
            len(names) == 1
            and len(names[0]) == 2
            and names[0][0].isascii()
            and names[0][1].isascii()
        ):
            # One name of two tokens, most cards: no comprehension over the name's pairs.
            a, b = names[0]
            starts = (a[:3],) if a[:3] == b[:3] else (a[:3], b[:3])
            pairs = () if a == b else (f"{a}|{b}",) if a < b else (f"{b}|{a}",)
        else:
            starts = {t[:3] for name in names for t in name}
            pairs = {f"{a}|{b}" for name in names for a in name for b in name if a < b}
            # A whole name in one word ("王小明") pairs with itself: alike, it scores
            # as two words alike do, so it needs the year key they have.
            pairs |= {f"{t}|{t}" for name in names for t in name if _name_size((t,)) == 2}
        for birth in births:
            if len(birth) == 10:
                day = "d:" + birth + "|"
                keys += [day + start for start in starts]
            if pairs:
                year = "y:" + birth[:4] + "|"
                keys += [year + pair for pair in pairs]
    return keys


# ------------------------------------------------------------------ reading a record


def link_path(other_id: str) -> str:
    """The path of a record's link decision about record ``other_id``."""
    if not isinstance(other_id, str) or not other_id or "/" in other_id:
        raise InvalidInputError(f"a record id to link must be a plain id, got {other_id!r}")
    return f"{LINKS_FIELD}/{other_id}"


def person_card(record: Record) -> PersonCard:
    """The record's card: its identifying fields, normalised, and its link decisions."""
    names: list[tuple[str, ...]] = []
    display = ""
    first_seen: list[Revision] = []
    for rev in _heads(record, "name"):
        first_seen.append(rev)
        for written in _alternatives(rev.value):
            tokens = _name_tokens(written)
            if tokens and tokens not in names:
                names.append(tokens)
                display = display or _display_name(written)
    births: list[str] = []
    for rev in _heads(record, "birthDate"):
        first_seen.append(rev)
        birth = _birth_date(rev.value)
        if birth and birth not in births:
            births.append(birth)
    sexes: list[str] = []
    for field in ("sex", "gender"):
        for rev in _heads(record, field):
            sex = _sex(rev.value)
            if sex and sex not in sexes:
                sexes.append(sex)
    identifiers: list[tuple[str, str]] = []
    phones: list[str] = []
    links: dict[str, str] = {}
    for path in record.paths():
        head, _, rest = path.partition("/")
        if head == "identifiers":
            for rev in _heads(record, path):
                first_seen.append(rev)
                found = _identifiers(rev.value, system=rest)
                identifiers.extend(i for i in found if i not in identifiers)
        elif head in ("phone", "telecom"):
            for rev in _heads(record, path):
                phones.extend(p for p in _phones(rev.value) if p not in phones)
        elif head == LINKS_FIELD and rest and "/" not in rest:
            # Only text can be a decision (a list or a map would not even hash).
            decisions = {
                r.value
                for r in _heads(record, path)
                if type(r.value) is str and r.value in LINK_DECISIONS
            }
            if len(decisions) == 1:
                links[rest] = str(next(iter(decisions)))
            elif decisions:
                links[rest] = _CONTESTED
    if births and display:
        display = f"{display}, born {births[0]}"
    registration = None
    if first_seen:
        rev = max(first_seen, key=lambda r: (r.at, r.id))
        registration = Registration(rev.author, rev.replica, rev.at, rev.id)
    return PersonCard(
        record_id=record.record_id,
        display=display[:_MAX_TEXT],
        names=tuple(names[:_MAX_ITEMS]),
        birth_dates=tuple(births[:_MAX_ITEMS]),
        sexes=tuple(sexes[:_MAX_ITEMS]),
        identifiers=tuple(sorted(identifiers)[:_MAX_ITEMS]),
        phones=tuple(sorted(phones)[:_MAX_ITEMS]),
        links=tuple(sorted(links.items())),
        registration=registration,
    )


def _heads(record: Record, path: str) -> tuple[Revision, ...]:
    """The heads of a path with a value (a cleared field identifies nothing)."""
    return tuple(h for h in record.get(path).heads if h.value is not None)


def _alternatives(value: JSONValue) -> Iterator[JSONValue]:
    if isinstance(value, list):
        yield from value[:_MAX_ITEMS]
    else:
        yield value


def _fold(text: str) -> str:
    """Lower case, accents and punctuation gone: "N'Diaye, Aïssatou" → "n diaye aissatou"."""
    # An apostrophe joins ("N'Diaye" is "ndiaye"); anything else between letters splits.
    text = text[: _MAX_TEXT * 4].translate(_APOSTROPHES)
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_TOKEN.findall(plain.casefold().translate(_UNMARKED)))


def _name_text(value: JSONValue, *, family_first: bool = False) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return str(value["text"])
        parts: list[str] = []
        for key in ("family", "given") if family_first else ("given", "family"):
            part = value.get(key)
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, list):
                parts.extend(p for p in part if isinstance(p, str))
        return " ".join(parts)
    return ""


def _name_tokens(value: JSONValue) -> tuple[str, ...]:
    # Parts family first: as a name without spaces is written ("山田太郎"), and the
    # order of words elsewhere does not count (tokens are sorted).
    words = _fold(_name_text(value, family_first=True)).split()
    tokens: list[str] = []
    for word in words:
        if tokens and _is_unspaced(word) and _is_unspaced(tokens[-1]):
            tokens[-1] += word  # "王 小明" is "王小明": spaces there are the writer's
        elif word not in _TITLES:
            tokens.append(word)
    return tuple(sorted(dict.fromkeys(tokens)))[:_MAX_ITEMS]


def _is_unspaced(token: str) -> bool:
    """True for a word of a script written without spaces (Han, kana, Hangul)."""
    return not token.isascii() and _UNSPACED.fullmatch(token) is not None


def _name_size(name: tuple[str, ...]) -> int:
    """How many parts a name has: a word written without spaces, of two letters or
    more, holds the family name and the given name ("王小明" is a whole name)."""
    return sum(2 if len(t) > 1 and _is_unspaced(t) else 1 for t in name)


def _display_name(value: JSONValue) -> str:
    return " ".join(_name_text(value).split())


def _birth_date(value: JSONValue) -> str:
    if not isinstance(value, str):
        return ""
    text = value.strip()[:32]
    whole = _whole_date(text)
    if whole:
        return whole
    match = _DATE.match(text)
    if match is not None:
        return match.group(0)
    digits = "".join(c for c in text if c.isdigit())
    return digits if len(digits) >= 4 else ""


def _whole_date(text: str) -> str:
    """A whole date written otherwise than ``YYYY-MM-DD``, as ``YYYY-MM-DD``; "" if none.

    Day first when both could be the month (12/04/1990 is 12 April, as written where
    caresync is used; a month-first reader's date is then "day and month swapped",
    which still scores); month first only when the first cannot be a month
    (04/25/1990). Not a day of that month (31/02/1990): "", read as before.
    """
    found = _YEAR_FIRST.match(text)
    if found is not None:
        year, month, day = found[1], found[2] or found[4], found[3] or found[5]
    elif (found := _YEAR_LAST.match(text)) is not None:
        day, month, year = found[1], found[2], found[3]
        if int(month) > 12 >= int(day):
            day, month = month, day
    elif (found := _DAY_MONTH_WORD.match(text)) is not None:
        day, month, year = found[1], _month(found[2]), found[3]
    elif (found := _MONTH_WORD_DAY.match(text)) is not None:
        month, day, year = _month(found[1]), found[2], found[3]
    else:
        return ""
    try:
        return datetime.date(int(year), int(month), int(day)).isoformat()
    except ValueError:
        return ""


def _month(word: str) -> str:
    """The number of a month written in words ("Apr", "avril", "Août"), or "0" if none."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return str(_MONTHS.get(plain, 0))


def _sex(value: JSONValue) -> str:
    if not isinstance(value, str):
        return ""
    folded = _fold(value)
    # Words outside ASCII say nothing known here (as when _fold dropped them): one
    # chart's "أنثى" against another's "female" must not count as a different sex.
    if folded in _UNKNOWN_SEX or not folded.isascii():
        return ""
    return _SEXES.get(folded, folded[:_MAX_TEXT])


def _identifier_value(value: object) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return ""
    text = "".join(c for c in str(value).upper() if c.isalnum())[:_MAX_TEXT]
    if len(text) < _MIN_IDENTIFIER or len(set(text)) == 1:
        return ""  # "0000", "n/a": placeholders, not identifiers
    return text


def _identifiers(value: JSONValue, *, system: str) -> list[tuple[str, str]]:
    """Identifiers from ``identifiers`` ({system: value}, [{system, value}], [value]) or
    ``identifiers/<system>`` (a value)."""
    found: list[tuple[str, str]] = []

    def add(sys: object, val: object) -> None:
        sys_key = _fold(sys) if isinstance(sys, str) else ""
        normalised = _identifier_value(val)
        if normalised:
            found.append((sys_key[:_MAX_TEXT], normalised))

    if system:
        if isinstance(value, dict):
            for sub, val in value.items():
                add(f"{system} {sub}", val)
        else:
            add(system, value)
    elif isinstance(value, dict):
        if "value" in value:
            add(value.get("system", ""), value.get("value"))
        else:
            for sys, val in value.items():
                add(sys, val)
    elif isinstance(value, list):
        for item in value[:_MAX_ITEMS]:
            if isinstance(item, dict):
                add(item.get("system", ""), item.get("value"))
            else:
                add("", item)
    else:
        add("", value)
    return found


def _phones(value: JSONValue) -> list[str]:
    found: list[str] = []
    for item in _alternatives(value):
        if isinstance(item, dict):
            item = item.get("value")
        if isinstance(item, str):
            digits = "".join(c for c in item if c.isdigit())
            if len(digits) >= _MIN_PHONE_DIGITS and len(set(digits)) > 1:
                found.append(digits[-_PHONE_DIGITS_KEPT:])
    return found


# ------------------------------------------------------------------ comparing two


def match_score(x: PersonCard, y: PersonCard) -> tuple[float, tuple[str, ...]]:
    """How alike two cards are: a score (see :data:`MATCH_THRESHOLD`) and why, in words.

    Symmetric: ``match_score(x, y) == match_score(y, x)``.
    """
    score = 0.0
    reasons: list[str] = []
    systems = {s for s, _v in x.identifiers} & {s for s, _v in y.identifiers}
    for system in sorted(systems):
        xs = {v for s, v in x.identifiers if s == system}
        ys = {v for s, v in y.identifiers if s == system}
        label = f"{system} number" if system else "identifier"
        if xs & ys:
            score += _SAME_IDENTIFIER
            reasons.append(f"same {label}")
        else:
            score += _DIFFERENT_IDENTIFIER
            reasons.append(f"different {label}")
    birth, why = _birth_points(x.birth_dates, y.birth_dates)
    if why:
        score += birth
        reasons.append(why)
    name, why = _name_points(x.names, y.names)
    if why:
        score += name
        reasons.append(why)
    if x.sexes and y.sexes:
        if set(x.sexes) & set(y.sexes):
            score += _SAME_SEX
        else:
            score += _DIFFERENT_SEX
            reasons.append("different sex")
    if set(x.phones) & set(y.phones):
        score += _SAME_PHONE
        reasons.append("same phone")
    return round(score, 3), tuple(reasons)


def _birth_points(xs: Sequence[str], ys: Sequence[str]) -> tuple[float, str]:
    if not xs or not ys:
        return 0.0, ""
    best, why = _DIFFERENT_BIRTH, "different birth date"
    for a in xs:
        for b in ys:
            if a == b and len(a) == 10:
                return _SAME_BIRTH, "same birth date"
            if len(a) == len(b) == 10 and a[:4] == b[:4]:
                if a[5:7] == b[8:10] and a[8:10] == b[5:7]:
                    best, why = max(
                        (best, why), (_NEAR_BIRTH, "birth date with day and month swapped")
                    )
                elif sum(c != d for c, d in zip(a, b, strict=True)) == 1:
                    best, why = max((best, why), (_NEAR_BIRTH, "birth date one digit apart"))
            # "1990" and "1990-04-12", or "1990" twice: equal only as far as both go.
            elif (a.startswith(b) or b.startswith(a)) and min(len(a), len(b)) >= 4:
                best, why = max((best, why), (_SAME_BIRTH_PART, "birth year alike"))
    return best, why


def _name_points(xs: Sequence[tuple[str, ...]], ys: Sequence[tuple[str, ...]]) -> tuple[float, str]:
    if not xs or not ys:
        return 0.0, ""
    best = -1.0
    shortest = 0
    for a in xs:
        for b in ys:
            similarity = _name_similarity(a, b)
            if similarity > best:
                best, shortest = similarity, min(_name_size(a), _name_size(b))
    points = _NAME_NONE + (_NAME_FULL - _NAME_NONE) * best
    if shortest < 2:
        points = min(points, _ONE_TOKEN_NAME_CAP)
    if best >= 1.0:
        return points, "same name"
    if best >= 0.5:
        return points, "similar name"
    return points, "different name"


def _name_similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """How much of the shorter name the other holds, token by token, in any order (0 to 1)."""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    if not short:
        return 0.0
    available = list(long)
    total = 0.0
    for token in short:
        best, where = 0.0, -1
        for i, other in enumerate(available):
            alike = _token_similarity(token, other)
            if alike > best:
                best, where = alike, i
        if where >= 0:
            available.pop(where)
        total += best
    return total / len(short)


def _token_similarity(a: str, b: str) -> float:
    if a == b:
        return 1.0
    if len(a) == 1 or len(b) == 1:
        return 0.3 if a[0] == b[0] else 0.0  # an initial
    allowed = 1 if max(len(a), len(b)) <= 6 else 2
    if abs(len(a) - len(b)) > allowed:
        return 0.0
    return 0.7 if _edit_distance(a, b, allowed) <= allowed else 0.0


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance with adjacent swaps, stopping early past ``limit``."""
    # Each edit leaves at most one more letter of either word unmatched in the other
    # (a swap none): more unmatched letters than ``limit`` is past it, with no table.
    rest = list(b)
    unmatched = 0
    for ca in a:
        if ca in rest:
            rest.remove(ca)
        else:
            unmatched += 1
    if max(unmatched, len(rest)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (ca != cb),
            )
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def pair_of(x: PersonCard, y: PersonCard) -> PersonPair | None:
    """What the store keeps of two records, or None for nothing to keep.

    A pair either record decided to be one person is ``linked``; one whose
    records hold different decisions (or a decision in conflict) ``disputed``;
    one decided to be two people is not kept; an undecided (or unlinked) pair
    scoring :data:`MATCH_THRESHOLD` or more is ``possible``. Symmetric.
    """
    if x.record_id == y.record_id:
        return None
    first, second = (x, y) if x.record_id < y.record_id else (y, x)
    decisions = {
        d
        for d in (
            first.decision_about(second.record_id),
            second.decision_about(first.record_id),
        )
        if d is not None
    }
    score, reasons = match_score(first, second)
    if len(decisions) > 1 or _CONTESTED in decisions:
        state = PairState.DISPUTED
    elif decisions == {SAME_PERSON}:
        state = PairState.LINKED
    elif decisions == {DIFFERENT_PEOPLE}:
        return None
    elif score >= MATCH_THRESHOLD:
        state = PairState.POSSIBLE
    else:
        return None
    return PersonPair(first, second, state, score, reasons)


# ------------------------------------------------------------------ checking bytes

_LONGEST = _MAX_TEXT * 4  # what _text accepts
_MOST = _MAX_ITEMS * 4  # what _items accepts
_CARD_KEYS = frozenset({"v", "id", "display", "names", "birth", "sex", "ids", "phones", "reg"})
_NO_ITEMS: list[Any] = []


def _plain_texts(value: object, empty: bool = True) -> bool:
    """True for a list _items accepts of text _text accepts (``empty``: "" too)."""
    if type(value) is not list or len(value) > _MOST:
        return False
    for text in value:  # a loop, not all() of a generator: most lists hold one item
        if type(text) is not str or len(text) > _LONGEST or not (empty or text):
            return False
    return True


def _plain_card(cls: type[PersonCard], raw: dict[str, Any]) -> PersonCard | None:
    """The card of a parsed object in one quick pass, or None (then ``_checked`` decides).

    Accepts only what ``PersonCard._checked`` accepts, and gives the same card (a
    test compares the two over generated objects); declines any other shape, such as
    link decisions or a key it does not know, rather than judge it.
    """
    record_id = raw.get("id")
    display = raw.get("display", "")
    names = raw.get("names", _NO_ITEMS)
    births = raw.get("birth", _NO_ITEMS)
    sexes = raw.get("sex", _NO_ITEMS)
    ids = raw.get("ids", _NO_ITEMS)
    phones = raw.get("phones", _NO_ITEMS)
    if not (
        raw.keys() <= _CARD_KEYS
        and type(record_id) is str
        and 0 < len(record_id) <= _LONGEST
        and type(display) is str
        and len(display) <= _LONGEST
        and type(names) is list
        and len(names) <= _MOST
        and _plain_texts(births)
        and _plain_texts(sexes)
        and _plain_texts(phones)
        and type(ids) is list
        and len(ids) <= _MOST
    ):
        return None
    for name in names:
        if not _plain_texts(name, empty=False):
            return None
    for item in ids:
        if not (
            type(item) is list
            and len(item) == 2
            and type(item[0]) is str
            and type(item[1]) is str
            and len(item[0]) <= _LONGEST
            and 0 < len(item[1]) <= _LONGEST
        ):
            return None
    registration = None
    reg = raw.get("reg")
    if reg is not None:
        if not (
            type(reg) is list
            and len(reg) == 5
            and type(reg[0]) is str
            and type(reg[1]) is str
            and type(reg[4]) is str
            and len(reg[0]) <= _LONGEST
            and len(reg[1]) <= _LONGEST
            and type(reg[2]) is int
            and type(reg[3]) is int
            and 0 <= reg[2] < 2**63
            and 0 <= reg[3] < 2**63
        ):
            return None
        registration = Registration(reg[0], reg[1], Timestamp(reg[2], reg[3]), reg[4])
    return cls(
        record_id=record_id,
        display=display,
        names=tuple(map(tuple, names)),
        birth_dates=tuple(births),
        sexes=tuple(sexes),
        identifiers=tuple(map(tuple, ids)) if ids else (),
        phones=tuple(phones),
        registration=registration,
    )


_Text = Annotated[str, msgspec.Meta(max_length=_LONGEST)]
_Token = Annotated[str, msgspec.Meta(min_length=1, max_length=_LONGEST)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _TypedCard(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A card's JSON as :func:`_plain_card` accepts it, checked while it is read.

    Untracked by the garbage collector (``gc=False``): it holds text, numbers and
    tuples of them, so no cycle, and a first copy keeps 100,000s of them for a while
    (:class:`PersonCards`), which every collection would otherwise walk.
    """

    v: int
    id: _Token
    display: _Text = ""
    names: Annotated[
        tuple[Annotated[tuple[_Token, ...], msgspec.Meta(max_length=_MOST)], ...],
        msgspec.Meta(max_length=_MOST),
    ] = ()
    birth: Annotated[tuple[_Text, ...], msgspec.Meta(max_length=_MOST)] = ()
    sex: Annotated[tuple[_Text, ...], msgspec.Meta(max_length=_MOST)] = ()
    ids: Annotated[tuple[tuple[_Text, _Token], ...], msgspec.Meta(max_length=_MOST)] = ()
    phones: Annotated[tuple[_Text, ...], msgspec.Meta(max_length=_MOST)] = ()
    reg: tuple[_Text, _Text, _Count, _Count, str] | None = None


_TYPED_CARD = msgspec.json.Decoder(_TypedCard)


def _typed_card(data: bytes) -> PersonCard | None:
    """The card of bytes as :meth:`PersonCard.to_bytes` writes them, decoded and
    checked by msgspec in one pass (three to four times quicker than JSON then the Python checks:
    a first copy reads 100,000s); None for anything else, which the passes below
    decide. Accepts only what :func:`_plain_card` accepts, and gives the same card (a
    test compares them over generated bytes; a key given twice is read as ``json``
    reads it, the last one winning)."""
    try:
        typed = _TYPED_CARD.decode(data)
    except (msgspec.DecodeError, ValueError):
        return None
    if typed.v != CARD_FORMAT:
        return None
    return _card_of_typed(typed)


def _card_of_typed(typed: _TypedCard) -> PersonCard:
    """The card of a decoded :class:`_TypedCard` (checked as it was read)."""
    reg = typed.reg
    return PersonCard(
        record_id=typed.id,
        display=typed.display,
        names=typed.names,
        birth_dates=typed.birth,
        sexes=typed.sex,
        identifiers=typed.ids,
        phones=typed.phones,
        registration=None
        if reg is None
        else Registration(reg[0], reg[1], Timestamp(reg[2], reg[3]), reg[4]),
    )


def _card_from_bytes(record_id: str, data: bytes) -> PersonCard:
    """:meth:`PersonCard.from_bytes`, refusing the card of another record (InvalidInputError)."""
    card = PersonCard.from_bytes(data)
    if card.record_id != record_id:
        raise InvalidInputError(f"person card: record {card.record_id}'s, not {record_id}'s")
    return card


class PersonCards(Mapping[str, PersonCard]):
    """Person cards read from their bytes, by record id, each made a :class:`PersonCard`
    only when asked for (a first copy's cards: 100,000s, of which a few thousand are in
    a pair and compared; the rest are stored as their bytes and keyed).

    Made only by :meth:`read`, which checks every card as :meth:`PersonCard.from_bytes`
    does, and that it is its record's: a card here is the one ``from_bytes`` gives of
    its bytes (:attr:`data`). :meth:`row_keys` gives a card's blocking keys without
    making it.
    """

    __slots__ = ("_cards", "_data", "_typed")

    _data: dict[str, bytes]
    _typed: dict[str, _TypedCard]
    _cards: dict[str, PersonCard]

    def __init__(self) -> None:
        """No cards (:meth:`read` makes a mapping that holds some)."""
        self._data, self._typed, self._cards = {}, {}, {}

    @classmethod
    def read(
        cls,
        items: Iterable[tuple[str, bytes]],
        declined: Callable[[str, bytes], PersonCard] = _card_from_bytes,
    ) -> PersonCards:
        """The cards of ``(record id, card bytes)`` items (the last of a record given
        twice). A card as :meth:`PersonCard.to_bytes` writes it is decoded and checked
        in one pass (msgspec) and kept so; any other bytes are given to
        ``declined(record_id, data)``, which returns their card or raises (by default
        :meth:`PersonCard.from_bytes`' InvalidInputError, or one for the card of
        another record).
        """
        data: dict[str, bytes] = {}
        typed: dict[str, _TypedCard] = {}
        cards: dict[str, PersonCard] = {}
        decode = _TYPED_CARD.decode
        for record_id, raw in items:
            if record_id in data:  # given twice: the last stands
                typed.pop(record_id, None)
                cards.pop(record_id, None)
            data[record_id] = raw
            found: _TypedCard | None = None
            # As from_bytes: an escaped surrogate (or bytes msgspec declines) takes the
            # careful passes, which may refuse it.
            if type(raw) is bytes and b"\\ud" not in raw and b"\\uD" not in raw:
                try:
                    found = decode(raw)
                except (msgspec.DecodeError, ValueError):
                    found = None
            if (
                found is not None
                and found.v == CARD_FORMAT
                and found.id == record_id
                and type(record_id) is str
            ):
                typed[record_id] = found
            else:
                cards[record_id] = declined(record_id, raw)
        made = cls()
        made._data, made._typed, made._cards = data, typed, cards
        return made

    @property
    def data(self) -> Mapping[str, bytes]:
        """Each card's bytes as read (what a store keeps of it)."""
        return self._data

    def row_keys(self, record_id: str) -> Collection[str]:
        """The blocking keys of the card of ``record_id`` but its own (``r:<id>``), each
        once: ``blocking_keys() - {"r:" + record_id}``, without making the card."""
        typed = self._typed.get(record_id)
        if typed is None:
            return self[record_id].blocking_keys().difference(("r:" + record_id,))
        # A card read this way holds no link decisions: no key names its own record.
        ids, phones, births = typed.ids, typed.phones, typed.birth
        keys = _key_list(record_id, (), ids, phones, births, typed.names, own=False)
        # A key twice only from two identifiers, phones or birth dates (the names' parts
        # are sets): most cards hold one of each.
        return keys if len(ids) < 2 and len(phones) < 2 and len(births) < 2 else set(keys)

    def row_keys_of(self, record_ids: Iterable[str]) -> list[Collection[str]]:
        """:meth:`row_keys` of each of these records, in their order.

        A card of the common shape (one birth date, one name of two tokens, no
        identifier or phone) has its keys made here in one step each, as
        :func:`_key_list` makes them and in its order; the others go through
        :meth:`row_keys` (a first copy keys 100,000s of cards: this halves that;
        a test compares the two over generated cards).
        """
        typed_of = self._typed.get
        row_keys = self.row_keys
        found: list[Collection[str]] = []
        add = found.append
        for record_id in record_ids:
            typed = typed_of(record_id)
            if (
                typed is None
                or typed.ids
                or typed.phones
                or len(births := typed.birth) != 1
                or len(names := typed.names) != 1
                or len(name := names[0]) != 2
                or not (name[0].isascii() and name[1].isascii())  # a whole name in one word
            ):
                add(row_keys(record_id))
                continue
            birth = births[0]
            a, b = name
            keys: list[str] = []
            if len(birth) == 10:
                start_a, start_b = a[:3], b[:3]
                keys = (
                    [f"d:{birth}|{start_a}"]
                    if start_a == start_b
                    else [f"d:{birth}|{start_a}", f"d:{birth}|{start_b}"]
                )
            if a != b:
                keys.append(f"y:{birth[:4]}|{a}|{b}" if a < b else f"y:{birth[:4]}|{b}|{a}")
            add(keys)
        return found

    def only(self, record_ids: Collection[str]) -> PersonCards:
        """The cards of these records (those held here)."""
        made = PersonCards()
        made._data = {rid: data for rid, data in self._data.items() if rid in record_ids}
        made._typed = {rid: typed for rid, typed in self._typed.items() if rid in record_ids}
        made._cards = {rid: card for rid, card in self._cards.items() if rid in record_ids}
        return made

    def __getitem__(self, record_id: str) -> PersonCard:
        card = self._cards.get(record_id)
        if card is None:
            card = self._cards[record_id] = _card_of_typed(self._typed.pop(record_id))
        return card

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> KeysView[str]:
        return self._data.keys()


_DECODE = json.JSONDecoder().raw_decode


def _object_of(data: bytes) -> Any:
    """``json.loads(data)`` of bytes that start ``{"``, decode as UTF-8 and hold one JSON
    value with nothing after it (as cards are written), without what ``json.loads``
    does first for bytes; None for anything else (then ``json.loads`` decides).

    Bytes starting ``{"`` are UTF-8 to ``json.loads`` too (a BOM, UTF-16 or UTF-32
    starts otherwise), so the result is the same."""
    if data[:2] != b'{"' or type(data) is not bytes:
        return None
    try:
        text = data.decode()
        raw, end = _DECODE(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return raw if end == len(text) else None


def _items(value: object, where: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > _MAX_ITEMS * 4:
        raise InvalidInputError(f"person card: {where!r} must be a list of at most 64 items")
    return value


def _text(value: object, where: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT * 4 or (not empty and not value):
        raise InvalidInputError(f"person card: {where!r} must hold short text")
    return value


def _pair(value: object, where: str) -> tuple[str, str]:
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidInputError(f"person card: {where!r} items must be [system, value]")
    return _text(value[0], where), _text(value[1], where, empty=False)


def _link(value: object) -> tuple[str, str]:
    other, decision = _pair(value, "links")
    if decision not in LINK_DECISIONS and decision != _CONTESTED:
        raise InvalidInputError(f"person card: unknown link decision {decision!r}")
    return other, decision
