"""Queue ``analysis``: ``npc_memory.analyze_turn`` fans a turn out into note updates and
entity creations (the analysis step between a turn and the note/creation queues) and applies
its relationship and quest events to the NPC's memory cards."""

from __future__ import annotations

from contract.names import TaskName
from contract.payloads import NARRATIVE_KINDS, SOURCE_TEXT_MAX, TurnPayload
from inference import calls
from inference.lora import routing
from memory import analysis, nearline
from memory.db import session_scope
from tasks.base import TaskContext, npc_task
from tasks.follow_up import follow_up


def turn_text(p: TurnPayload) -> str:
    """The turn as one text (``memory.analysis.turn_text``; a narration or game event's
    speaker left out)."""
    return analysis.turn_text(p.player_text, p.npc_text, p.speaker, p.kind in NARRATIVE_KINDS)


@npc_task(TaskName.ANALYZE_TURN, soft_time_limit=120, time_limit=150)
def analyze_turn(p: TurnPayload, ctx: TaskContext) -> dict:
    """Ask the analysis model what the turn changed; enqueue one ``update_note`` per update
    (idempotency key ``{turn_id}:u{i}``) and one ``create_entity`` per creation
    (``{turn_id}:c{i}``, carrying the turn's text as ``source_text`` for grounding); apply
    the relationship and quest events to the NPC's cards in Redis atomically, once per event
    id (``{turn_id}:r{i}``, ``{turn_id}:q{i}``), and enqueue
    ``archive_cards`` with the snapshots and every event applied from this turn (also on a
    redelivery, whose events were applied by the first delivery). Returns counts and tokens
    (``memory.analysis.fan_out``).

    A corrupt stored card raises ``memory.cards.CardCorrupt`` after the fan-out (dead-lettered,
    nothing overwritten); ``CardConflict`` is retried.

    A narration or game event (``kind``) is analysed as what happened, not as something its
    speaker said: the speaker is neither in the scope nor in the text creations are grounded
    on. Without an addressed NPC the scope centres on the first witness (none: the entries
    the text names and the session's newest creations) and no card changes; when that scope
    is empty the model is not called (``skipped: "empty_scope"``)."""
    with session_scope() as s:
        ts = analysis.scope_of(s, p, p.kind in NARRATIVE_KINDS)
    r = nearline.get_redis()
    npc_ref = {"id": p.npc_entry_id, "world_id": p.world_id} \
        if p.npc_entry_id is not None else None  # archetype from Redis

    def analyze(npc_title, scope, speaker, hints):
        (out, tokens), _route = routing.call_routed(
            r, routing.resolve(r, "analysis", npc=npc_ref),
            lambda rt: calls.analyze_turn(npc_title, p.player_text, p.npc_text, scope,
                                          speaker=speaker, hints=hints, route=rt, kind=p.kind),
            lambda: routing.resolve(r, "analysis", npc=npc_ref))
        return out, tokens

    return analysis.fan_out(r, p, ts, analyze=analyze, enqueue=follow_up(ctx.send),
                            source_max=SOURCE_TEXT_MAX)
