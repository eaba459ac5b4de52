"""What a turn changed (``npc_memory.analyze_turn``): the analysis scope of a turn and the
fan-out of the analysis model's answer into note updates, entity creations and memory-card
events.

A narration or game event is analysed as what happened, not as something its speaker said:
the speaker is neither in the scope nor in the text creations are grounded on. Without an
addressed NPC the scope centres on the first witness (none: the entries the text names and
the session's newest creations) and no card changes.

``turn`` is a turn payload (``TurnPayload``'s fields: ``turn_id``, ``session_id``,
``world_id``, ``seq``, ``npc_entry_id``, ``witnesses``, ``kind``, ``speaker``,
``player_text``, ``npc_text``, ``game_minutes``). Follow-up tasks go through ``enqueue``,
``(task name, payload fields) -> task id`` (validated, recorded in the task ledger, sent).
"""

from __future__ import annotations

from contract.names import TaskName
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from memory import cards
from memory.scope import turn_scope
from models import LoreEntry

Enqueue = Callable[[str, dict], object]
"""``(task name, payload fields) -> task id``: validate, record as queued, send."""

Analyze = Callable[..., tuple[object, int]]
"""``(npc_title, scope, speaker, hints) -> (analysis, tokens)``: the routed analysis model
call (``inference.calls.analyze_turn``); the analysis has ``updates``, ``creations``,
``relationship`` and ``quests``."""


def turn_text(player_text: str, npc_text: str, speaker: str | None, narrative: bool) -> str:
    """The turn as one text: ``"{speaker}: {player_text}"`` (the speaker only when the turn
    was posted as an event), then the NPC's answer on its own line. The analysis scope
    looks for entries named in it, and creations carry it as their ``source_text``. A
    ``narrative`` turn's speaker (a game master) is left out: it is nobody in the story,
    so its name cannot ground a created entity or enter the scope."""
    said = f"{speaker}: {player_text}" if speaker and not narrative else player_text
    return f"{said}\n{npc_text}".strip()


@dataclass(frozen=True)
class TurnScope:
    """What the analysis of a turn looks at: ``scope`` (the entries it may change, as
    ``memory.scope.turn_scope`` returns them), ``npc_title`` (the addressed NPC's title,
    None without one), ``source`` (:func:`turn_text`) and ``speaker`` (None for a narrative
    turn)."""

    scope: list
    npc_title: str | None
    source: str
    speaker: str | None


def scope_of(s: Session, turn, narrative: bool) -> TurnScope:
    """The analysis scope of ``turn`` (one database read).

    Raises:
        LookupError: the addressed NPC (``npc_entry_id``) does not exist.
    """
    speaker = None if narrative else turn.speaker
    anchor_id = turn.npc_entry_id if turn.npc_entry_id is not None else \
        next(iter(turn.witnesses or []), None)
    npc = s.get(LoreEntry, anchor_id) if anchor_id is not None else None
    if npc is None and turn.npc_entry_id is not None:
        raise LookupError(f"lore entry {turn.npc_entry_id} does not exist")
    source = turn_text(turn.player_text, turn.npc_text, turn.speaker, narrative)
    scope = turn_scope(s, npc, turn.session_id, speaker=speaker, text=source,
                       world_id=turn.world_id)
    npc_title = npc.title if turn.npc_entry_id is not None else None
    return TurnScope(scope, npc_title, source, speaker)


def card_hints(r, session_id: str, npc_entry_id: int | None) -> str:
    """The NPC's cards as hints for the analysis model (``memory.cards.analysis_hints``);
    '' without an addressed NPC or when its stored card is corrupt (applying the events
    reports that)."""
    if npc_entry_id is None:
        return ""
    try:
        return cards.analysis_hints(cards.get_cards(r, session_id, npc_entry_id))
    except cards.CardCorrupt:
        return ""


def fan_out(r, turn, ts: TurnScope, *, analyze: Analyze, enqueue: Enqueue,
            source_max: int) -> dict:
    """Ask ``analyze`` what the turn changed and apply it: one ``npc_memory.update_note``
    per distinct update (idempotency key ``{turn_id}:u{i}``), one
    ``npc_memory.create_entity`` per creation (``{turn_id}:c{i}``, with the turn's text, at
    most ``source_max`` characters, as ``source_text``); the relationship and quest events
    applied to the addressed NPC's cards in Redis atomically, once per event id
    (``memory.cards.apply_events``), and one ``npc_memory.archive_cards`` with the snapshots
    and every event applied from this turn (also on a redelivery, whose events the first
    delivery applied). An empty scope calls no model.

    Returns ``{"updates", "creations", "card_events", "card_duplicates", "tokens"}`` (counts;
    ``skipped: "empty_scope"`` when the model was not called).

    Raises:
        memory.cards.CardCorrupt: a stored card is corrupt (after the fan-out; nothing
            overwritten). memory.cards.CardConflict: the card transaction kept losing races.
    """
    if not ts.scope:  # nobody addressed or present and nothing named: nothing it could change
        return {"updates": 0, "creations": 0, "card_events": 0, "card_duplicates": 0,
                "tokens": 0, "skipped": "empty_scope"}
    hints = card_hints(r, turn.session_id, turn.npc_entry_id)
    out, tokens = analyze(ts.npc_title, ts.scope, ts.speaker, hints)
    seen = set()
    updates = 0
    for i, u in enumerate(out.updates):
        if (u.lore_entry_id, u.update_summary) in seen:
            continue
        seen.add((u.lore_entry_id, u.update_summary))
        enqueue(TaskName.UPDATE_NOTE, dict(
            session_id=turn.session_id, lore_entry_key=u.lore_entry_id,
            update_summary=u.update_summary, idempotency_key=f"{turn.turn_id}:u{i}",
            turn_id=turn.turn_id, cause="turn", game_minutes=turn.game_minutes))
        updates += 1
    for i, c in enumerate(out.creations):
        enqueue(TaskName.CREATE_ENTITY, dict(
            session_id=turn.session_id, entity_type=c.entity_type,
            creation_summary=c.creation_summary, idempotency_key=f"{turn.turn_id}:c{i}",
            turn_id=turn.turn_id, source_text=ts.source[:source_max]))
    if turn.npc_entry_id is None:  # nobody addressed: no cards to change
        return {"updates": updates, "creations": len(out.creations), "card_events": 0,
                "card_duplicates": 0, "tokens": tokens}
    rel, quests = cards.turn_events(turn.turn_id, turn.seq, out.relationship, out.quests)
    res = cards.apply_events(r, turn.session_id, turn.npc_entry_id, rel, quests)
    # this turn's events as applied by any delivery (a redelivery may sample other events)
    events = cards.turn_applied(r, turn.session_id, turn.npc_entry_id, turn.turn_id)
    if events:
        enqueue(TaskName.ARCHIVE_CARDS, dict(
            session_id=turn.session_id, npc_entry_id=turn.npc_entry_id, turn_id=turn.turn_id,
            cards=dict(relationship=res.cards.relationship, quest=res.cards.quest),
            events=events))
    return {"updates": updates, "creations": len(out.creations), "card_events": len(res.applied),
            "card_duplicates": len(res.duplicates), "tokens": tokens}


__all__ = ["Analyze", "Enqueue", "TurnScope", "card_hints", "fan_out", "scope_of",
           "turn_text"]
