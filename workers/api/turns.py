"""Playing a turn: ``POST /v1/sessions/{id}/turns`` (:func:`play_turn`).

The turn is answered from the in-process hot cache (``memory.hot_cache``), the nearline
tier (Redis) and the in-process vector index only, with no database query: the NPC's
context (cards, memories, recent turns), the retrieved documents and evidence
(``memory.dialogue_context``), its archetype's model route, the model's reply (checked by
the lore guard), then the turn recorded (``workers.api.replies``). Streamed turns leave at
the model call for ``workers.api.stream``.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response

from inference import calls
from inference.embedding import get_embedder
from inference.lora import routing
from memory import dialogue_context, nearline
from settings import get_settings
from workers import lore_guard, metrics
from workers.api import errors
from workers.api.errors import responses
from workers.api.replies import record_played_turn, sent, server_timing, turn_out
from workers.api.schemas import SSE_EVENT, TurnIn, TurnOut
# the route's description (its docstring, in the OpenAPI document) names it so
from workers.api.stream import stream_turn as _stream_turn
from workers.state import state

router = APIRouter()


def _wants_event_stream(request: Request) -> bool:
    """The request's ``Accept`` header names ``text/event-stream``."""
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip().lower() == "text/event-stream"
               for part in accept.split(","))


@router.post("/v1/sessions/{session_id}/turns", response_model=TurnOut, responses={
    200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}},
    **responses(400, 404, e404="unknown session or NPC")},
    dependencies=[Depends(errors.outage_detail(errors.TURN_OUTAGE))])
def play_turn(session_id: str, body: TurnIn, request: Request, response: Response):
    """Answer one player turn in character; 404 for an unknown session or NPC, 422 for a
    target that is not a character, 503 when the model server or Redis fails. The turn's
    pipeline tasks are sent by the outbox relay after it is recorded, so a broker outage
    does not fail the turn.

    With ``"stream": true`` in the body or ``Accept: text/event-stream``, the reply comes as
    Server-Sent Events once the model's first token is there (:func:`_stream_turn`); every
    error up to that token is the same JSON answer as without streaming.

    The ``Server-Timing`` header gives the time of each stage in ms: ``context`` (hot cache
    and its Redis check), ``embed`` (the player's line), ``retrieve`` (index searches,
    ranking, the documents and evidence items, their fusion), ``route`` (the NPC's archetype adapter, ``inference.lora.routing``;
    includes loading the adapter on its vLLM server the first time), ``model``
    (generation), ``record`` (Redis and broker). ``model`` in the answer is what the call
    named (the adapter on vLLM), ``adapter`` the archetype adapter or null, ``route`` why."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    mark = [t0]

    def lap(name: str) -> None:
        now = time.perf_counter()
        stages[name] = (now - mark[0]) * 1000
        mark[0] = now

    s_ = get_settings()
    r = nearline.get_redis()
    hot = state.hot.get(r, session_id, body.npc_id)  # Level 1, checked against Redis
    target = hot.target
    npc = target.npc
    cards_text = hot.cards_text(s_.cards_prompt_chars)
    memories_text = hot.memories_text(s_.memories_prompt_chars)
    recent_npc = hot.recent_npc_turns()
    lap("context")
    query = get_embedder().embed([body.player_text])[0]
    lap("embed")
    ctx = dialogue_context.build_context(r, state.index, hot, query,
                                         dialogue_context.RetrievalParams.from_settings(s_))
    lap("retrieve")
    route = routing.resolve(r, "dialogue", npc=npc)  # Redis only; a load the first time
    lap("route")
    prompt = {"npc": npc, "note": ctx.note, "recent": recent_npc, "retrieved": ctx.retrieved,
              "player_text": body.player_text, "cards": cards_text, "memories": memories_text,
              "evidence": ctx.evidence, "max_tokens": s_.dialogue_max_tokens}
    if body.stream or _wants_event_stream(request):
        return _stream_turn(r, target, body, route, prompt, t0, stages)
    # a server that lost the adapter (restart) gets it loaded again, once
    reply, route = routing.call_routed(
        r, route, lambda rt: calls.generate_reply(**prompt, route=rt),
        lambda: routing.resolve(r, "dialogue", npc=npc))
    reply, canon = lore_guard.guard_reply(prompt, reply, lambda facts: routing.call_routed(
        r, route, lambda rt: calls.generate_reply(**prompt, route=rt, canon=facts),
        lambda: routing.resolve(r, "dialogue", npc=npc))[0])
    lap("model")
    metrics.TTFT.labels("reply").observe(stages["model"] / 1000)  # the whole reply at once
    latency_ms = (time.perf_counter() - t0) * 1000
    turn = record_played_turn(r, target, body, reply.text, latency_ms, reply.model)
    lap("record")
    response.headers["Server-Timing"] = server_timing(stages)
    return turn_out(TurnOut, turn, body, target, sent(reply.retrieved, ctx.retrieved),
                    reply.model, latency_ms, route,
                    evidence=sent(reply.evidence, ctx.evidence), canon=canon)
