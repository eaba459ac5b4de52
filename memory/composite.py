"""Composite documents: base lore and session note in one text, one vector."""

from __future__ import annotations

import hashlib


def composite_document(lore_content: str, note: str | None) -> str:
    """``"[Base Lore]\\n{content}\\n\\n[Session-Specific Notes]\\n{note}"``; without a note,
    only the base lore section."""
    doc = f"[Base Lore]\n{lore_content}"
    if note and note.strip():
        doc += f"\n\n[Session-Specific Notes]\n{note.strip()}"
    return doc


def base_lore(title: str, content: str) -> str:
    """The base-lore text of an entry: its title on the first line, then its content, so that a
    search for an entity's name finds its document even when the content never names it."""
    return f"{title}\n{content}"


def content_hash(document: str, embedder: str) -> str:
    """SHA-256 hex of the document and the embedder name: the embedding's idempotency key."""
    return hashlib.sha256(f"{embedder}\n{document}".encode()).hexdigest()
