"""What the person index costs the SQLite store's writes.

* a first copy: ``write_remote`` of N records in batches of 500 (one commit a
  batch, with its checkpoint), each record with its person card, against the
  same records without cards;
* one durable ``write_local`` of a new record with its card into a store of N
  records with cards (the new person's name and birth date are those of a
  stored one, so the write finds and stores a pair), against the same write
  without a card.

The people are generated: given and family names from pools of 160 and 220,
birth dates uniform over 1940-2023, a sex; about 1% are the same person
registered again (the same name and birth date, or with a typing slip: a letter
changed, day and month swapped, a digit off). Every case runs ``--runs`` times
(5 by default; the single writes 4 times as often), reporting the median, the
fastest and the slowest.

``python -m benchmarks.bench_person_index [--records N] [--runs R]``
(``--records`` defaults to 100,000).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, write_results
from caresync import Record
from caresync.records.persons import PairState, PersonCard, person_card
from caresync.storage import IncomingUpdate, SQLiteStore

BATCH = 500
ORGANISATION = "org-1"
DUPLICATE_FRACTION = 0.01

_GIVEN = [
    "aissatou",
    "awa",
    "fatou",
    "mariama",
    "aminata",
    "khady",
    "ndeye",
    "coumba",
    "astou",
    "bineta",
    "adama",
    "rokhaya",
    "dieynaba",
    "seynabou",
    "oumou",
    "kadiatou",
    "haby",
    "maimouna",
    "safietou",
    "yacine",
    "nafissatou",
    "sokhna",
    "mame",
    "penda",
    "fatimata",
    "ramatoulaye",
    "salimata",
    "bintou",
    "kine",
    "marieme",
    "ngone",
    "absa",
    "yande",
    "amy",
    "rama",
    "daba",
    "mbayang",
    "arame",
    "diarra",
    "ndella",
    "sira",
    "moussa",
    "mamadou",
    "ibrahima",
    "ousmane",
    "cheikh",
    "abdoulaye",
    "modou",
    "alioune",
    "pape",
    "babacar",
    "lamine",
    "mouhamed",
    "serigne",
    "souleymane",
    "amadou",
    "idrissa",
    "boubacar",
    "malick",
    "assane",
    "samba",
    "demba",
    "omar",
    "bassirou",
    "el",
    "hadji",
    "issa",
    "youssou",
    "saliou",
    "khadim",
    "matar",
    "aliou",
    "ablaye",
    "massamba",
    "djibril",
    "mbaye",
    "gora",
    "fallou",
    "sidy",
    "tidiane",
    "birame",
    "mansour",
    "saliou",
    "elimane",
    "ngor",
    "doudou",
    "waly",
    "ismaila",
    "baye",
    "papa",
    "thierno",
    "mohamed",
    "ahmed",
    "fatima",
    "leila",
    "sara",
    "hassan",
    "yusuf",
    "amina",
    "grace",
    "john",
    "mary",
    "peter",
    "paul",
    "james",
    "anna",
    "maria",
    "jose",
    "ana",
    "luis",
    "carlos",
    "sofia",
    "lucia",
    "marta",
    "pedro",
    "juan",
    "elena",
    "rosa",
    "miguel",
    "david",
    "daniel",
    "samuel",
    "esther",
    "ruth",
    "naomi",
    "joseph",
    "rebecca",
    "sarah",
    "joy",
    "faith",
    "hope",
    "blessing",
    "precious",
    "emmanuel",
    "godwin",
    "chinedu",
    "ngozi",
    "adaeze",
    "kwame",
    "kofi",
    "ama",
    "akosua",
    "yaw",
    "esi",
    "kojo",
    "abena",
    "kwesi",
    "efua",
    "nana",
    "afia",
    "akua",
    "abdou",
    "habib",
    "karim",
    "nabil",
    "rachid",
    "samir",
    "walid",
    "yasmine",
    "nadia",
    "latifa",
    "hawa",
    "kumba",
    "jeneba",
    "mbalu",
    "isatu",
    "kadie",
    "aminatta",
]
_FAMILY = [
    "diop",
    "ndiaye",
    "fall",
    "sow",
    "ba",
    "gueye",
    "diallo",
    "sarr",
    "faye",
    "mbaye",
    "ndour",
    "seck",
    "cisse",
    "niang",
    "dieng",
    "thiam",
    "kane",
    "toure",
    "camara",
    "sy",
    "diouf",
    "sene",
    "ka",
    "ly",
    "wade",
    "mbodj",
    "gaye",
    "diagne",
    "lo",
    "ndao",
    "tall",
    "sall",
    "badji",
    "diatta",
    "sagna",
    "goudiaby",
    "manga",
    "sane",
    "coly",
    "bodian",
    "mendy",
    "gomis",
    "sambou",
    "tine",
    "ciss",
    "diedhiou",
    "kebe",
    "samb",
    "thiaw",
    "gning",
    "dione",
    "ndoye",
    "mboup",
    "diaw",
    "leye",
    "kama",
    "sakho",
    "konate",
    "keita",
    "traore",
    "coulibaly",
    "kone",
    "ouattara",
    "sangare",
    "dembele",
    "doumbia",
    "sissoko",
    "diarra",
    "sidibe",
    "bagayoko",
    "fofana",
    "kante",
    "sylla",
    "bangoura",
    "soumah",
    "conde",
    "barry",
    "bah",
    "balde",
    "sidibe",
    "jalloh",
    "kamara",
    "sesay",
    "koroma",
    "conteh",
    "bangura",
    "turay",
    "mansaray",
    "kargbo",
    "kanu",
    "okafor",
    "okeke",
    "eze",
    "nwosu",
    "obi",
    "adeyemi",
    "adebayo",
    "okonkwo",
    "mensah",
    "owusu",
    "boateng",
    "asante",
    "osei",
    "appiah",
    "addo",
    "agyeman",
    "amoah",
    "darko",
    "acheampong",
    "baah",
    "frimpong",
    "nkrumah",
    "annan",
    "quaye",
    "tetteh",
    "lartey",
    "smith",
    "johnson",
    "brown",
    "williams",
    "jones",
    "garcia",
    "martinez",
    "lopez",
    "gonzalez",
    "perez",
    "sanchez",
    "ramirez",
    "torres",
    "flores",
    "rivera",
    "gomez",
    "diaz",
    "cruz",
    "morales",
    "ortiz",
    "gutierrez",
    "chavez",
    "silva",
    "santos",
    "ferreira",
    "pereira",
    "oliveira",
    "costa",
    "rodrigues",
    "almeida",
    "nascimento",
    "lima",
    "araujo",
    "fernandes",
    "carvalho",
    "gomes",
    "martins",
    "rocha",
    "ribeiro",
    "alves",
    "monteiro",
    "mendes",
    "barros",
    "freitas",
    "barbosa",
    "pinto",
    "moreira",
    "cardoso",
    "teixeira",
    "correia",
    "nunes",
    "soares",
    "vieira",
    "machado",
    "lopes",
    "marques",
    "dias",
    "cavalcanti",
    "mbengue",
    "ndiour",
    "ngom",
    "diome",
    "faye",
    "senghor",
    "dia",
    "dramé",
    "bathily",
    "soumare",
    "tandia",
    "kanoute",
    "diakhate",
    "sarr",
    "ndoye",
    "mbow",
    "ndong",
]


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    birth: str
    sex: str


def people(count: int, seed: int = 13) -> tuple[list[Person], int]:
    """``count`` people, about 1% of them someone already listed (often with a slip)."""
    rng = random.Random(seed)
    out: list[Person] = []
    duplicates = 0
    for _ in range(count):
        if out and rng.random() < DUPLICATE_FRACTION:
            out.append(_again(rng, rng.choice(out)))
            duplicates += 1
            continue
        given = rng.choice(_GIVEN)
        sex = "female" if _GIVEN.index(given) < 40 or rng.random() < 0.45 else "male"
        if rng.random() < 0.15:
            given = f"{given} {rng.choice(_GIVEN)}"
        day = rng.randrange(-30 * 365, 54 * 365)  # 1940 to 2023
        birth = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
        out.append(Person(f"{given.title()} {rng.choice(_FAMILY).title()}", birth, sex))
    return out, duplicates


def _again(rng: random.Random, person: Person) -> Person:
    """The same person registered a second time: exactly, or with one slip."""
    slip = rng.randrange(4)
    name, birth = person.name, person.birth
    if slip == 1:  # a letter changed in one name
        words = name.split()
        i = rng.randrange(len(words))
        word = words[i]
        j = rng.randrange(1, len(word))
        words[i] = word[:j] + rng.choice("aeiouny") + word[j + 1 :]
        name = " ".join(words)
    elif slip == 2 and int(birth[8:]) <= 12:  # day and month swapped
        birth = f"{birth[:4]}-{birth[8:]}-{birth[5:7]}"
    elif slip == 3:  # one digit off in the day
        day = int(birth[8:])
        birth = f"{birth[:8]}{day + 1 if day < 28 else day - 1:02d}"
    return Person(name, birth, person.sex)


def records_of(persons: list[Person]) -> tuple[list[IncomingUpdate], list[IncomingUpdate]]:
    """Each person as a record's first update, with its card and without."""
    with_cards: list[IncomingUpdate] = []
    without: list[IncomingUpdate] = []
    for person in persons:
        record = Record.create(replica="server")
        with record.batch():
            record.set("name", person.name, author="dr")
            record.set("birthDate", person.birth, author="dr")
            record.set("sex", person.sex, author="dr")
        update = record.update_since()
        card = person_card(record)
        with_cards.append(IncomingUpdate(record.record_id, update, None, ORGANISATION, card))
        without.append(IncomingUpdate(record.record_id, update, None, ORGANISATION))
    return with_cards, without


def spread(seconds: list[float], scale: float) -> dict[str, float]:
    return {
        "median": round(statistics.median(seconds) * scale, 3),
        "min": round(min(seconds) * scale, 3),
        "max": round(max(seconds) * scale, 3),
    }


async def first_copy(path: Path, items: list[IncomingUpdate]) -> float:
    """Seconds to write ``items`` in batches of 500 into a new store, a checkpoint each."""
    async with SQLiteStore.open(path) as store:
        gc.collect()
        start = time.perf_counter()
        for done in range(0, len(items), BATCH):
            await store.write_remote(
                items[done : done + BATCH], checkpoint=("first-copy", str(done))
            )
        return time.perf_counter() - start


async def bench_first_copy(
    work: Path, with_cards: list[IncomingUpdate], without: list[IncomingUpdate], runs: int
) -> tuple[dict[str, Any], Path]:
    carded: list[float] = []
    plain: list[float] = []
    last = work / "carded-0.db"
    for run in range(runs):
        last = work / f"carded-{run}.db"
        plain.append(await first_copy(work / f"plain-{run}.db", without))
        carded.append(await first_copy(last, with_cards))
        (work / f"plain-{run}.db").unlink()  # keep the disk small; the last carded one stays
        if run < runs - 1:
            last.unlink()
    records = len(with_cards)
    async with SQLiteStore.open(last) as store:
        pairs = await store.person_pairs()
    return {
        "case": "first copy: write_remote in batches of 500",
        "records": records,
        "runs": runs,
        "with_cards_s": spread(carded, 1),
        "without_cards_s": spread(plain, 1),
        "with_cards_records_per_s": round(records / statistics.median(carded)),
        "without_cards_records_per_s": round(records / statistics.median(plain)),
        "ratio": round(statistics.median(carded) / statistics.median(plain), 2),
        "extra_us_per_record": round(
            (statistics.median(carded) - statistics.median(plain)) / records * 1e6, 1
        ),
        "pairs_found": len(pairs),
        "pairs_by_state": {s.value: sum(1 for p in pairs if p.state is s) for s in PairState},
    }, last


async def bench_single_write(path: Path, persons: list[Person], samples: int) -> dict[str, Any]:
    """One durable local write of a new record, with its card and without, ``samples`` each."""
    rng = random.Random(7)
    carded: list[float] = []
    plain: list[float] = []
    found: list[int] = []
    async with SQLiteStore.open(path) as store:
        count = await store.count_records()
        for n in range(samples * 2):
            person = rng.choice(persons)  # someone stored: the new record pairs with them
            record = Record.create(replica="laptop")
            with record.batch():
                record.set("name", person.name, author="dr")
                record.set("birthDate", person.birth, author="dr")
                record.set("sex", person.sex, author="dr")
            update = record.update_since()
            card: PersonCard | None = person_card(record) if n % 2 == 0 else None
            gc.collect()
            start = time.perf_counter()
            await store.write_local(
                record.record_id, update, conflicts=(), organisation=ORGANISATION, person=card
            )
            elapsed = time.perf_counter() - start
            if card is None:
                plain.append(elapsed)
            else:
                carded.append(elapsed)
                found.append(len(await store.person_pairs(record.record_id)))
    return {
        "case": "one write_local of a new record (committed and fsynced)",
        "records_in_store": count,
        "samples": samples,
        "with_card_ms": spread(carded, 1e3),
        "without_card_ms": spread(plain, 1e3),
        "pairs_made_median": statistics.median(found),
    }


async def run(records: int, runs: int) -> list[dict[str, Any]]:
    start = time.perf_counter()
    persons, duplicates = people(records)
    with_cards, without = records_of(persons)
    keys = [len(item.person.blocking_keys()) for item in with_cards if item.person is not None]
    made_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="caresync-bench-persons-") as tmp:
        copy, path = await bench_first_copy(Path(tmp), with_cards, without, runs)
        copy["duplicates_generated"] = duplicates
        copy["keys_per_card_mean"] = round(statistics.mean(keys), 2)
        copy["setup_s"] = round(made_s, 1)
        single = await bench_single_write(path, persons, max(runs * 4, 1))
    return [copy, single]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_person_index")
    parser.add_argument("--tiny", action="store_true", help="every case once, tiny sizes")
    parser.add_argument("--out", type=Path, default=None, help="where to write JSON results")
    parser.add_argument("--records", type=int, default=100_000, help="records in the store")
    parser.add_argument("--runs", type=int, default=5, help="runs of each case (at least 5)")
    args = parser.parse_args(argv)
    if args.out is None and not args.tiny:
        args.out = RESULTS_DIR / "person_index.json"
    records, runs = (300, 1) if args.tiny else (args.records, max(args.runs, 5))
    cases = asyncio.run(run(records, runs))
    write_results(args.out, "person_index", cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
