"""The sentence generator's documented example and the English helpers it moved into asr.data.english."""

from __future__ import annotations

import doctest

from asr.data import english, sentences


def test_module_example_still_holds() -> None:
    # The docstring pins the generator's output for seed 1: a change to the templates shows here.
    result = doctest.testmod(sentences)
    assert result.attempted == 1 and result.failed == 0


def test_article_follows_the_sound() -> None:
    assert [english.article_for(word) for word in ("apple", "hour", "unit", "university", "dog", "old man")] == [
        "an", "an", "a", "a", "a", "an"]
