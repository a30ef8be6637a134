import pytest

from nemo_ptq.data.text import normalize_text


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
        ("Caf\u00e9 \u00c9COLE", "caf\u00e9 \u00e9cole"),
        ("snake_case", "snake case"),
        ("", ""),
        ("?!", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_text_is_idempotent():
    text = "It\u2019s NINE o'clock \u2014 \"late\", isn't it?"
    assert normalize_text(normalize_text(text)) == normalize_text(text)
