"""Recording a turn generated elsewhere: ``POST /v1/sessions/{id}/events``
(:func:`post_event`), through the same ``memory.turns.record_turn`` as a played turn and
with no model call and no database query."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Response

from memory import nearline, turns, witnesses
from memory.witnesses import NARRATIVE_SPEAKERS
from contract.payloads import NARRATIVE_KINDS
from workers import logging_setup, metrics
from workers.api import errors
from workers.api.errors import responses
from workers.api.schemas import EventIn, EventOut
from workers.state import state

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/sessions/{session_id}/events", response_model=EventOut, status_code=201,
             responses={200: {"model": EventOut, "description": "event_id seen before: the "
                              "earlier turn, nothing recorded"},
                        **responses(400, 404, e404="unknown session or NPC")},
             dependencies=[Depends(errors.outage_detail(errors.TURN_OUTAGE))])
def post_event(session_id: str, body: EventIn, response: Response) -> EventOut:
    """Record a turn that was generated elsewhere (another model, a script, a recorded
    conversation) and run it through the same pipeline as a played turn (same Redis writes,
    same ``analyze_turn`` and ``archive_turn`` tasks), without calling the generation model.

    201 with the new turn; 200 with the earlier turn when ``event_id`` was recorded in this
    session before; 404 for an unknown session or NPC; 422 for a target that is not a
    character or an invalid body; 503 when Redis fails (the event id is then forgotten, so
    posting the event again records and sends it; its turn may already be in the recent turns,
    and the pipeline's idempotency keys hold as its turn id is the same). The tasks go out
    through the outbox relay, so a broker outage alone does not fail the event.
    """
    r = nearline.get_redis()
    target = (turns.resolve_target(r, session_id, body.npc_id) if body.npc_id is not None
              else turns.resolve_session(r, session_id))
    speaker = body.speaker if body.kind not in NARRATIVE_KINDS else None
    if body.kind == "npc_exchange" and nearline.resolve_key(
            r, target.world_id, session_id, body.speaker) is None:
        raise HTTPException(422, f"speaker {body.speaker!r} of an npc_exchange is no "
                                 "entry key of this session's world")
    who = turns.resolve_witnesses(r, target, body.witnesses, speaker, body.location)
    rec = turns.record_turn(r, state.send, target, player_text=body.text,
                            npc_text=body.npc_text or "", speaker=body.speaker,
                            created_at=body.created_at, event_id=body.event_id,
                            kind=body.kind, witnesses=who, publish=state.relay.submit)
    if rec.duplicate:
        response.status_code = 200
    else:
        metrics.TURNS.labels("event").inc()
    turn = rec.turn
    logging_setup.bind(turn_id=turn.turn_id, idempotency_key=f"turn:{turn.turn_id}")
    log.info("event recorded", extra={"npc_id": body.npc_id, "seq": turn.seq,
                                      "kind": body.kind, "event_id": body.event_id,
                                      "duplicate": rec.duplicate})
    kind = turn.kind or "speech"
    return EventOut(turn_id=turn.turn_id, seq=turn.seq, kind=kind,
                    npc_id=body.npc_id if turn.npc_entry_id is not None else None,
                    npc_name=target.npc["title"] if turn.npc_entry_id is not None else None,
                    speaker=turn.speaker or NARRATIVE_SPEAKERS.get(kind) or target.player_name,
                    text=turn.player_text, npc_text=turn.npc_text or None,
                    witnesses=witnesses.turn_witnesses(turn.model_dump()),
                    created_at=turn.created_at, duplicate=rec.duplicate)
