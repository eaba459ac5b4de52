"""A played turn answered as Server-Sent Events (:func:`stream_turn`), from the model call
on; ``workers.api.turns`` does everything before it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from inference import calls
from inference.llm import ModelError
from inference.lora import routing
from memory import turns
from workers import lore_guard, metrics
from workers.api import errors
from workers.api.replies import record_played_turn, sent, server_timing, turn_out
from workers.api.schemas import TurnIn, TurnStreamDone

log = logging.getLogger(__name__)


def _sse(event: str, data: dict | str) -> dict:
    """One event for ``EventSourceResponse``; ``data`` as JSON unless already a string."""
    return {"event": event, "data": data if isinstance(data, str) else json.dumps(data)}


def _next_delta(stream: calls.ReplyStream) -> str | None:
    """The model's next text delta; None at the end."""
    return next(stream, None)


def stream_turn(r, target: turns.Target, body: TurnIn, route: routing.ModelRoute,
                prompt: dict, t0: float, stages: dict[str, float]) -> EventSourceResponse:
    """The streamed half of ``workers.api.turns.play_turn``: the model call onward, as
    Server-Sent Events (``t0``: the request's ``time.perf_counter()``; ``stages``: the
    ``Server-Timing`` stages so far, ms).

    The model is called and read up to its first token before anything is sent, so a model
    that fails before answering is a plain ``503`` JSON answer. Then the response is
    ``text/event-stream``: ``event: token`` ``data: {"text": "<delta>"}`` per delta as the
    model sends it (the deltas joined are ``npc_text``), and at the end one ``event: done``
    whose data is the non-streamed JSON reply plus ``ttft_ms`` (:class:`TurnStreamDone`).
    ``Server-Timing`` has the stages before the stream (``context``, ``embed``,
    ``retrieve``, ``route``) and ``ttft`` (model call to first token, ms).

    The turn is recorded once, after the last token, through ``turns.record_turn`` as a
    non-streamed turn (``latency_ms``: request to last token), before the ``done`` event.
    Failures after the first token end the stream with ``event: error`` ``data: {"status":
    503, "detail": "..."}``: the model failed mid-way (nothing is recorded: the client is
    told the turn failed, as with a 503, and may play it again), or recording failed (Redis
    or the broker; status and detail as ``workers.api.errors`` answers them).

    Client disconnect: the server notices it at the latest when the model's next token
    arrives, stops reading the model's stream, and records the turn with the text generated
    until then (at least what the client was sent: the player saw those words), logged as
    ``turn served`` with ``disconnected: true``. A turn whose reply was empty is recorded as
    ``...``, as without streaming.
    """
    npc = target.npc
    t_model = time.perf_counter()
    # as generate_reply: an adapter the server lost is loaded again, once; a ModelError
    # here is the plain 503 answer (workers.api.errors)
    stream, route = routing.call_routed(
        r, route, lambda rt: calls.stream_reply(**prompt, route=rt),
        lambda: routing.resolve(r, "dialogue", npc=npc))
    first = _next_delta(stream)
    ttft_s = time.perf_counter() - t_model
    metrics.TTFT.labels("stream").observe(ttft_s)
    timing = server_timing({**stages, "ttft": ttft_s * 1000})
    left = {"open": True}  # the turn is still to be recorded (or dropped after an error)

    def finish(disconnected: bool) -> TurnStreamDone:
        left["open"] = False
        if disconnected:
            stream.close()
        latency_ms = (time.perf_counter() - t0) * 1000
        reply = stream.reply()
        turn = record_played_turn(r, target, body, reply.text, latency_ms, reply.model,
                                  stream=True, disconnected=disconnected,
                                  ttft_ms=round(ttft_s * 1000, 1))
        return turn_out(TurnStreamDone, turn, body, target,
                        sent(reply.retrieved, prompt["retrieved"]), reply.model, latency_ms,
                        route, ttft_ms=ttft_s * 1000,
                        evidence=sent(reply.evidence, prompt["evidence"]),
                        canon=None if disconnected else lore_guard.check_streamed(prompt,
                                                                                   reply.text))

    async def events() -> AsyncIterator[dict]:
        try:
            delta = first
            while delta is not None:
                yield _sse("token", {"text": delta})
                try:
                    delta = await anyio.to_thread.run_sync(_next_delta, stream)
                except ModelError as exc:
                    left["open"] = False
                    log.warning("model failed mid-stream; turn not recorded: %s", exc,
                                extra={"npc_id": body.npc_id})
                    yield _sse("error", {"status": 503,
                                         "detail": f"model server failed mid-reply: {exc}"})
                    return
            try:
                done = await anyio.to_thread.run_sync(finish, False)
            except Exception as exc:
                answer = errors.answer_for(exc, errors.TURN_OUTAGE)
                if answer is None:
                    raise
                yield _sse("error", {"status": answer[0], "detail": answer[1]})
                return
            yield _sse("done", done.model_dump_json())
        finally:
            if left["open"]:  # the client went away (cancelled or closed mid-stream)
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(finish, True)
                    except Exception:  # nobody left to tell
                        log.exception("recording a disconnected stream's turn failed")

    async def on_close(_message) -> None:
        log.info("stream client disconnected", extra={"npc_id": body.npc_id})

    async def finish_if_open() -> None:  # the client left before the first event was written
        if left["open"]:
            await anyio.to_thread.run_sync(finish, True)

    return EventSourceResponse(events(), headers={"Server-Timing": timing},
                               client_close_handler_callable=on_close,
                               background=BackgroundTask(finish_if_open))
