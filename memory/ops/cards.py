"""An NPC's memory cards in one session, live from the nearline tier."""

from __future__ import annotations

from memory import cards as memory_cards
from memory import nearline
from memory.ops.errors import NotFound

def session_cards(r, session_id: str, npc_key: str, *, events: int = 20,
                  budget_chars: int = 600) -> dict:
    """An NPC's memory cards in one session, live from the nearline tier (Redis only: the
    relationship and quest cards).

    Returns:
        ``{"session_id", "npc_id" (entry key), "npc_entry_id", "npc_name",
        "relationship": card dict, "quest": card dict, "bytes": {"relationship": int,
        "quest": int} (stored sizes, each <= memory.cards.MAX_CARD_BYTES),
        "prompt": the text the dialogue prompt gets within ``budget_chars``,
        "events": the newest ``events`` applied events, oldest first}``.

    Raises:
        NotFound: unknown session, or no such entry in the session's world or creations.
        memory.cards.CardCorrupt: a stored card is invalid.
    """
    sess = nearline.get_session(r, session_id)
    if sess is None:
        raise NotFound(f"unknown session {session_id!r}")
    entry_id = nearline.resolve_key(r, sess["world_id"], session_id, npc_key)
    entry = nearline.get_entry(r, sess["world_id"], entry_id) if entry_id is not None else None
    if entry is None:
        raise NotFound(f"unknown NPC {npc_key!r} in session {session_id!r}")
    cards = memory_cards.get_cards(r, session_id, entry_id)
    applied = memory_cards.applied_events(r, session_id, entry_id)
    return {
        "session_id": session_id, "npc_id": npc_key, "npc_entry_id": entry_id,
        "npc_name": entry["title"],
        "relationship": cards.relationship.model_dump(exclude_none=True),
        "quest": cards.quest.model_dump(exclude_none=True),
        "bytes": {"relationship": memory_cards.card_bytes(cards.relationship),
                  "quest": memory_cards.card_bytes(cards.quest)},
        "prompt": memory_cards.render_cards(cards, budget_chars),
        "events": applied[-events:] if events > 0 else [],
    }
