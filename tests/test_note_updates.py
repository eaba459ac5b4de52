"""A queued note update applied without Celery (``memory.note_updates.update_note``): real
database and Redis, a fake rewriting model and a fake ``enqueue`` that records the
follow-up tasks."""

from __future__ import annotations

import uuid
from types import SimpleNamespace as NS

import pytest

from memory import nearline, note_updates
from memory.db import session_scope
from models import GameSession, SessionRollback
from contract.payloads import EmbedPayload


def _update(game, key: str = "baker_27", **kw) -> NS:
    return NS(**{**dict(session_id=game["id"], lore_entry_key=key,
                        update_summary="The player brought the baker a sack of flour.",
                        idempotency_key=f"u:{uuid.uuid4().hex}", turn_id=uuid.uuid4().hex,
                        cause="turn", game_minutes=40), **kw})


def _rewrite(title, lore, note, event):
    return f"{note} {event}".strip(), 5


def _run(game, update, sent):
    return note_updates.update_note(
        session_scope, nearline.get_redis(), update, task_id="t-1", rewrite=_rewrite,
        consolidate=lambda title, lore, note, n: (note[:n], 1), coalesce=False,
        enqueue=lambda name, fields: sent.append((name, EmbedPayload.model_validate(fields))))


def test_an_update_is_folded_published_and_embedded_and_a_rerun_writes_nothing(game_session):
    r, sent = nearline.get_redis(), []
    update = _update(game_session)
    nearline.add_pending(r, update.session_id, update.lore_entry_key, update.idempotency_key,
                         update.update_summary, update.turn_id, update.cause, 40)
    out = _run(game_session, update, sent)
    assert out["status"] == "written" and out["version"] == 1 and out["folded"] == 1
    assert out["turn_ids"] == [update.turn_id] and out["mode"] in ("rewritten", "appended")
    (name, embed), = sent
    assert name == "npc_memory.embed" and embed.session_id == game_session["id"]
    assert "sack of flour" in nearline.get_note(r, game_session["id"], embed.lore_entry_id)
    assert nearline.pending_updates(r, update.session_id, update.lore_entry_key) == []

    again = _run(game_session, update, sent)  # the same idempotency key: a duplicate
    assert again["status"] == "duplicate" and "mode" not in again
    assert len(sent) == 2  # a duplicate re-embeds: its first run may have died before


def test_an_update_whose_turn_was_rolled_back_is_cancelled_and_dropped(game_session):
    r, sent = nearline.get_redis(), []
    update = _update(game_session)
    nearline.add_pending(r, update.session_id, update.lore_entry_key, update.idempotency_key,
                         update.update_summary, update.turn_id, update.cause, 40)
    with session_scope() as s:  # what a rollback of the session commits first
        s.get(GameSession, game_session["id"]).epoch = 1
        s.add(SessionRollback(session_id=game_session["id"], epoch=1, to_turn_id="t0",
                              to_seq=0, turn_ids=[update.turn_id], counts={}))
    assert _run(game_session, update, sent) == {"status": "cancelled"}
    assert sent == []
    assert nearline.pending_updates(r, update.session_id, update.lore_entry_key) == []


@pytest.mark.parametrize("which", ["session", "entry"])
def test_an_update_of_an_unknown_session_or_entry_raises_lookup_error(game_session, which):
    update = _update(game_session, **({"session_id": "no-such-session"} if which == "session"
                                      else {"lore_entry_key": "no_such_entry"}))
    with pytest.raises(LookupError):
        _run(game_session, update, [])
