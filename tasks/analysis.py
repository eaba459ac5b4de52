"""Queue ``analysis``: ``npc_memory.analyze_turn`` fans a turn out into note updates and
entity creations (seed 003's analysis step)."""

from __future__ import annotations

from inference import calls
from memory.db import session_scope
from memory.scope import turn_scope
from models import LoreEntry
from tasks.base import TaskContext, enqueue, npc_task
from tasks.note_update import enqueue_note_update
from tasks.payloads import CreationPayload, NoteUpdatePayload, TurnPayload


@npc_task("npc_memory.analyze_turn", TurnPayload, soft_time_limit=120, time_limit=150)
def analyze_turn(p: TurnPayload, ctx: TaskContext) -> dict:
    """Ask the analysis model what the turn changed; enqueue one ``update_note`` per update
    (idempotency key ``{turn_id}:u{i}``) and one ``create_entity`` per creation
    (``{turn_id}:c{i}``). Returns counts and tokens."""
    with session_scope() as s:
        npc = s.get(LoreEntry, p.npc_entry_id)
        if npc is None:
            raise LookupError(f"lore entry {p.npc_entry_id} does not exist")
        scope = turn_scope(s, npc, p.session_id, speaker=p.speaker)
        npc_title = npc.title
    out, tokens = calls.analyze_turn(npc_title, p.player_text, p.npc_text, scope,
                                     speaker=p.speaker)
    seen = set()
    updates = 0
    for i, u in enumerate(out.updates):
        if (u.lore_entry_id, u.update_summary) in seen:
            continue
        seen.add((u.lore_entry_id, u.update_summary))
        enqueue_note_update(NoteUpdatePayload(
            session_id=p.session_id, lore_entry_key=u.lore_entry_id, update_summary=u.update_summary,
            idempotency_key=f"{p.turn_id}:u{i}", turn_id=p.turn_id, cause="turn",
            game_minutes=p.game_minutes))
        updates += 1
    for i, c in enumerate(out.creations):
        enqueue("npc_memory.create_entity", CreationPayload(
            session_id=p.session_id, entity_type=c.entity_type, creation_summary=c.creation_summary,
            idempotency_key=f"{p.turn_id}:c{i}", turn_id=p.turn_id))
    return {"updates": updates, "creations": len(out.creations), "tokens": tokens}
