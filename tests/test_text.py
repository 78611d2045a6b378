"""Alphabet format, transcript normalisation and label batches."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from asr.errors import UserError
from asr.text import Alphabet, get_batch_labels, normalize_transcript

ALPHABET_FILE = """# An alphabet: comments start with '#'
 
a
b
\\#
# another comment
c
'
"""


def test_default_alphabet_has_space_letters_and_apostrophe():
    alphabet = Alphabet.default()
    assert alphabet.symbols[0] == " " and alphabet.symbols[-1] == "'" and len(alphabet) == 28
    assert alphabet.encode("ab ") == [2, 3, 1]  # symbol i is label i + 1; blank is 0


def test_mozilla_format_reads_space_comments_and_escaped_hash(tmp_path):
    path = tmp_path / "alphabet.txt"
    path.write_text(ALPHABET_FILE)
    alphabet = Alphabet.from_file(path)
    assert alphabet.symbols == [" ", "a", "b", "#", "c", "'"]


def test_round_trip_through_a_file(tmp_path):
    alphabet = Alphabet([" ", "#", "x", "\\", "'"])
    alphabet.to_file(tmp_path / "a.txt")
    assert Alphabet.from_file(tmp_path / "a.txt") == alphabet


def test_bad_alphabets_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="duplicate"):
        Alphabet(["a", "a"])
    with pytest.raises(UserError, match="not found"):
        Alphabet.from_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="no symbols"):
        Alphabet.from_file(tmp_path / "empty.txt")


def test_normalisation_lowercases_strips_accents_and_collapses_spaces():
    assert normalize_transcript("  Café\tDÉJÀ  vu\n") == "cafe deja vu"
    assert normalize_transcript("It\u2019s") == "it's"


@pytest.mark.parametrize(("raw", "normal"), [
    ("\u2018Tis \u02bctwas `ok\u00b4", "'tis 'twas 'ok'"),  # rule 1: apostrophes
    ("\ufb01ne x\u00b2 \uff21\uff22", "fine x2 ab"),  # rule 2: compatibility forms
    ("Gar\u00e7on nai\u0308ve", "garcon naive"),  # rule 3: marks dropped, precomposed or not
    ("\u0130STANBUL", "istanbul"),  # rule 4 after 3: no stray combining dot
    ("\u00a0 a \u2003 b\t\n", "a b"),  # rule 5: any whitespace
    ("Punct., 42 & $!", "punct., 42 & $!"),  # punctuation, digits, symbols: the caller's business
])
def test_normalisation_follows_its_written_rules(raw: str, normal: str) -> None:
    assert normalize_transcript(raw) == normal
    assert normalize_transcript(normal) == normal  # idempotent


def test_batch_labels_are_padded_with_lengths():
    labels, lengths = get_batch_labels(["ab", "Abc d", ""], Alphabet.default())
    assert labels.dtype == np.int32 and lengths.dtype == np.int32
    assert labels.shape == (3, 5)
    assert lengths.tolist() == [2, 5, 0]
    assert labels[0].tolist() == [2, 3, 0, 0, 0]


def test_symbols_outside_the_alphabet_are_listed_with_the_utterance():
    with pytest.raises(UserError) as error:
        get_batch_labels(["hello, world 42!"], Alphabet.default())
    message = str(error.value)
    for symbol in (",", "4", "2", "!"):
        assert repr(symbol) in message
    assert "hello, world 42!" in message


@given(st.text(alphabet=list(" abcdefghijklmnopqrstuvwxyz'"), max_size=50))
def test_encode_decode_round_trip(text):
    alphabet = Alphabet.default()
    labels = alphabet.encode(text)
    assert all(1 <= label <= len(alphabet) for label in labels)
    assert alphabet.decode(labels) == text
