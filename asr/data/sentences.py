"""A deterministic generator of varied English sentences for the synthetic corpus.

Sentences come from a few dozen grammar templates filled from the word lists shipped beside
this module (``words_*.txt``): nouns, people, verbs, adjectives, adverbs, names and places,
plus numbers, times, dates and money spelled out. Output is lower case and uses only the
letters a-z, the apostrophe and single spaces, so it fits the default alphabet.

>>> generate_sentences(3, seed=1)
['a singer likes imagining a sheep', 'kiss an attractive selfish passenger yesterday', 'edward giggles somewhere']
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asr.data.english import (Lexicon, Verb, article_for, load_lexicon, number_words, ordinal_words, past_of,
                             third_person_of, year_words)

MIN_WORDS = 3
MAX_WORDS = 12

_PRONOUNS = {  # subject -> (object, possessive, person)
    "i": ("me", "my", "1s"),
    "you": ("you", "your", "2"),
    "he": ("him", "his", "3s"),
    "she": ("her", "her", "3s"),
    "it": ("it", "its", "3s"),
    "we": ("us", "our", "3p"),
    "they": ("them", "their", "3p"),
}
_BE_CONTRACTION = {"i": "i'm", "you": "you're", "he": "he's", "she": "she's", "it": "it's",
                   "we": "we're", "they": "they're"}
_POSSESSIVES = ("my", "your", "his", "her", "our", "their")
_PREPOSITIONS = ("in", "on", "under", "near", "behind", "beside", "with", "without", "for", "from",
                 "into", "across", "through", "around", "above", "below", "towards", "along", "beyond",
                 "inside", "outside", "past", "by", "over", "against", "among", "upon", "within")
_INTENSIFIERS = ("very", "really", "quite", "rather", "extremely", "fairly", "so", "too", "pretty")
_QUANTIFIERS = ("some", "many", "a few", "several", "all the", "no", "most of the", "both")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
_PARTS_OF_DAY = ("morning", "afternoon", "evening", "night")
_DIGITS = tuple(number_words(digit) for digit in range(10))
_CURRENCIES = (("dollar", "dollars", "cents"), ("pound", "pounds", "pence"), ("euro", "euros", "cents"))
_IRREGULAR_PAST = {"forgeted": "forgot", "planed": "planned", "thinked": "thought", "knowed": "knew",
                   "sayed": "said", "feeled": "felt"}


@dataclass
class _Subject:
    words: str
    person: str  # "1s", "2", "3s" or "3p"
    pronoun: str | None = None


class _Builder:
    """Fills the templates from the lexicon with one seeded random generator."""

    def __init__(self, rng: random.Random, lexicon: Lexicon) -> None:
        self.rng = rng
        self.lexicon = lexicon
        self.countable = tuple(noun for noun in lexicon.nouns if noun.plural)

    # helpers -----------------------------------------------------------------------------
    def pick(self, options: Sequence[str]) -> str:
        return options[self.rng.randrange(len(options))]

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def weighted(self, options: Sequence[tuple[float, Callable[[], str]]]) -> str:
        total = sum(weight for weight, _ in options)
        point = self.rng.random() * total
        for weight, make in options:
            point -= weight
            if point < 0:
                return make()
        return options[-1][1]()

    def adjectives(self) -> str:
        roll = self.rng.random()
        count = 0 if roll < 0.5 else 1 if roll < 0.88 else 2
        words = [self.pick(self.lexicon.adjectives) for _ in range(count)]
        if words and self.chance(0.12):
            words.insert(0, self.pick(_INTENSIFIERS))
        return " ".join(words)

    def small_number(self) -> str:
        roll = self.rng.random()
        if roll < 0.6:
            return number_words(self.rng.randint(2, 12))
        if roll < 0.9:
            return number_words(self.rng.randint(13, 99))
        return number_words(self.rng.randint(100, 999))

    # noun phrases --------------------------------------------------------------------------
    def noun_phrase(self, people: bool | None = None, plural: bool | None = None) -> tuple[str, bool]:
        """A determiner, maybe adjectives, and a noun; returns the phrase and whether it is plural."""
        if people is None:
            people = self.chance(0.3)
        noun = self.rng.choice(self.lexicon.people if people else self.lexicon.nouns)
        if plural is None:
            plural = self.chance(0.4)
        if noun.plural is None:
            plural = False
        adjectives = self.adjectives()
        head = noun.plural if plural else noun.singular
        body = f"{adjectives} {head}" if adjectives else head
        roll = self.rng.random()
        if noun.plural is None:  # mass noun
            if roll < 0.5:
                determiner = "the"
            elif roll < 0.65:
                determiner = "some"
            else:
                determiner = self.pick(_POSSESSIVES) if roll < 0.85 else ""
        elif plural:
            if roll < 0.3:
                determiner = "the"
            elif roll < 0.4:
                determiner = ""
            elif roll < 0.5:
                determiner = self.pick(("these", "those"))
            elif roll < 0.65:
                determiner = self.pick(_POSSESSIVES)
            elif roll < 0.8:
                determiner = self.pick(_QUANTIFIERS)
            elif roll < 0.95:
                determiner = self.small_number()
            else:
                determiner = self.pick(self.lexicon.names) + "'s"
        else:
            if roll < 0.35:
                determiner = "the"
            elif roll < 0.6:
                determiner = article_for(body)
            elif roll < 0.75:
                determiner = self.pick(_POSSESSIVES)
            elif roll < 0.85:
                determiner = self.pick(("this", "that", "every", "each", "another", "one", "no"))
            else:
                determiner = self.pick(self.lexicon.names) + "'s"
        return (f"{determiner} {body}" if determiner else body), plural

    def subject(self) -> _Subject:
        roll = self.rng.random()
        if roll < 0.22:
            pronoun = self.pick(tuple(_PRONOUNS))
            return _Subject(pronoun, _PRONOUNS[pronoun][2], pronoun)
        if roll < 0.4:
            return _Subject(self.pick(self.lexicon.names), "3s")
        if roll < 0.44:
            return _Subject(f"{self.pick(self.lexicon.names)} and {self.pick(self.lexicon.names)}", "3p")
        phrase, plural = self.noun_phrase(people=self.chance(0.55))
        return _Subject(phrase, "3p" if plural else "3s")

    def object(self) -> str:
        roll = self.rng.random()
        if roll < 0.12:
            return self.pick(tuple(value[0] for value in _PRONOUNS.values()))
        if roll < 0.22:
            return self.pick(self.lexicon.names)
        return self.noun_phrase()[0]

    # adverbials ----------------------------------------------------------------------------
    def place(self) -> str:
        if self.chance(0.2):
            return f"{self.pick(('in', 'near', 'to', 'from', 'across', 'around'))} {self.pick(self.lexicon.places)}"
        return f"{self.pick(_PREPOSITIONS)} {self.noun_phrase(people=False)[0]}"

    def clock_time(self) -> str:
        hour = self.rng.randint(1, 12)
        roll = self.rng.random()
        if roll < 0.25:
            return f"{number_words(hour)} o'clock"
        if roll < 0.4:
            return f"half past {number_words(hour)}"
        if roll < 0.55:
            return f"a quarter {self.pick(('past', 'to'))} {number_words(hour)}"
        minute = self.rng.randint(1, 59)
        minutes = f"oh {number_words(minute)}" if minute < 10 else number_words(minute)
        return f"{number_words(hour)} {minutes}"

    def time(self) -> str:
        return self.weighted([
            (3, lambda: self.pick(("yesterday", "today", "tomorrow", "tonight", "last night", "this morning",
                                   "this evening", "last week", "next week", "last year", "next month",
                                   "at noon", "at midnight", "at dawn", "at dusk", "recently", "later"))),
            (2, lambda: f"on {self.pick(_DAYS)}" + (f" {self.pick(_PARTS_OF_DAY)}" if self.chance(0.3) else "")),
            (1.5, lambda: f"in {self.pick(_MONTHS)}"),
            (1.5, lambda: f"at {self.clock_time()}"),
            (1, lambda: f"on the {ordinal_words(self.rng.randint(1, 31))} of {self.pick(_MONTHS)}"),
            (1, lambda: f"in {year_words(self.rng.randint(1900, 2030))}"),
            (1, lambda: f"{self.small_number()} {self.pick(('days', 'weeks', 'months', 'years', 'hours'))} ago"),
            (1, lambda: f"every {self.pick(('day', 'week', 'morning', 'evening', 'summer', 'winter', *_DAYS))}"),
        ])

    def extra(self) -> str:
        """An optional adverb, place or time at the end of a clause."""
        return self.weighted([
            (3, lambda: ""),
            (2, lambda: self.pick(self.lexicon.adverbs)),
            (2, self.place),
            (2, self.time),
        ])

    def money(self) -> str:
        single, many, cents = self.pick(_CURRENCIES)
        amount = self.rng.randint(1, 999) if self.chance(0.85) else self.rng.randint(1000, 99_999)
        text = f"{number_words(amount)} {single if amount == 1 else many}"
        if self.chance(0.3):
            text += f" and {number_words(self.rng.randint(1, 99))} {cents}"
        return text

    # verb agreement ------------------------------------------------------------------------
    @staticmethod
    def be_present(subject: _Subject) -> str:
        return {"1s": "am", "3s": "is"}.get(subject.person, "are")

    @staticmethod
    def be_past(subject: _Subject) -> str:
        return "was" if subject.person in ("1s", "3s") else "were"

    @staticmethod
    def present(subject: _Subject, verb: Verb) -> str:
        return verb.third if subject.person == "3s" else verb.base

    def verb(self, transitive: bool) -> Verb:
        return self.rng.choice(self.lexicon.transitive if transitive else self.lexicon.intransitive)

    def predicate(self, transitive: bool) -> str:
        """What follows the verb: an object (transitive) and maybe an adverbial."""
        tail = self.extra()
        head = self.object() if transitive else ""
        return " ".join(part for part in (head, tail) if part)

    # clause templates ----------------------------------------------------------------------
    def clause_past(self) -> str:
        transitive = self.chance(0.65)
        return f"{self.subject().words} {self.verb(transitive).past} {self.predicate(transitive)}"

    def clause_present(self) -> str:
        subject, transitive = self.subject(), self.chance(0.65)
        verb = self.verb(transitive)
        frequency = self.pick(("", "", "often", "always", "never", "sometimes", "usually", "rarely"))
        verb_words = f"{frequency} {self.present(subject, verb)}" if frequency else self.present(subject, verb)
        return f"{subject.words} {verb_words} {self.predicate(transitive)}"

    def clause_future(self) -> str:
        subject, transitive = self.subject(), self.chance(0.65)
        if subject.pronoun and self.chance(0.4):
            start = f"{subject.pronoun}'ll"
        else:
            start = subject.words + " " + self.pick(("will", "will", "won't", "shall"))
        return f"{start} {self.verb(transitive).base} {self.predicate(transitive)}"

    def clause_progressive(self) -> str:
        subject, transitive = self.subject(), self.chance(0.6)
        if self.chance(0.5):
            if subject.pronoun and self.chance(0.5):
                start = _BE_CONTRACTION[subject.pronoun]
            else:
                start = f"{subject.words} {self.be_present(subject)}"
        else:
            start = f"{subject.words} {self.be_past(subject)}"
        return f"{start} {self.verb(transitive).gerund} {self.predicate(transitive)}"

    def clause_perfect(self) -> str:
        subject, transitive = self.subject(), self.chance(0.7)
        have = "has" if subject.person == "3s" else "have"
        if self.chance(0.25):
            have = "had"
        adverb = self.pick(("", "", "already", "just", "never", "recently", "finally"))
        if subject.pronoun and have != "has" and self.chance(0.4):
            start = f"{subject.pronoun}'{'d' if have == 'had' else 've'}"
        else:
            start = f"{subject.words} {have}"
        if adverb:
            start += f" {adverb}"
        return f"{start} {self.verb(transitive).participle} {self.predicate(transitive)}"

    def clause_modal(self) -> str:
        subject, transitive = self.subject(), self.chance(0.65)
        modal = self.pick(("can", "could", "should", "might", "must", "would", "may", "can't", "couldn't",
                           "shouldn't", "wouldn't", "mustn't"))
        return f"{subject.words} {modal} {self.verb(transitive).base} {self.predicate(transitive)}"

    def clause_negative(self) -> str:
        subject, transitive = self.subject(), self.chance(0.65)
        auxiliary = self.pick(("didn't", "didn't", "present"))
        if auxiliary == "present":
            auxiliary = "doesn't" if subject.person == "3s" else "don't"
        return f"{subject.words} {auxiliary} {self.verb(transitive).base} {self.predicate(transitive)}"

    def clause_wants(self) -> str:
        subject = self.subject()
        verb = self.rng.choice(self.lexicon.transitive)
        if self.chance(0.3):
            likes = self.pick(("like", "love", "hate", "enjoy", "prefer", "avoid"))
            likes = third_person_of(likes) if subject.person == "3s" else likes
            return f"{subject.words} {likes} {verb.gerund} {self.object()}"
        wants = self.pick(("want", "need", "hope", "try", "plan", "decide", "forget", "refuse", "promise",
                           "agree", "learn", "offer"))
        tense = self.rng.random()
        wants = past_of(wants) if tense < 0.5 else third_person_of(wants) if subject.person == "3s" else wants
        wants = _IRREGULAR_PAST.get(wants, wants)
        return f"{subject.words} {wants} to {verb.base} {self.object()}"

    def clause_copula(self) -> str:
        roll = self.rng.random()
        if roll < 0.4:
            subject = self.subject()
            be = self.be_present(subject) if self.chance(0.5) else self.be_past(subject)
            adjective = self.pick(self.lexicon.adjectives)
            if self.chance(0.3):
                adjective = f"{self.pick(_INTENSIFIERS)} {adjective}"
            elif self.chance(0.2):
                adjective += f" and {self.pick(self.lexicon.adjectives)}"
            return f"{subject.words} {be} {adjective}"
        if roll < 0.6:
            person = self.rng.choice(self.lexicon.people)
            adjective = self.pick(self.lexicon.adjectives)
            be = self.pick(("is", "was"))
            return f"{self.pick(self.lexicon.names)} {be} {article_for(adjective)} {adjective} {person.singular}"
        if roll < 0.8:
            phrase, plural = self.noun_phrase(people=False)
            be = ("are" if plural else "is") if self.chance(0.5) else ("were" if plural else "was")
            return f"{phrase} {be} {self.place()}"
        first, plural = self.noun_phrase()
        be = "are" if plural else "is"
        return f"{first} {be} more {self.pick(self.lexicon.adjectives)} than {self.object()}"

    def clause_existential(self) -> str:
        phrase, plural = self.noun_phrase(people=self.chance(0.2))
        be = ("are" if plural else "is") if self.chance(0.6) else ("were" if plural else "was")
        return f"there {be} {phrase} {self.place()}"

    # sentence templates --------------------------------------------------------------------
    def clause(self) -> str:
        return self.weighted([
            (5, self.clause_past), (3, self.clause_present), (2, self.clause_future),
            (2, self.clause_progressive), (2, self.clause_perfect), (2, self.clause_modal),
            (2, self.clause_negative), (1.5, self.clause_wants), (2, self.clause_copula),
            (1, self.clause_existential),
        ])

    def question(self) -> str:
        subject, transitive = self.subject(), self.chance(0.7)
        verb = self.verb(transitive)
        roll = self.rng.random()
        if roll < 0.25:
            auxiliary = self.pick(("did", "can", "will", "should", "could", "would", "might",
                                   "does" if subject.person == "3s" else "do"))
            return f"{auxiliary} {subject.words} {verb.base} {self.predicate(transitive)}"
        if roll < 0.55:
            wh = self.pick(("where", "when", "why", "how", "how often"))
            auxiliary = self.pick(("did", "will", "can", "does" if subject.person == "3s" else "do"))
            return f"{wh} {auxiliary} {subject.words} {verb.base} {self.object() if transitive else ''}"
        if roll < 0.7:
            verb = self.verb(True)
            return f"what {self.pick(('did', 'will', 'can', 'should'))} {subject.words} {verb.base}"
        if roll < 0.85:
            verb = self.verb(True)
            return f"who {self.pick((verb.past, verb.past, 'will ' + verb.base))} {self.object()}"
        noun = self.rng.choice(self.countable)
        return f"how many {noun.plural} did {subject.words} {self.verb(True).base}"

    def imperative(self) -> str:
        verb = self.verb(True)
        start = self.pick(("please", "", "", "don't", "let's", "never", "always", "now"))
        return f"{start} {verb.base} {self.predicate(True)}" if start else f"{verb.base} {self.predicate(True)}"

    def embedded(self) -> str:
        subject = self.subject()
        verb = self.pick(("think", "know", "hope", "believe", "say", "feel", "guess", "remember"))
        if subject.person == "3s":
            verb = third_person_of(verb) if self.chance(0.5) else past_of(verb)
        elif self.chance(0.5):
            verb = past_of(verb)
        verb = _IRREGULAR_PAST.get(verb, verb)
        that = "that " if self.chance(0.4) else ""
        return f"{subject.words} {verb} {that}{self.clause()}"

    def compound(self) -> str:
        joiner = self.pick(("and", "but", "so", "because", "while", "when", "before", "after", "although",
                            "until", "if"))
        return f"{self.clause()} {joiner} {self.clause()}"

    def numeric(self) -> str:
        return self.weighted([
            (1, lambda: f"{self.noun_phrase(people=False, plural=False)[0]} costs {self.money()}"),
            (1, lambda: f"{self.subject().words} paid {self.money()} for {self.object()}"),
            (1, lambda: f"the {self.pick(('train', 'bus', 'ferry', 'plane', 'meeting', 'concert', 'film', 'lesson'))} "
                        f"{self.pick(('leaves', 'starts', 'arrives', 'ends', 'left', 'started'))} "
                        f"at {self.clock_time()}"),
            (1, lambda: f"{self.pick(self.lexicon.names)} was born in {year_words(self.rng.randint(1900, 2024))}"),
            (1, lambda: f"{self.pick(self.lexicon.names)} was born on the {ordinal_words(self.rng.randint(1, 31))} "
                        f"of {self.pick(_MONTHS)}"),
            (1, lambda: f"my {self.pick(('phone number', 'pin', 'code', 'ticket number'))} is "
                        + " ".join(self.pick(_DIGITS + ('oh',)) for _ in range(self.rng.randint(3, 7)))),
            (1, lambda: f"it is {number_words(self.rng.randint(0, 45))} degrees "
                        + self.pick(("outside", "in " + self.pick(self.lexicon.places)))),
            (1, lambda: f"we need {number_words(self.rng.randint(2, 5000))} {self.rng.choice(self.countable).plural}"),
            (1, lambda: f"{self.subject().words} lives at number {number_words(self.rng.randint(1, 300))} "
                        f"{self.pick(self.lexicon.adjectives)} {self.pick(('street', 'road', 'lane', 'avenue'))}"),
            (1, lambda: f"the {ordinal_words(self.rng.randint(1, 99))} {self.rng.choice(self.lexicon.people).singular} "
                        f"{self.verb(False).past}"),
        ])

    def sentence(self) -> str:
        text = self.weighted([
            (10, self.clause), (2, self.question), (1.5, self.imperative), (1, self.embedded),
            (1.5, self.compound), (1.5, self.numeric),
        ])
        return " ".join(text.split())


def generate_sentences(count: int, seed: int, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """``count`` distinct sentences of ``min_words`` to ``max_words`` words, the same for the same seed.

    A larger ``count`` with the same seed extends the list: its first sentences are those of the
    smaller one.
    """
    if count < 0:
        raise ValueError(f"count must be at least 0, not {count}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, not {min_words} and {max_words}")
    builder = _Builder(random.Random(seed), load_lexicon())
    sentences: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(sentences) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise RuntimeError(f"could only make {len(sentences)} distinct sentences of {min_words}-{max_words} words")
        text = builder.sentence()
        if text in seen or not min_words <= text.count(" ") + 1 <= max_words:
            continue
        seen.add(text)
        sentences.append(text)
    return sentences
