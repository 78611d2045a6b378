"""English word forms and numbers for the sentence generator, and the shipped word lists.

Regular inflection (plural, third person, past, -ing), the article before a word, cardinal,
ordinal and year numbers in words (British style), and the lexicon read from the
``words_*.txt`` files beside this module (irregular forms are spelled out in those lists).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass

_ENTRY = re.compile(r"[a-z]+(?:'[a-z]+)*(?: [a-z]+(?:'[a-z]+)*)*")
_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
          "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ORDINAL_UNITS = ("zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                  "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth",
                  "sixteenth", "seventeenth", "eighteenth", "nineteenth")
_VOWEL_LETTER_TAKES_A = frozenset({"unique", "uniform", "united", "union", "unit", "unity", "universe",
                                   "university", "useful", "useless", "usual", "usage", "user", "one",
                                   "european", "eulogy"})
_SILENT_H_TAKES_AN = frozenset({"honest", "honourable", "honour", "hour", "heir"})


@dataclass(frozen=True)
class Noun:
    """A noun; ``plural`` is None for a mass noun (rice, advice)."""

    singular: str
    plural: str | None


@dataclass(frozen=True)
class Verb:
    """All the forms of a verb that the templates use."""

    base: str
    third: str
    past: str
    participle: str
    gerund: str


@dataclass(frozen=True)
class Lexicon:
    """The word lists, read once from the ``words_*.txt`` files of this package."""

    nouns: tuple[Noun, ...]
    people: tuple[Noun, ...]
    transitive: tuple[Verb, ...]
    intransitive: tuple[Verb, ...]
    adjectives: tuple[str, ...]
    adverbs: tuple[str, ...]
    names: tuple[str, ...]
    places: tuple[str, ...]


def _is_consonant_y(word: str) -> bool:
    return word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou"


def plural_of(singular: str) -> str:
    """The regular English plural (irregular ones are spelled out in the word lists)."""
    if singular.endswith(("s", "x", "z", "ch", "sh")):
        return singular + "es"
    if _is_consonant_y(singular):
        return singular[:-1] + "ies"
    return singular + "s"


def third_person_of(base: str) -> str:
    """The present third person singular: watch -> watches, carry -> carries."""
    if base == "have":
        return "has"
    if base.endswith(("s", "x", "z", "ch", "sh", "o")):
        return base + "es"
    if _is_consonant_y(base):
        return base[:-1] + "ies"
    return base + "s"


def past_of(base: str) -> str:
    """The regular past tense: bake -> baked, carry -> carried, walk -> walked."""
    if base.endswith("e"):
        return base + "d"
    if _is_consonant_y(base):
        return base[:-1] + "ied"
    return base + "ed"


def gerund_of(base: str, past: str) -> str:
    """The -ing form; a doubled final consonant in the past (stopped) is doubled here too."""
    if past == base + base[-1] + "ed":
        return base + base[-1] + "ing"
    if base.endswith("ie"):
        return base[:-2] + "ying"
    if base.endswith("e") and not base.endswith(("ee", "ye", "oe")) and len(base) > 2:
        return base[:-1] + "ing"
    return base + "ing"


def _read_entries(name: str) -> list[list[str]]:
    """The entries of ``words_<name>.txt``: each line split into its fields (multi-word places kept)."""
    text = importlib.resources.files(__package__).joinpath(f"words_{name}.txt").read_text(encoding="utf-8")
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not _ENTRY.fullmatch(line) and not re.fullmatch(r"[a-z]+ -", line):
            raise ValueError(f"words_{name}.txt line {number}: {raw!r} has characters outside a-z and '")
        entries.append(line.split(" "))
    return entries


def _nouns(name: str) -> tuple[Noun, ...]:
    nouns = []
    for fields in _read_entries(name):
        if len(fields) > 2:
            raise ValueError(f"words_{name}.txt: {' '.join(fields)!r} should be `singular [plural]`")
        plural = fields[1] if len(fields) == 2 else plural_of(fields[0])
        nouns.append(Noun(fields[0], None if plural == "-" else plural))
    return tuple(nouns)


def _verbs(name: str) -> tuple[Verb, ...]:
    verbs = []
    for fields in _read_entries(name):
        if len(fields) > 4:
            raise ValueError(f"words_{name}.txt: {' '.join(fields)!r} should be `base [past [participle [gerund]]]`")
        base = fields[0]
        past = fields[1] if len(fields) > 1 else past_of(base)
        participle = fields[2] if len(fields) > 2 else past
        gerund = fields[3] if len(fields) > 3 else gerund_of(base, past)
        verbs.append(Verb(base, third_person_of(base), past, participle, gerund))
    return tuple(verbs)


@functools.cache
def load_lexicon() -> Lexicon:
    """Read and inflect the shipped word lists (cached)."""
    return Lexicon(
        nouns=_nouns("nouns"),
        people=_nouns("people"),
        transitive=_verbs("verbs_transitive"),
        intransitive=_verbs("verbs_intransitive"),
        adjectives=tuple(" ".join(fields) for fields in _read_entries("adjectives")),
        adverbs=tuple(" ".join(fields) for fields in _read_entries("adverbs")),
        names=tuple(" ".join(fields) for fields in _read_entries("names")),
        places=tuple(" ".join(fields) for fields in _read_entries("places")),
    )


def number_words(number: int) -> str:
    """A cardinal number from 0 to 999,999 in words, British style: 'three hundred and five'."""
    if not 0 <= number < 1_000_000:
        raise ValueError(f"number_words handles 0..999999, not {number}")
    if number < 20:
        return _UNITS[number]
    if number < 100:
        tens, units = divmod(number, 10)
        return _TENS[tens] + ("" if units == 0 else " " + _UNITS[units])
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        head = _UNITS[hundreds] + " hundred"
        return head if rest == 0 else f"{head} and {number_words(rest)}"
    thousands, rest = divmod(number, 1000)
    head = number_words(thousands) + " thousand"
    if rest == 0:
        return head
    return f"{head} and {number_words(rest)}" if rest < 100 else f"{head} {number_words(rest)}"


def ordinal_words(number: int) -> str:
    """An ordinal from 1 to 99 in words: 'twenty first'."""
    if not 1 <= number < 100:
        raise ValueError(f"ordinal_words handles 1..99, not {number}")
    if number < 20:
        return _ORDINAL_UNITS[number]
    tens, units = divmod(number, 10)
    if units == 0:
        return _TENS[tens][:-1] + "ieth"
    return f"{_TENS[tens]} {_ORDINAL_UNITS[units]}"


def year_words(year: int) -> str:
    """A year as people say it: 'nineteen oh five', 'two thousand and nine', 'twenty twenty'."""
    if 2000 <= year < 2010:
        return number_words(year)
    century, rest = divmod(year, 100)
    if rest == 0:
        return number_words(century) + " hundred"
    tail = f"oh {_UNITS[rest]}" if rest < 10 else number_words(rest)
    return f"{number_words(century)} {tail}"


def article_for(word: str) -> str:
    """The indefinite article before ``word``, by its sound: an hour, a unit, an apple."""
    first = word.split(" ")[0]
    if first in _VOWEL_LETTER_TAKES_A:
        return "a"
    if first in _SILENT_H_TAKES_AN or first[0] in "aeiou":
        return "an"
    return "a"
