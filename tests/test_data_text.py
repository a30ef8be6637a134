import pytest

from nemo_ptq.data.text import foreign_characters, model_characters, normalize_text, vocabulary_warning
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY

ENGLISH = model_characters(QUARTZNET_VOCABULARY, "char")
# A sentencepiece vocabulary that has "é" and digits (as a multilingual BPE model might).
BPE = model_characters(["<unk>", "\u2581caf", "é", "\u2581the", "s", "1", "2", "'", "\u2581"], "bpe")


def test_model_characters_of_char_and_bpe_vocabularies():
    assert ENGLISH == frozenset("abcdefghijklmnopqrstuvwxyz'")
    assert BPE == frozenset("cafthes12é'")  # no "<unk>", no "▁"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  many\tspaces \n here  ", "many spaces here"),
        ("Don't stop", "don't stop"),
        ("Don\u2019t stop", "don't stop"),  # curly apostrophe
        ("\u2018quoted\u2019 words", "quoted words"),  # quotes are not apostrophes
        ("'Tis the boys' bikes", "tis the boys bikes"),
        ("cold-hearted; well... yes?", "cold hearted well yes"),
        ('She said "no" (twice)', "she said no twice"),
        ("eight o'clock", "eight o'clock"),
        ("Caf\u00e9 \u00c9COLE na\u00efve", "cafe ecole naive"),  # the letters the model writes for them
        ("room 101 at 9am", "room at am"),  # a char model cannot write digits
        ("caf\u00e9 na\u00efve \u4f60\u597d", "cafe naive"),
        ("snake_case", "snake case"),
        ("", ""),
        ("?!", ""),
    ],
)
def test_normalize_text_for_an_english_char_model(raw, expected):
    assert normalize_text(raw, ENGLISH) == expected


def test_normalize_text_keeps_what_the_vocabulary_has():
    assert normalize_text("Café 12 thé!", BPE) == "café 12 thé"
    assert normalize_text("Café 12 thé!", ENGLISH) == "cafe the"


def test_normalize_text_is_idempotent():
    text = "It\u2019s NINE o'clock \u2014 \"late\", isn't it? Caf\u00e9 42"
    once = normalize_text(text, ENGLISH)
    assert normalize_text(once, ENGLISH) == once


def test_foreign_characters_ignore_punctuation_and_case():
    assert foreign_characters("Café, naïve — 你好!", ENGLISH) == {"é", "ï", "你", "好"}
    assert foreign_characters("Don\u2019t STOP, well-known.", ENGLISH) == set()


def test_vocabulary_warning_counts_utterances_and_characters():
    line = vocabulary_warning(["caf\u00e9 na\u00efve \u4f60\u597d", "plain text", "room 101"], ENGLISH)
    assert line.startswith("warning: 2 utterances with 6 characters not in the model's vocabulary: ")
    assert all(char in line for char in ("é", "ï", "你", "好", "0", "1"))
    assert "\n" not in line


def test_vocabulary_warning_is_silent_for_clean_references():
    assert vocabulary_warning(["Don\u2019t stop, well-known Mr. Smith!"], ENGLISH) is None
    assert vocabulary_warning(["café 12"], BPE) is None


def test_vocabulary_warning_shortens_a_long_list():
    line = vocabulary_warning(["".join(chr(0x4E00 + i) for i in range(30))], ENGLISH, shown=5)
    assert "30 characters" in line and line.count(" ...") == 1
