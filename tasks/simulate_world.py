"""Queue ``simulate_world``: the beat's ``npc_memory.world_tick`` and the per-session
``npc_memory.simulate_world`` (off-screen world simulation, on a budget)."""

from __future__ import annotations

from inference import calls
from inference.lora import registry as lora_registry
from inference.lora import routing
from memory import keys as rkeys
from memory import nearline, offscreen, simulation
from memory.db import session_scope
from settings import get_settings
from contract.names import TaskName
from contract.payloads import SimulationPayload, TickPayload
from contract.send import Send, request_simulation
from tasks.base import TaskContext, npc_task
from tasks.follow_up import follow_up


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
    return simulation.world_tick(
        r, lambda sid, **budget: request_simulation(ctx.send, r, sid, ctx.task_id, **budget),
        idle_after_s=p.idle_after_s or s_.simulate_idle_after_s, world_id=p.world_id,
        per_session_npcs=s_.simulate_max_npcs, per_session_tokens=s_.simulate_max_tokens,
        tick_npcs=s_.tick_max_npcs, tick_tokens=s_.tick_max_tokens)


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
        r.delete(rkeys.simulation_pending(p.session_id))


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
    """Run ``memory.offscreen.simulate_session`` for the payload's session and tick."""
    s_ = get_settings()

    def call(world_title, elapsed, now_text, docs, places, recent, max_tokens, archetypes):
        (out, tokens), route = routing.call_routed(  # a lost adapter is loaded again, once
            r, _route(r, archetypes),
            lambda rt: calls.simulate(world_title, elapsed, now_text, docs, places, recent,
                                      max_tokens=max_tokens, route=rt),
            lambda: _route(r, archetypes))
        return out, tokens, route.as_dict()

    return offscreen.simulate_session(
        session_scope, r, p.session_id, p.tick_id,
        offscreen.TickBudget.from_settings(s_, p.max_npcs, p.max_tokens),
        messages=calls.simulation_messages, call=call, send=send,
        enqueue=follow_up(send))
