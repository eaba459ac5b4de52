"""Session routes: open a session on a world (the one turn-path route that reads the
database), and tick its world now (ops)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException

from memory import nearline
from memory.db import session_scope
from memory.worlds import base_entries, world_by_key
from models import GameSession
from settings import get_settings
from workers import operations
from workers.api.errors import responses
from workers.api.schemas import SessionIn, SessionOut
from workers.state import state

router = APIRouter()


@router.post("/v1/sessions", response_model=SessionOut, status_code=201,
             responses=responses(400, 404, e404="unknown world"))
def open_session(body: SessionIn) -> SessionOut:
    """Open a session on a world. 404 if the world was never imported."""
    r = nearline.get_redis()
    with session_scope() as s:
        world = world_by_key(s, body.world)
        if world is None:
            raise HTTPException(404, f"unknown world {body.world!r}: import it first")
        entries = base_entries(s, world.id)
        nearline.cache_entries(r, world.id, entries)
        session_id = uuid.uuid4().hex
        s.add(GameSession(id=session_id, world_id=world.id, player_name=body.player_name))
        chars = [{"npc_id": e.key, "name": e.title} for e in entries if e.entity_type == "character"]
        world_id = world.id
        s_ = get_settings()
        every = s_.simulate_every_turns if world.simulate_every_turns is None \
            else world.simulate_every_turns
        minutes = world.tick_game_minutes or s_.tick_game_minutes
    nearline.open_session(r, session_id, world_id, body.player_name, every_turns=every,
                          tick_minutes=minutes)
    return SessionOut(session_id=session_id, world=body.world, world_id=world_id, characters=chars)


@router.post("/v1/sessions/{session_id}/tick", status_code=202,
             responses=responses(404, e404="unknown session"))
def tick(session_id: str) -> dict:
    """Trigger a world tick for one session now (ops), even if one is pending; returns the
    tick id and the task id (the tick's trace is that task's result in the ledger)."""
    return operations.tick_session(nearline.get_redis(), state.send, session_id)
