"""Queue ``analysis``: ``npc_memory.analyze_turn`` fans a turn out into note updates and
entity creations (the analysis step between a turn and the note/creation queues) and applies
its relationship and quest events to the NPC's memory cards."""

from __future__ import annotations

from contract.names import TaskName
from contract.payloads import (
    SOURCE_TEXT_MAX,
    CardArchivePayload,
    CardSnapshots,
    CreationPayload,
    NARRATIVE_KINDS,
    NoteUpdatePayload,
    TurnPayload,
)
from inference import calls
from inference.lora import routing
from memory import cards, nearline
from memory.db import session_scope
from memory.scope import turn_scope
from models import LoreEntry
from tasks.base import TaskContext, enqueue, npc_task
from tasks.note_update import enqueue_note_update


def turn_text(p: TurnPayload) -> str:
    """The turn as one text: ``"{speaker}: {player_text}"`` (the speaker only when the turn
    was posted as an event), then the NPC's answer on its own line. The analysis scope
    looks for entries named in it, and creations carry it as their ``source_text``. A
    narration or game event's speaker (a game master) is left out: it is nobody in the
    story, so its name cannot ground a created entity or enter the scope."""
    narrative = p.kind in NARRATIVE_KINDS
    said = f"{p.speaker}: {p.player_text}" if p.speaker and not narrative else p.player_text
    return f"{said}\n{p.npc_text}".strip()


@npc_task(TaskName.ANALYZE_TURN, soft_time_limit=120, time_limit=150)
def analyze_turn(p: TurnPayload, ctx: TaskContext) -> dict:
    """Ask the analysis model what the turn changed; enqueue one ``update_note`` per update
    (idempotency key ``{turn_id}:u{i}``) and one ``create_entity`` per creation
    (``{turn_id}:c{i}``, carrying the turn's text as ``source_text`` for grounding); apply
    the relationship and quest events to the NPC's cards in Redis atomically, once per event
    id (``{turn_id}:r{i}``, ``{turn_id}:q{i}``), and enqueue
    ``archive_cards`` with the snapshots and every event applied from this turn (also on a
    redelivery, whose events were applied by the first delivery). Returns counts and tokens.

    A corrupt stored card raises ``memory.cards.CardCorrupt`` after the fan-out (dead-lettered,
    nothing overwritten); ``CardConflict`` is retried.

    A narration or game event (``kind``) is analysed as what happened, not as something its
    speaker said: the speaker is neither in the scope nor in the text creations are grounded
    on. Without an addressed NPC the scope centres on the first witness (none: the entries
    the text names and the session's newest creations) and no card changes; when that scope
    is empty the model is not called (``skipped: "empty_scope"``)."""
    narrative = p.kind in NARRATIVE_KINDS
    speaker = None if narrative else p.speaker
    with session_scope() as s:
        anchor_id = p.npc_entry_id if p.npc_entry_id is not None else \
            next(iter(p.witnesses or []), None)
        npc = s.get(LoreEntry, anchor_id) if anchor_id is not None else None
        if npc is None and p.npc_entry_id is not None:
            raise LookupError(f"lore entry {p.npc_entry_id} does not exist")
        source = turn_text(p)
        scope = turn_scope(s, npc, p.session_id, speaker=speaker, text=source,
                           world_id=p.world_id)
        npc_title = npc.title if p.npc_entry_id is not None else None
    if not scope:  # nobody addressed or present and nothing named: nothing it could change
        return {"updates": 0, "creations": 0, "card_events": 0, "card_duplicates": 0,
                "tokens": 0, "skipped": "empty_scope"}
    r = nearline.get_redis()
    hints = ""
    if p.npc_entry_id is not None:
        try:
            hints = cards.analysis_hints(cards.get_cards(r, p.session_id, p.npc_entry_id))
        except cards.CardCorrupt:
            hints = ""  # applying the events below reports it
    npc_ref = {"id": p.npc_entry_id, "world_id": p.world_id} \
        if p.npc_entry_id is not None else None  # archetype from Redis
    (out, tokens), _route = routing.call_routed(
        r, routing.resolve(r, "analysis", npc=npc_ref),
        lambda rt: calls.analyze_turn(npc_title, p.player_text, p.npc_text, scope,
                                      speaker=speaker, hints=hints, route=rt, kind=p.kind),
        lambda: routing.resolve(r, "analysis", npc=npc_ref))
    seen = set()
    updates = 0
    for i, u in enumerate(out.updates):
        if (u.lore_entry_id, u.update_summary) in seen:
            continue
        seen.add((u.lore_entry_id, u.update_summary))
        enqueue_note_update(ctx.send, NoteUpdatePayload(
            session_id=p.session_id, lore_entry_key=u.lore_entry_id, update_summary=u.update_summary,
            idempotency_key=f"{p.turn_id}:u{i}", turn_id=p.turn_id, cause="turn",
            game_minutes=p.game_minutes))
        updates += 1
    for i, c in enumerate(out.creations):
        enqueue(ctx.send, TaskName.CREATE_ENTITY, CreationPayload(
            session_id=p.session_id, entity_type=c.entity_type, creation_summary=c.creation_summary,
            idempotency_key=f"{p.turn_id}:c{i}", turn_id=p.turn_id,
            source_text=source[:SOURCE_TEXT_MAX]))
    if p.npc_entry_id is None:  # nobody addressed: no cards to change
        return {"updates": updates, "creations": len(out.creations), "card_events": 0,
                "card_duplicates": 0, "tokens": tokens}
    rel, quests = cards.turn_events(p.turn_id, p.seq, out.relationship, out.quests)
    res = cards.apply_events(r, p.session_id, p.npc_entry_id, rel, quests)
    # this turn's events as applied by any delivery (a redelivery may sample other events)
    events = cards.turn_applied(r, p.session_id, p.npc_entry_id, p.turn_id)
    if events:
        enqueue(ctx.send, TaskName.ARCHIVE_CARDS, CardArchivePayload(
            session_id=p.session_id, npc_entry_id=p.npc_entry_id, turn_id=p.turn_id,
            cards=CardSnapshots(relationship=res.cards.relationship, quest=res.cards.quest),
            events=events))
    return {"updates": updates, "creations": len(out.creations), "card_events": len(res.applied),
            "card_duplicates": len(res.duplicates), "tokens": tokens}
