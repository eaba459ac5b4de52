"""One session's off-screen simulation in one world tick (``npc_memory.simulate_world``).

:func:`simulate_session` ranks the session's off-screen NPCs (``memory.simulation``), takes
the best ones the token budget allows, advances the in-game clock once per tick, lets the
NPCs that meet pass on what they witnessed (``memory.gossip``), asks the simulation model
what each one did and sends one ``npc_memory.update_note`` per answer (idempotency key
``{tick_id}:{session_id}:{entry key}``, cause ``simulation``). The tick's result is kept in
Redis (``memory.nearline.save_tick_result``): a re-run of the tick sends the same updates
again (idempotent) and calls no model.

What it needs from outside is passed in: a session factory (``memory.db.session_scope``), a
Redis client, the model (``messages``: the prompt's messages, to measure it; ``call``: the
routed model call), ``send`` (the broker send a ``told`` turn's pipeline tasks go through)
and ``enqueue`` (the ledger-recorded send of the note updates).
"""

from __future__ import annotations

from contract.names import TaskName
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy.orm import Session

from memory import gossip, nearline
from memory.analysis import Enqueue
from memory.scope import offscreen_characters
from memory.simulation import Weights, fit_budget, mark_simulated, rank_candidates
from models import GameSession, World

UPDATE_NOTE = TaskName.UPDATE_NOTE

Messages = Callable[..., list[dict]]
"""``(world_title, elapsed, now_text, targets, places, recent) -> [{role, content}]``: the
simulation prompt (``inference.calls.simulation_messages``)."""

Call = Callable[..., tuple[object, int, dict]]
"""``(world_title, elapsed, now_text, docs, places, recent, max_tokens, archetypes) ->
(output with .updates, tokens, model route as a dict)``: the routed simulation model call."""


@dataclass(frozen=True)
class TickBudget:
    """What one session's simulation may spend and how it ranks: ``max_npcs`` NPCs and
    ``max_tokens`` model tokens, candidates not in the last ``recent_k`` turns ranked with
    ``weights``; ``tick_minutes`` of in-game time per tick (the world's own setting wins),
    at most ``gossip_per_tick`` tellings."""

    max_npcs: int
    max_tokens: int
    recent_k: int
    weights: Weights
    tick_minutes: int
    gossip_per_tick: int

    @classmethod
    def from_settings(cls, s, max_npcs: int | None = None,
                      max_tokens: int | None = None) -> TickBudget:
        """The settings' budget (``SIMULATE_*``), ``max_npcs``/``max_tokens`` when given
        (a session's share of the tick's budget)."""
        return cls(max_npcs or s.simulate_max_npcs, max_tokens or s.simulate_max_tokens,
                   s.simulate_recent_turns, Weights.from_settings(s), s.tick_game_minutes,
                   s.simulate_gossip_per_tick)


def send_updates(enqueue: Enqueue, session_id: str, tick_id: str, did: dict[str, str],
                 clock: int) -> None:
    """Send one ``npc_memory.update_note`` per entry key in ``did`` (key -> what the NPC
    did), at in-game minute ``clock``."""
    for key, summary in did.items():
        enqueue(UPDATE_NOTE, dict(
            session_id=session_id, lore_entry_key=key, update_summary=summary,
            cause="simulation", game_minutes=clock,
            idempotency_key=f"{tick_id}:{session_id}:{key}"))


def simulate_session(db: Callable[[], AbstractContextManager[Session]], r, session_id: str,
                     tick_id: str, budget: TickBudget, *, messages: Messages, call: Call,
                     send: Callable[..., object], enqueue: Enqueue) -> dict:
    """Simulate the session's off-screen NPCs for tick ``tick_id`` (see the module).

    Returns the tick's trace: ``npcs`` (chosen, with scores and signals), ``waiting`` (keys
    of the others, at most 20), ``told``, ``updates``, ``calls``, ``tokens``,
    ``token_budget``, ``game_time_before``, ``elapsed``, ``model`` and, when a call was
    made, ``did`` (key -> summary), ``game_time``, ``game_minutes`` and ``at`` (unix s). A
    re-run of a tick returns the first run's result with ``status: "duplicate"`` and
    ``tokens: 0``.

    Raises:
        LookupError: the session does not exist in the database.
    """
    earlier = nearline.get_tick_result(r, session_id, tick_id)
    if earlier is not None:  # a re-run of this tick: send the same updates again (idempotent)
        send_updates(enqueue, session_id, tick_id, earlier.get("did", {}),
                     earlier.get("game_minutes", 0))
        return {**earlier, "status": "duplicate", "tokens": 0}
    with db() as s:
        game = s.get(GameSession, session_id)
        if game is None:
            raise LookupError(f"session {session_id} does not exist")
        world = s.get(World, game.world_id)
        ranked = rank_candidates(s, r, world.id, session_id, budget.recent_k, budget.weights)
        chosen = ranked[:budget.max_npcs]
        docs = [{"key": c.entry.key, "title": c.entry.title, "content": c.entry.content[:300],
                 "note": nearline.get_note(r, session_id, c.entry.id)[:300]} for c in chosen]
        place_keys = sorted({k for c in chosen
                             for k in (c.entry.relations or {}).get("located_in", [])})
        places = [{"key": k, "title": k.rsplit("_", 1)[0]} for k in place_keys][:3]
        world_title = world.title
        archetypes = [c.entry.archetype for c in chosen]
        characters = offscreen_characters(s, world.id, session_id, set())  # all of them
        tick_minutes = world.tick_game_minutes or budget.tick_minutes
    recent = [t["player_text"][:120] for t in nearline.recent_turns(r, session_id, 3)]
    sess = nearline.get_session(r, session_id) or {}
    clock_before = int(sess.get("game_minutes", 0))
    elapsed = nearline.format_duration(tick_minutes)

    def prompt_chars(targets, places_):
        msgs = messages(world_title, elapsed, "", targets, places_, recent)
        return sum(len(m["content"]) for m in msgs)

    n, completion = fit_budget(docs, places, budget.max_tokens, prompt_chars)
    trace = {"npcs": [c.trace() for c in chosen[:n]],
             "waiting": [c.entry.key for c in ranked[n:]][:20],
             "updates": 0, "calls": 0, "tokens": 0, "token_budget": budget.max_tokens,
             "game_time_before": nearline.format_game_time(clock_before), "elapsed": elapsed}
    if n == 0:
        mark_simulated(r, session_id, [])
        return trace
    clock = nearline.advance_clock_once(r, session_id, tick_id, tick_minutes)
    now_text = nearline.format_game_time(clock)
    trace["told"] = gossip.pass_on(r, send, session_id, tick_id, [c.entry for c in chosen[:n]],
                                   characters, budget.gossip_per_tick)
    out, tokens, trace["model"] = call(world_title, elapsed, now_text, docs[:n], places, recent,
                                       completion, archetypes[:n])
    did = {}
    for u in out.updates:
        did.setdefault(u.lore_entry_id, u.update_summary)
    result = nearline.save_tick_result(r, session_id, tick_id, {
        **trace, "updates": len(did), "did": did, "calls": 1, "tokens": tokens,
        "game_time": now_text, "game_minutes": clock, "at": time.time()})
    send_updates(enqueue, session_id, tick_id, result["did"], clock)
    with db() as s:
        game = s.get(GameSession, session_id)
        game.game_minutes = max(game.game_minutes or 0, clock)
    mark_simulated(r, session_id, [c.entry.id for c in chosen[:n]])
    return result


__all__ = ["Call", "Enqueue", "Messages", "TickBudget", "UPDATE_NOTE", "send_updates",
           "simulate_session"]
