"""Cleaners of model output: ``memory.notes.clean_note`` (labels stripped, bounded at a
sentence end), ``memory.entities.clean_title`` and ``slug``."""

from __future__ import annotations

import re

import pytest

from memory.entities import clean_title, slug
from memory.notes import MAX_NOTE_CHARS, clean_note

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("raw, expected", [
    ("New Session Note: The baker is tired.", "The baker is tired."),
    ("  The baker is tired.  ", "The baker is tired."),
    ("[Entity]: Baker\nThe baker smiled.", "The baker smiled."),
    ("[Original Lore (Static)]: A baker.\nHe sold the oven.", "He sold the oven."),
    ("Session Note:\nHe sold the oven.\nHe is poor now.", "He sold the oven.\nHe is poor now."),
    ("[Session Note]: He left town.", "He left town."),
    ("", ""),
])
def test_clean_note(raw, expected):
    assert clean_note(raw) == expected


def test_clean_note_bounds_length_at_a_sentence_end():
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    out = clean_note(text)
    assert 0 < len(out) <= MAX_NOTE_CHARS
    assert out.endswith(".")
    assert text.startswith(out)
    no_stop = "x" * (MAX_NOTE_CHARS + 300)
    assert clean_note(no_stop) == "x" * MAX_NOTE_CHARS


@pytest.mark.parametrize("raw, expected", [
    ("Old Marta (location)", "Old Marta"),
    ("Silver Sword (Item) ", "Silver Sword"),
    ("  Brother Tam (character)", "Brother Tam"),
    ("Marta (the elder)", "Marta"),
    ("Gina (char)", "Gina"),
    ("Gina (d2", "Gina"),
    ("Gina (DG)", "Gina"),
    ("Plain Name", "Plain Name"),
    ("(item)", ""),  # nothing left after the label: no title
])
def test_clean_title(raw, expected):
    assert clean_title(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Old Marta's Boat", "old-marta-s-boat"),
    ("  The Crypt!  ", "the-crypt"),
    ("!!!", "entity"),
    ("", "entity"),
    ("Café Noël", "caf-no-l"),
])
def test_slug(raw, expected):
    assert slug(raw) == expected


def test_slug_is_bounded():
    out = slug("word " * 40)
    assert len(out) <= 60 and re.fullmatch(r"[a-z0-9-]+", out)
