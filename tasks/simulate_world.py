"""Queue ``simulate_world``: the beat's ``npc_memory.world_tick`` and the per-session
``npc_memory.simulate_world`` (off-screen world simulation, on a budget)."""

from __future__ import annotations

import time

from contract.names import TaskName
from contract.payloads import NoteUpdatePayload, SimulationPayload, TickPayload
from contract.send import Send, request_simulation, simulation_pending_key
from inference import calls
from inference.lora import registry as lora_registry
from inference.lora import routing
from memory import gossip, nearline, turns
from memory.db import session_scope
from memory.scope import offscreen_characters
from memory.simulation import (
    Weights, allot_budget, mark_simulated, rank_candidates, sessions_to_tick,
)
from models import GameSession, World
from settings import get_settings
from tasks.base import TaskContext, npc_task
from tasks.note_update import enqueue_note_update

PROMPT_CHARS_PER_TOKEN = 3.0
"""Conservative estimate of prompt size (English is about 4 characters a token)."""
TOKENS_PER_NPC = 80
"""Completion tokens one NPC's update needs at most (a 160-character sentence plus JSON)."""


@npc_task(TaskName.WORLD_TICK, soft_time_limit=30, time_limit=60, max_retries=0)
def world_tick(p: TickPayload, ctx: TaskContext) -> dict:
    """Share the tick's budget among the sessions active within the idle window (least
    recently simulated first; only world ``world_id``'s when given) and request one
    ``simulate_world`` each; the tick id is this
    task's id, so a redelivered tick requests the same idempotent work. A session whose
    previous simulation is still queued or running is skipped.

    Returns ``{"sessions", "enqueued", "waiting", "busy", "npc_budget", "token_budget"}``.
    """
    s_ = get_settings()
    r = nearline.get_redis()
    sessions = sessions_to_tick(r, p.idle_after_s or s_.simulate_idle_after_s)
    if p.world_id is not None:  # an operator's tick of one world
        sessions = [sid for sid in sessions
                    if (nearline.get_session(r, sid) or {}).get("world_id") == p.world_id]
    allotted, waiting = allot_budget(sessions, s_.simulate_max_npcs, s_.simulate_max_tokens,
                                     s_.tick_max_npcs, s_.tick_max_tokens)
    sent, busy = [], []
    for a in allotted:
        if request_simulation(ctx.send, r, a.session_id, ctx.task_id, max_npcs=a.max_npcs,
                              max_tokens=a.max_tokens):
            sent.append(a)
        else:
            busy.append(a.session_id)
    return {"sessions": len(sessions), "enqueued": len(sent), "waiting": len(waiting),
            "busy": len(busy), "npc_budget": sum(a.max_npcs for a in sent),
            "token_budget": sum(a.max_tokens for a in sent)}


@npc_task(TaskName.SIMULATE_WORLD, soft_time_limit=180, time_limit=240)
def simulate_world(p: SimulationPayload, ctx: TaskContext) -> dict:
    """Rank the session's off-screen NPCs, simulate the best ones within the budget, advance
    the in-game clock once per tick, and enqueue one ``update_note`` per answer (idempotency
    key ``{tick_id}:{session_id}:{entry key}``, cause ``simulation``).

    Before the model call, NPCs that meet pass on what one of them witnessed
    (``memory.gossip``, recorded as ``told`` turns: ``told`` in the trace).

    Returns the tick's trace: chosen NPCs with their scores and signals, the ones left
    waiting, what was told, updates enqueued, model calls and tokens, in-game time before and after, and
    the model route of the call (``model``: the simulated NPCs' archetype's ``action_policy``
    adapter when they share an archetype, ``inference.lora.routing``).
    """
    r = nearline.get_redis()
    try:
        return _simulate(p, r, ctx.send)
    finally:
        r.delete(simulation_pending_key(p.session_id))


def _fit(chosen: list, places: list[dict], max_tokens: int, prompt_chars) -> tuple[int, int]:
    """How many of ``chosen`` fit the token budget, and the completion's ``max_tokens``."""
    n = len(chosen)
    while n > 0:
        prompt = int(prompt_chars(chosen[:n], places) / PROMPT_CHARS_PER_TOKEN) + 1
        completion = min(max_tokens - prompt, TOKENS_PER_NPC * 2 * n)
        if completion >= TOKENS_PER_NPC * n:
            return n, completion
        n -= 1
    return 0, 0


def _enqueue_updates(send: Send, p: SimulationPayload, did: dict[str, str], clock: int) -> None:
    for key, summary in did.items():
        enqueue_note_update(send, NoteUpdatePayload(
            session_id=p.session_id, lore_entry_key=key, update_summary=summary,
            cause="simulation", game_minutes=clock,
            idempotency_key=f"{p.tick_id}:{p.session_id}:{key}"))


def _gossip(send: Send, p: SimulationPayload, r, simulated: list,
            characters: list) -> list[dict]:
    """Record what the simulated NPCs and the characters they meet pass on
    (``memory.gossip``): one ``told`` turn per telling, through ``memory.turns.record_turn``
    (event id ``told:{tick}:{teller id}:{listener id}``: a re-run records nothing twice).
    Returns ``[{teller, listener, turn_id (passed on), told_turn_id}]``."""
    limit = get_settings().simulate_gossip_per_tick
    sess = nearline.get_session(r, p.session_id)
    if limit <= 0 or not simulated or sess is None:
        return []
    recent = nearline.recent_turns(r, p.session_id, nearline.TURNS_CAP)
    tellings = gossip.pick(gossip.meetings(simulated, characters), recent, limit)
    names = {c.id: c.title for c in characters}
    out = []
    for t in tellings:
        target = turns.Target(session_id=p.session_id, world_id=sess["world_id"],
                              player_name=sess["player_name"], npc_entry_id=t.listener.id,
                              npc=nearline.entry_doc(t.listener),
                              game_minutes=sess["game_minutes"], every_turns=0)
        rec = turns.record_turn(
            r, send, target, player_text=t.text(names, sess["player_name"]), npc_text="",
            speaker=t.teller.title, kind="told", witnesses=[t.teller.id, t.listener.id],
            event_id=f"told:{p.tick_id}:{t.teller.id}:{t.listener.id}",
            source=t.source(p.tick_id))
        out.append({"teller": t.teller.key, "listener": t.listener.key,
                    "turn_id": t.turn["turn_id"], "told_turn_id": rec.turn.turn_id})
    return out


def _route(r, archetypes: list[str | None]) -> routing.ModelRoute:
    """One simulation call covers several NPCs: it uses their archetype's ``action_policy``
    adapter when they share one archetype, else the base model (an adapter speaks for one
    archetype; mixing would put one archetype's policy in the others' mouths)."""
    names = {lora_registry.normalise(a) for a in archetypes}
    if len(names) == 1:
        return routing.resolve(r, "simulation", archetype=names.pop())
    base = routing.resolve(r, "simulation")
    return routing.ModelRoute(base.purpose, base.role, base.backend, base.model,
                              reason=f"{base.reason}; mixed archetypes")


def _simulate(p: SimulationPayload, r, send: Send) -> dict:
    earlier = nearline.get_tick_result(r, p.session_id, p.tick_id)
    if earlier is not None:  # a re-run of this tick: send the same updates again (idempotent)
        _enqueue_updates(send, p, earlier.get("did", {}), earlier.get("game_minutes", 0))
        return {**earlier, "status": "duplicate", "tokens": 0}
    s_ = get_settings()
    max_npcs = p.max_npcs or s_.simulate_max_npcs
    max_tokens = p.max_tokens or s_.simulate_max_tokens
    with session_scope() as s:
        game = s.get(GameSession, p.session_id)
        if game is None:
            raise LookupError(f"session {p.session_id} does not exist")
        world = s.get(World, game.world_id)
        ranked = rank_candidates(s, r, world.id, p.session_id, s_.simulate_recent_turns,
                                 Weights.from_settings(s_))
        chosen = ranked[:max_npcs]
        docs = [{"key": c.entry.key, "title": c.entry.title, "content": c.entry.content[:300],
                 "note": nearline.get_note(r, p.session_id, c.entry.id)[:300]} for c in chosen]
        place_keys = sorted({k for c in chosen for k in (c.entry.relations or {}).get("located_in", [])})
        places = [{"key": k, "title": k.rsplit("_", 1)[0]} for k in place_keys][:3]
        world_title = world.title
        archetypes = [c.entry.archetype for c in chosen]
        characters = offscreen_characters(s, world.id, p.session_id, set())  # all of them
        tick_minutes = world.tick_game_minutes or s_.tick_game_minutes
    recent = [t["player_text"][:120] for t in nearline.recent_turns(r, p.session_id, 3)]
    sess = nearline.get_session(r, p.session_id) or {}
    clock_before = int(sess.get("game_minutes", 0))
    elapsed = nearline.format_duration(tick_minutes)

    def prompt_chars(targets, places_):
        msgs = calls.simulation_messages(world_title, elapsed, "", targets, places_, recent)
        return sum(len(m["content"]) for m in msgs)

    n, completion = _fit(docs, places, max_tokens, prompt_chars)
    trace = {"npcs": [c.trace() for c in chosen[:n]],
             "waiting": [c.entry.key for c in ranked[n:]][:20],
             "updates": 0, "calls": 0, "tokens": 0, "token_budget": max_tokens,
             "game_time_before": nearline.format_game_time(clock_before), "elapsed": elapsed}
    if n == 0:
        mark_simulated(r, p.session_id, [])
        return trace
    clock = nearline.advance_clock_once(r, p.session_id, p.tick_id, tick_minutes)
    now_text = nearline.format_game_time(clock)
    trace["told"] = _gossip(send, p, r, [c.entry for c in chosen[:n]], characters)
    route = _route(r, archetypes[:n])
    trace["model"] = route.as_dict()
    (out, tokens), route = routing.call_routed(  # a lost adapter is loaded again, once
        r, route, lambda rt: calls.simulate(world_title, elapsed, now_text, docs[:n], places,
                                            recent, max_tokens=completion, route=rt),
        lambda: _route(r, archetypes[:n]))
    trace["model"] = route.as_dict()
    did = {}
    for u in out.updates:
        did.setdefault(u.lore_entry_id, u.update_summary)
    result = nearline.save_tick_result(r, p.session_id, p.tick_id, {
        **trace, "updates": len(did), "did": did, "calls": 1, "tokens": tokens,
        "game_time": now_text, "game_minutes": clock, "at": time.time()})
    _enqueue_updates(send, p, result["did"], clock)
    with session_scope() as s:
        game = s.get(GameSession, p.session_id)
        game.game_minutes = max(game.game_minutes or 0, clock)
    mark_simulated(r, p.session_id, [c.entry.id for c in chosen[:n]])
    return result
