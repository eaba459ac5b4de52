"""What a played turn's two answers share (``workers.api.turns`` answers it at once,
``workers.api.stream`` as Server-Sent Events): recording it and building its reply body."""

from __future__ import annotations

import logging

from inference.lora import routing
from memory import turns
from contract.payloads import TurnPayload
from workers import logging_setup, metrics
from workers.api.schemas import TurnIn, TurnOut
from workers.state import state

log = logging.getLogger(__name__)


def sent(fitted: list | None, chosen: list) -> list:
    """What of ``chosen`` the prompt held (``fitted``, from the reply: fitting the prompt to
    the context window may leave some out), or ``chosen`` when the reply does not say."""
    return chosen if fitted is None else fitted


def server_timing(stages: dict[str, float]) -> str:
    """The ``Server-Timing`` header of ``stages`` (name -> ms), in their order."""
    return ", ".join(f"{k};dur={v:.3f}" for k, v in stages.items())


def record_played_turn(r, target: turns.Target, body: TurnIn, npc_text: str,
                       latency_ms: float, model: str, **log_extra) -> TurnPayload:
    """Record a played turn (``turns.record_turn``: Redis, then the pipeline's tasks through
    the outbox relay), put it in the hot cache, count and log it (``log_extra`` joins the
    log record); an empty reply is recorded as ``...``.

    Raises:
        redis.exceptions.RedisError: Redis failed.
        kombu.exceptions.OperationalError: the broker failed on an inline send.
    """
    turn = turns.record_turn(r, state.send, target, player_text=body.player_text,
                             npc_text=npc_text or "...", latency_ms=latency_ms,
                             publish=state.relay.submit).turn
    state.hot.record(target.session_id, body.npc_id, turns.turn_kwargs(turn))
    metrics.TURNS.labels("turn").inc()
    logging_setup.bind(turn_id=turn.turn_id, idempotency_key=f"turn:{turn.turn_id}")
    log.info("turn served", extra={"npc_id": body.npc_id, "seq": turn.seq,
                                   "latency_ms": round(latency_ms, 1), "model": model,
                                   **log_extra})
    return turn


def turn_out(cls: type[TurnOut], turn: TurnPayload, body: TurnIn, target: turns.Target,
             retrieved: list[tuple[str, str]], model: str, latency_ms: float,
             route: routing.ModelRoute, **extra) -> TurnOut:
    """The reply body (``cls``: :class:`TurnOut` or its streamed ``done`` event) of a
    recorded turn; ``retrieved`` are the prompt's ``(title, text)`` documents, ``extra`` the
    other fields (``evidence``, ``canon``, ``ttft_ms``)."""
    return cls(turn_id=turn.turn_id, seq=turn.seq, npc_id=body.npc_id,
               npc_name=target.npc["title"], npc_text=turn.npc_text,
               retrieved=[t for t, _ in retrieved], model=model, latency_ms=latency_ms,
               adapter=route.adapter, route=route.reason, **extra)
