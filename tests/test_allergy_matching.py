"""Matching allergens to drugs (issue 13, deliverable 2): the substance table alone.

Each case the issue names (misspellings, plurals, phrases, brands, a substance
outside the table matching itself), the confusable pairs that must never
match, the bundled table's coverage and sources, and a table an application
passes itself.
"""

from __future__ import annotations

import json
import random
from importlib import resources

import pytest

from caresync import (
    DEFAULT_SUBSTANCES,
    InvalidInputError,
    MatchKind,
    SubstanceTable,
)
from caresync.conflicts.substances import TABLE_FORMAT, osa_distance

T = DEFAULT_SUBSTANCES

# ------------------------------------------------------------- the issue's cases


@pytest.mark.parametrize(
    ("allergen", "drug"),
    [
        ("Penicilin", "Amoxicillin 500 mg capsules"),  # a misspelling
        ("Pencillin", "amoxicillin"),
        ("penicillins", "amoxicillin"),  # a plural
        ("Penicillin allergy", "amoxicillin"),  # a phrase
        ("Allergy to penicillin", "Flucloxacillin 500mg"),
        ("allergic to PENICILLIN.", "ampicillin"),
        ("  penicillin  (rash as a child) ", "amoxicillin"),
        ("penicillin intolerance", "amoxicillin"),
        ("Penicillin", "Augmentin 625 mg tablets"),  # brands
        ("penicillin", "Amoxil 250mg/5ml suspension"),
        ("penicillin", "co-amoxiclav 625mg"),
        ("penicillin", "Tazocin 4.5 g IV"),
        ("sulfa", "Bactrim DS"),
        ("Sulfa drugs", "Septra"),
        ("sulphonamides", "co-trimoxazole 960 mg"),
        ("codeine", "tramadol 50 mg"),
        ("codeine", "Co-codamol 30/500"),
        ("NSAIDs", "Advil 200 mg"),
        ("nsaid", "Nurofen"),
        ("aspirin", "Voltaren gel"),
        ("aspirin", "ibuprofen 400 mg"),
        ("macrolides", "Zithromax 250 mg"),
        ("quinolones", "Cipro 500"),
        ("fluoroquinolones", "levofloxacin"),
        ("tetracyclines", "doxycycline 100mg"),
        ("ACE inhibitors", "Ramipril 5 mg"),
        ("lisinopril", "enalapril"),
        ("opiates", "morphine sulfate 10 mg"),
        ("contrast", "Omnipaque 300"),
        ("iodinated contrast media", "iopamidol"),
        ("latex", "latex gloves"),
        ("beta-lactams", "meropenem 1 g"),
        ("carbapenems", "imipenem"),
        ("Cephalexin", "Keflex 500 mg"),  # synonyms: the same substance
        ("cefalexin", "cephalexin"),
        ("amoxycillin", "amoxicillin"),
        ("Augmentin", "amoxicillin"),  # an allergy to a product: to its ingredients
        ("Bactrim", "trimethoprim"),
        ("TMP/SMX", "sulfamethoxazole"),
        ("acetaminophen", "Tylenol with codeine"),
        ("Penicillin, sulfa", "Septra"),  # several allergens in one text
        ("penicillin and codeine", "Tylenol #3"),
    ],
)
def test_the_issue_cases_match(allergen: str, drug: str) -> None:
    assert T.recognises(allergen), T.read(allergen)
    assert T.matches(allergen, drug), (allergen, drug)


@pytest.mark.parametrize(
    "allergen", ["amoxicillin", "Ondansetron", "kiwi fruit", "Bisoprolol", "egg"]
)
def test_a_substance_always_matches_itself_in_the_table_or_not(allergen: str) -> None:
    match = T.match(allergen, f"{allergen.upper()} 5 mg tablets")
    assert match is not None
    assert match.kind is MatchKind.SAME
    assert not T.matches(allergen, "metformin 500 mg")


def test_a_substance_outside_the_table_matches_only_as_whole_words() -> None:
    assert T.matches("ondansetron", "Ondansetron 4mg ODT")
    assert not T.matches("ondansetron", "ondansetronine")  # not a word of the drug
    assert not T.matches("ondansetron", "")
    assert not T.recognises("ondansetron")
    assert T.read("ondansetron").unrecognised == ("ondansetron",)


def test_negated_names_do_not_match() -> None:
    assert T.matches("latex", "latex gloves")
    assert not T.matches("latex", "Latex-free gloves")
    assert not T.matches("latex", "non-latex catheter")
    assert not T.matches("kiwi", "kiwi-free diet")  # a name outside the table too


@pytest.mark.parametrize(
    ("allergen", "drug", "kind"),
    [
        ("penicillin", "Amoxicillin500mg", MatchKind.CLASS),
        ("penicillin", "Amoxil500mg caps", MatchKind.CLASS),
        ("amoxicillin", "amoxicillin250mg/5ml", MatchKind.SAME),
        ("penicillin", "Augmentin625", MatchKind.CLASS),
        ("NSAIDs", "ibuprofen400mg", MatchKind.CLASS),
        ("penicillin", "amoxicilin500mg", MatchKind.CLASS),  # glued and misspelt
        ("aspirin", "ASA81", MatchKind.SAME),
        ("aspirin", "5ASA 400 mg", MatchKind.CROSS_REACTIVITY),  # mesalazine, not "ASA"
        ("amoxicillin500mg", "Amoxil 250 mg", MatchKind.SAME),  # the allergen so written
        ("ondansetron", "Ondansetron8mg", MatchKind.SAME),  # outside the table too
    ],
)
def test_a_dose_written_against_the_name_does_not_hide_it(
    allergen: str, drug: str, kind: MatchKind
) -> None:
    # A word was letters and digits together: "amoxicillin500mg" was one unknown
    # word, so a penicillin allergy let "Amoxicillin500mg" through unflagged.
    match = T.match(allergen, drug)
    assert match is not None, (allergen, drug)
    assert match.kind is kind, match
    assert not T.matches(allergen, "metformin500mg")


@pytest.mark.parametrize(
    ("allergen", "drug", "kind"),
    [
        ("penicillin", "Augmentin", MatchKind.CLASS),
        ("amoxicillin", "Amoxil", MatchKind.SAME),
        ("amoxicillin", "flucloxacillin", MatchKind.CLASS),  # one penicillin: all
        ("penicillin", "cefalexin", MatchKind.CROSS_REACTIVITY),
        ("penicillin", "ceftriaxone 1 g", MatchKind.CROSS_REACTIVITY),
        ("penicillin", "meropenem", MatchKind.CROSS_REACTIVITY),
        ("cephalosporins", "amoxicillin", MatchKind.CROSS_REACTIVITY),
        ("codeine", "tramadol", MatchKind.CROSS_REACTIVITY),  # opioids: flagged only
        ("codeine", "co-codamol", MatchKind.SAME),
        ("sulfa", "Celebrex", MatchKind.CROSS_REACTIVITY),  # its FDA label
        ("lisinopril", "Entresto", MatchKind.CROSS_REACTIVITY),  # after ACE angioedema
        ("iohexol", "Visipaque", MatchKind.CROSS_REACTIVITY),
        ("cefuroxime", "cefotaxime", MatchKind.CLASS),  # one letter apart: not the same
        ("aspirin", "mesalazine", MatchKind.CROSS_REACTIVITY),
        ("aspirin", "5-ASA 400 mg", MatchKind.CROSS_REACTIVITY),  # mesalazine, not "ASA"
    ],
)
def test_the_kind_of_match(allergen: str, drug: str, kind: MatchKind) -> None:
    match = T.match(allergen, drug)
    assert match is not None
    assert match.kind is kind, match
    assert match.cross_reactivity is (kind is MatchKind.CROSS_REACTIVITY)


def test_a_match_says_why() -> None:
    augmentin = T.match("Penicillin allergy", "Augmentin 625mg")
    assert augmentin is not None
    assert augmentin.substance == "amoxicillin"
    assert augmentin.allergen == "penicillins"
    assert augmentin.reason == "it contains amoxicillin, a penicillin"
    cross = T.match("penicillin", "Keflex")
    assert cross is not None
    assert cross.reason == (
        "it contains cefalexin, a cephalosporin: possible cross-reactivity with penicillins"
    )
    sibling = T.match("codeine", "tramadol")
    assert sibling is not None
    assert "like codeine" in sibling.reason
    assert "cross-reactivity" in sibling.reason
    misspelt = T.match("Penicilin", "amoxicillin")
    assert misspelt is not None
    assert misspelt.corrected
    assert T.read("Penicilin").corrected
    exact = T.match("penicillin", "amoxicillin")
    assert exact is not None
    assert not exact.corrected


def test_the_best_reason_wins() -> None:
    # co-amoxiclav is the allergen's own product (same), not merely a penicillin
    match = T.match("co-amoxiclav", "Augmentin")
    assert match is not None
    assert match.kind is MatchKind.SAME
    # a drug with two ingredients: the closer one explains it
    both = T.match("codeine", "Nurofen Plus")
    assert both is not None
    assert both.kind is MatchKind.SAME
    assert both.substance == "codeine"


# --------------------------------------------------------- reading an allergen


@pytest.mark.parametrize(
    ("text", "read_as"),
    [
        ("Penicillin", ("penicillins",)),
        ("PENICILLINS", ("penicillins",)),
        ("penicillin allergy", ("penicillins",)),
        ("allergic to penicillin", ("penicillins",)),
        ("Allergy to: Penicillin!", ("penicillins",)),
        ("Penicillin - anaphylaxis", ("penicillins",)),
        ("ACE inhibitors", ("ACE inhibitors",)),
        ("NSAID's", ("NSAIDs",)),
        ("non-steroidal anti-inflammatory drugs", ("NSAIDs",)),
        ("cephalosporins", ("cephalosporins",)),
        ("codiene", ("codeine",)),
        ("ibuprofin", ("ibuprofen",)),
        ("amoxicilin", ("amoxicillin",)),
        ("ciprofloxacine", ("ciprofloxacin",)),
        ("sulfamethoxazol", ("sulfamethoxazole",)),
        ("Tylenol #3", ("co-codamol",)),
        ("trimethoprim-sulfamethoxazole", ("co-trimoxazole",)),
        ("penicillin and sulfa", ("penicillins", "sulfonamide antibiotics")),
        ("amoxicillin 500 mg capsules", ("amoxicillin",)),
    ],
)
def test_how_an_allergen_is_read(text: str, read_as: tuple[str, ...]) -> None:
    reading = T.read(text)
    assert reading.recognised == read_as
    assert reading.unrecognised == ()


def test_a_reading_says_what_was_not_recognised_and_mentions_of_anaphylaxis() -> None:
    partly = T.read("penicillin, kiwi")
    assert partly.recognised == ("penicillins",)
    assert partly.unrecognised == ("kiwi",)
    assert not T.recognises("penicillin, kiwi")
    assert T.read("Penicillin (anaphylaxis)").anaphylaxis
    assert not T.read("Penicillin (rash)").anaphylaxis
    assert T.read("allergy").unrecognised == ("allergy",)
    assert T.read(42).unrecognised == ("42",)
    assert not T.recognises(None)
    assert T.match(None, "amoxicillin") is None
    assert T.match("penicillin", {"drug": "amoxicillin"}) is None


# ------------------------------------------------------------ confusable pairs


@pytest.mark.parametrize(
    ("allergen", "drug"),
    [
        ("penicillin", "penicillamine 250 mg"),  # a chelating agent, not a penicillin
        ("penicillamine", "penicillin V"),
        ("tetracycline", "tetracaine eye drops"),  # a local anaesthetic
        ("tetracaine", "tetracycline"),
        ("latex", "Lasix 40 mg"),  # furosemide
        ("Lasix", "latex gloves"),
        ("Toradol", "tramadol"),  # ketorolac (an NSAID), not an opioid
        ("tramadol", "Toradol"),
        ("Celebrex", "Celexa 20 mg"),  # citalopram
        ("Celexa", "Celebrex"),
        ("naproxen", "naloxone"),
        ("opioids", "naloxone 400 micrograms"),  # the antidote, not an opioid
        ("opioids", "naloxone (opioid antagonist)"),
        ("hydrocodone", "hydrocortisone cream"),
        ("hydrocortisone", "hydrocodone"),
        ("codeine", "povidone-iodine"),
        ("Acular", "hypromellose ocular lubricant"),  # ketorolac eye drops
        ("ketorolac", "ocular lubricant"),
        ("tramadol", "Ultra-soft moisturiser"),
        ("valdecoxib", "Extra strength paracetamol"),
        ("sulfa", "sulfasalazine-free diet"),
        ("contrast", "gadolinium"),
        ("penicillin", "insulin pen"),
        ("Bactrim", "Bactroban ointment"),  # mupirocin
        ("imipenem", "imipramine"),
        ("quinolones", "quinine"),
        ("macrolides", "tacrolimus"),
        ("cephalosporins", "ciclosporin"),
        ("aspirin", "Bayer ciprofloxacin"),  # a company, not aspirin
    ],
)
def test_confusable_pairs_do_not_match(allergen: str, drug: str) -> None:
    assert T.match(allergen, drug) is None


@pytest.mark.parametrize(
    "misspelt",
    [
        "losinopril",  # one edit from lisinopril and from fosinopril: never guess
        "orfloxacin",  # one edit from ofloxacin and from norfloxacin
        "codine",  # one edit from codeine and from iodine (a drug outside the table)
    ],
)
def test_a_misspelling_near_two_names_is_not_read(misspelt: str) -> None:
    assert not T.recognises(misspelt)
    assert T.read(misspelt).unrecognised == (misspelt,)


def test_no_table_name_is_read_as_another() -> None:
    """Exact names come first: a name of the table is never read through a misspelling."""
    for name in T.names():
        reading = T.read(name)
        assert not reading.corrected, name
        assert reading.recognised, name


# A sample of drugs outside the table and of words of prescriptions: none may be
# read as a table name, whole or inside a drug's text.
# fmt: off
OUTSIDE = [
    "abacavir", "acetazolamide", "aciclovir", "adalimumab", "adrenaline", "alendronate",
    "allopurinol", "alprazolam", "amiodarone", "amitriptyline", "amlodipine", "apixaban",
    "aripiprazole", "atenolol", "atorvastatin", "azathioprine", "baclofen", "beclometasone",
    "bendroflumethiazide", "betamethasone", "bisoprolol", "budesonide", "bumetanide",
    "candesartan", "carbamazepine", "carbimazole", "carvedilol", "cetirizine", "chloramphenicol",
    "chlorhexidine", "chlorphenamine", "ciclosporin", "citalopram", "clindamycin", "clobazam",
    "clonazepam", "clonidine", "clopidogrel", "clozapine", "colchicine", "cyclizine", "dabigatran",
    "dapsone", "dexamethasone", "diazepam", "digoxin", "diltiazem", "dipyridamole", "domperidone",
    "donepezil", "doxazosin", "duloxetine", "enoxaparin", "escitalopram", "esomeprazole",
    "famotidine", "finasteride", "fluconazole", "fluoxetine", "furosemide", "gabapentin",
    "gliclazide", "haloperidol", "heparin", "hydralazine", "hydrochlorothiazide", "hydrocortisone",
    "hydroxychloroquine", "hydroxyzine", "insulin", "isoniazid", "ketamine", "lamotrigine",
    "lansoprazole", "levetiracetam", "levothyroxine", "lidocaine", "linezolid", "lithium",
    "loperamide", "loratadine", "lorazepam", "losartan", "metformin", "methotrexate",
    "metoclopramide", "metoprolol", "metronidazole", "midazolam", "mirtazapine", "montelukast",
    "mupirocin", "naloxone", "naltrexone", "nifedipine", "nitrofurantoin", "omeprazole",
    "ondansetron", "oseltamivir", "pantoprazole", "paroxetine", "penicillamine", "phenytoin",
    "prednisolone", "prednisone", "pregabalin", "procaine", "procainamide", "promethazine",
    "propranolol", "propofol", "quetiapine", "quinine", "ramelteon", "ranitidine", "rifampicin",
    "risperidone", "rivaroxaban", "salbutamol", "sertraline", "sildenafil", "simvastatin",
    "spironolactone", "sumatriptan", "tacrolimus", "tamsulosin", "tetracaine", "trazodone",
    "valproate", "valsartan", "venlafaxine", "verapamil", "warfarin", "zolpidem", "zopiclone",
    "tablets", "tablet", "capsules", "injection", "solution", "suspension", "cream", "ointment",
    "drops", "syrup", "sachet", "patch", "inhaler", "modified", "release", "sodium", "potassium",
    "hydrochloride", "sulfate", "phosphate", "daily", "twice", "morning", "night", "units",
    "infusion", "intravenous", "topical", "chewable", "dispersible", "effervescent", "liquid",
    "ampoule", "syringe", "ocular", "nasal", "spray", "vaginal", "rectal", "suppository",
    "lozenge", "mouthwash", "elixir", "linctus", "granules", "powder", "lotion", "transdermal",
    "sublingual", "buccal", "gastro", "resistant", "enteric", "coated", "retard", "forte", "ultra",
    "junior", "children", "infant", "adult", "strength", "double", "extra", "maximum", "rapid",
    "soluble", "trihydrate", "acetate", "citrate", "calcium", "magnesium", "vitamin", "ferrous",
    "glucose", "saline", "water", "dextrose", "paraffin", "emollient", "gloves", "catheter",
    "dressing", "peanut", "shellfish", "gelatin", "pollen", "nickel", "plaster", "iodine", "kiwi",
]
# fmt: on


def test_drugs_outside_the_table_and_prescription_words_are_never_read_as_table_names() -> None:
    for word in OUTSIDE:
        assert T.read(word).recognised == (), word
        assert not T.matches("penicillin", f"{word} 5 mg"), word
        for allergen in ("nsaids", "opioids", "tramadol", "ketorolac", "latex", "macrolides"):
            assert not T.matches(allergen, word), (allergen, word)


def test_osa_distance() -> None:
    assert osa_distance("penicillin", "penicillin", 2) == 0
    assert osa_distance("penicilin", "penicillin", 2) == 1  # a letter left out
    assert osa_distance("peincillin", "penicillin", 2) == 1  # two letters swapped
    assert osa_distance("penicillin", "penicillamine", 2) == 3  # over the limit
    assert osa_distance("latex", "lasix", 1) == 2


def test_misspellings_are_found_as_a_full_comparison_would() -> None:
    """The prefix index finds every name a comparison with each name would (seeded)."""
    rng = random.Random(13)
    everything = sorted({n.replace(" ", "") for n in (*T.names(), *T.to_data()["other_names"])})
    candidates = [n for n in everything if n.isalpha() and len(n) >= 5]

    def budget(n: int) -> int:
        return 0 if n < 5 else 1 if n < 9 else 2

    def brute(word: str) -> dict[str, int]:
        found = {}
        for name in candidates:
            limit = min(budget(len(word)), budget(len(name)))
            distance = osa_distance(word, name, limit)
            if limit and distance <= limit:
                found[name] = distance
        return found

    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(1500):
        word = list(rng.choice(candidates))
        for _ in range(rng.randrange(1, 3)):
            i = rng.randrange(len(word))
            op = rng.randrange(4)
            if op == 0:
                word.insert(i, rng.choice(letters))
            elif op == 1 and len(word) > 5:
                del word[i]
            elif op == 2:
                word[i] = rng.choice(letters)
            elif i + 1 < len(word):
                word[i], word[i + 1] = word[i + 1], word[i]
        text = "".join(word)
        expected = brute(text) if budget(len(text)) else {}
        assert T._near_names(text) == expected, text


# ------------------------------------------------------------ the bundled table


def test_the_bundled_table_is_data_with_its_sources() -> None:
    data = json.loads(
        resources.files("caresync.conflicts")
        .joinpath("data")
        .joinpath("substances.json")
        .read_text("utf-8")
    )
    assert data["format"] == TABLE_FORMAT
    sources = " ".join(s["name"] for s in data["sources"])
    assert "Anatomical Therapeutic Chemical" in sources
    assert "British National Formulary" in sources
    assert "Food and Drug Administration" in sources
    assert T.sources == tuple(s["name"] for s in data["sources"])
    assert all(c["sources"] for c in data["classes"])
    assert SubstanceTable.from_data(data) == T


def test_the_bundled_table_covers_the_common_drug_allergy_classes() -> None:
    assert set(T.classes) >= {
        "penicillins",
        "cephalosporins",
        "carbapenems",
        "beta-lactams",
        "sulfonamide antibiotics",
        "nsaids",
        "opioids",
        "macrolides",
        "quinolones",
        "tetracyclines",
        "ace inhibitors",
        "iodinated contrast media",
    }
    assert T.recognises("latex")
    assert len(T.names()) >= 600  # generic and brand names, synonyms, class names


def test_a_table_round_trips_through_its_data() -> None:
    copy = SubstanceTable.from_data(T.to_data())
    assert copy == T
    assert copy.digest() == T.digest()
    assert copy is not T
    for allergen, drug in (("Penicilin", "Augmentin"), ("codeine", "tramadol")):
        assert copy.match(allergen, drug) == T.match(allergen, drug)
    as_json = json.dumps(T.to_data())
    assert SubstanceTable.from_json(as_json) == T


# ---------------------------------------------------------- an application's table


def test_an_application_extends_the_table() -> None:
    assert not T.recognises("peanut")
    table = T.extended({"peanut": ["arachis oil"], "penicillin": ["newcillin"]})
    assert table.recognises("peanut")
    assert table.matches("Peanut allergy", "Arachis oil enema")
    assert table.matches("penicillin", "newcillin 1 g")
    assert not T.matches("penicillin", "newcillin 1 g")
    assert table.matches("newcillin", "amoxicillin")  # a member of the penicillins now
    assert table.digest() != T.digest()
    assert table != T
    assert T.extended({}) == T


def test_a_plain_mapping_still_makes_a_table() -> None:
    table = SubstanceTable.of({"Peanut": ["Arachis oil", "peanut oil"], "latex": []})
    assert table.matches("peanut", "arachis oil 5 ml")
    assert table.matches("peanut", "peanut oil")
    assert not table.matches("peanut", "olive oil")
    assert not table.matches("arachis oil", "peanut oil")  # only the key rules out others
    assert table.matches("arachis oil", "arachis oil")
    assert table.recognises("latex")
    assert not table.recognises("penicillin")
    same = SubstanceTable.of({"latex": [], "peanut": ["peanut oil", "arachis oil"]})
    assert same.digest() == table.digest()


def test_an_application_passes_a_table_of_its_own_data() -> None:
    data = {
        "format": TABLE_FORMAT,
        "sources": [{"name": "our hospital formulary, 2026"}],
        "classes": [
            {
                "id": "penicillins",
                "label": "penicillins",
                "member_label": "a penicillin",
                "terms": ["penicillin"],
                "member_allergy": "class",
                "members": {"amoxicillin": ["amoxil"], "co-amoxiclav": ["augmentin"]},
            }
        ],
        "substances": {"chlorhexidine": ["hibiscrub"]},
    }
    table = SubstanceTable.from_data(data)
    assert table.sources == ("our hospital formulary, 2026",)
    assert table.matches("penicilin", "Augmentin")
    assert table.matches("chlorhexidine", "Hibiscrub 4%")
    assert not table.matches("penicillin", "cefalexin")  # no cross-reactivity in it
    assert not table.recognises("sulfa")


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"format": "other"}, "format"),
        ({"format": TABLE_FORMAT, "classes": [{"id": "x", "includes": ["y"]}]}, "no class"),
        (
            {"format": TABLE_FORMAT, "substances": {"a": {"names": [], "contains": ["b"]}}},
            "no substance",
        ),
        (
            {"format": TABLE_FORMAT, "substances": {"a": ["same"], "b": ["same"]}},
            "names both",
        ),
        ({"format": TABLE_FORMAT, "classes": [{"id": "x", "member_allergy": "x"}]}, "member"),
        ({"format": TABLE_FORMAT, "substances": {"a": [""]}}, "not a name"),
        ({"format": TABLE_FORMAT, "substances": {"a": []}, "other_names": ["a"]}, "other"),
    ],
)
def test_bad_table_data_is_refused_with_a_reason(data: dict, complaint: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidInputError, match=complaint):
        SubstanceTable.from_data(data)


def test_bad_json_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="not JSON"):
        SubstanceTable.from_json("{")


def test_answers_do_not_depend_on_the_process() -> None:
    """Every replica must agree: the same digest and answers under any hash seed."""
    import os
    import subprocess
    import sys

    probe = (
        "from caresync import DEFAULT_SUBSTANCES as T\n"
        "cases = [('Penicilin', 'Augmentin'), ('codeine', 'Nurofen Plus'), ('sulfa', 'Celebrex'),"
        " ('beta-lactams', 'Tazocin'), ('aspirin', '5-ASA'), ('penicillin, kiwi', 'amoxil')]\n"
        "print(T.digest(), [T.match(a, d) for a, d in cases], T.read('penicillin, kiwi'))\n"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        done = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1, outputs
