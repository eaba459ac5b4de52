"""Queue ``simulate_world``: the beat's ``npc_memory.world_tick`` and the per-session
``npc_memory.simulate_world`` (seed 004's world simulation)."""

from __future__ import annotations

import time

from inference import calls
from memory import nearline
from memory.db import session_scope
from memory.simulation import mark_simulated, pick_targets
from models import GameSession, World
from settings import get_settings
from tasks.base import TaskContext, enqueue, npc_task
from tasks.note_update import enqueue_note_update
from tasks.payloads import NoteUpdatePayload, SimulationPayload, TickPayload

IDLE_AFTER_S = 3600.0


@npc_task("npc_memory.world_tick", TickPayload, soft_time_limit=30, time_limit=60, max_retries=0)
def world_tick(p: TickPayload, ctx: TaskContext) -> dict:
    """Enqueue ``simulate_world`` for every session active within the idle window; the tick id
    is this task's id, so a redelivered tick enqueues the same idempotent work."""
    r = nearline.get_redis()
    sessions = nearline.active_sessions(r, p.idle_after_s or IDLE_AFTER_S)
    # At most one pending simulation per session: a tick whose previous simulation has not
    # finished skips that session instead of piling up work behind a slow model server.
    hold_s = max(60, int(3 * get_settings().world_tick_seconds))
    sent = 0
    for sid in sessions:
        if r.set(pending_key(sid), ctx.task_id, nx=True, ex=hold_s):
            enqueue("npc_memory.simulate_world",
                    SimulationPayload(session_id=sid, tick_id=ctx.task_id), expires=hold_s)
            sent += 1
    return {"sessions": len(sessions), "enqueued": sent}


def pending_key(session_id: str) -> str:
    """Redis key held while a beat-triggered simulation of the session is queued or running."""
    return f"session:{session_id}:simulation_pending"


@npc_task("npc_memory.simulate_world", SimulationPayload, soft_time_limit=180, time_limit=240)
def simulate_world(p: SimulationPayload, ctx: TaskContext) -> dict:
    """Pick off-screen NPCs, ask the maintenance model what they did, and enqueue one
    ``update_note`` per answer (idempotency key ``{tick_id}:{npc key}``, cause simulation)."""
    r = nearline.get_redis()
    try:
        return _simulate(p, r)
    finally:
        r.delete(pending_key(p.session_id))


def _simulate(p: SimulationPayload, r) -> dict:
    s_ = get_settings()
    with session_scope() as s:
        game = s.get(GameSession, p.session_id)
        if game is None:
            raise LookupError(f"session {p.session_id} does not exist")
        world = s.get(World, game.world_id)
        targets = pick_targets(s, r, world.id, p.session_id, s_.simulate_recent_turns,
                               s_.simulate_max_npcs)
        target_docs = [{"key": t.key, "title": t.title, "content": t.content[:300],
                        "note": nearline.get_note(r, p.session_id, t.id)[:300]} for t in targets]
        world_title = world.title
    if not targets:
        return {"npcs": [], "updates": 0, "tokens": 0}
    recent = [f"{t['player_text'][:120]}" for t in nearline.recent_turns(r, p.session_id, 3)]
    out, tokens = calls.simulate(world_title, p.elapsed, target_docs, recent)
    sent = set()
    for u in out.updates:
        if u.lore_entry_id in sent:
            continue
        sent.add(u.lore_entry_id)
        enqueue_note_update(NoteUpdatePayload(
            session_id=p.session_id, lore_entry_key=u.lore_entry_id,
            update_summary=u.update_summary, idempotency_key=f"{p.tick_id}:{u.lore_entry_id}",
            cause="simulation"))
    mark_simulated(r, p.session_id, [t.id for t in targets])
    return {"npcs": [t["key"] for t in target_docs], "updates": len(sent), "tokens": tokens,
            "at": time.time()}
