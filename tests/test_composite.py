"""Composite documents (``memory.composite``): base lore plus the session note in the exact
embedded format, and the content hash that decides whether a document is embedded again."""

from __future__ import annotations

import re

import pytest

from memory.composite import composite_document, content_hash

pytestmark = pytest.mark.pure


def test_composite_document_exact_format():
    assert composite_document("A baker.", "He lost his pin.") == (
        "[Base Lore]\nA baker.\n\n[Session-Specific Notes]\nHe lost his pin."
    )


@pytest.mark.parametrize("note", [None, "", "   \n\t "])
def test_composite_document_without_note(note):
    doc = composite_document("A baker.", note)
    assert doc == "[Base Lore]\nA baker."
    assert "[Session-Specific Notes]" not in doc


def test_content_hash_depends_on_document_and_embedder():
    doc = composite_document("A baker.", "note")
    h = content_hash(doc, "all-MiniLM-L6-v2")
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert h == content_hash(doc, "all-MiniLM-L6-v2")
    assert h != content_hash(doc, "mistral-embed")
    assert h != content_hash(composite_document("A baker.", "other"), "all-MiniLM-L6-v2")
