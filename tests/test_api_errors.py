"""The one mapping of domain errors to HTTP answers (``workers.api.errors``)."""

from __future__ import annotations

import pytest
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError

from inference.llm import ModelError
from memory import ops, turns
from memory.cards import CardCorrupt
from memory.notes import NoteConflict
from workers.api import errors


@pytest.mark.parametrize("exc, status", [
    (turns.UnknownSession("unknown session 'x'"), 404),
    (turns.UnknownNpc("unknown NPC 'y' in this session's world"), 404),
    (ops.NotFound("unknown task 't'"), 404),
    (turns.NotACharacter("'well' is a location"), 422),
    (turns.NotALocation("'baker' is a character"), 422),
    (ops.TaskBusy("task t is running"), 409),
    (ops.NotReplayable("no queue"), 409),
    (NoteConflict("the note kept changing"), 409),
    (CardCorrupt("card:x does not hold a valid RelationshipCard"), 500),
])
def test_domain_errors_answer_their_own_message(exc, status):
    assert errors.answer_for(exc) == (status, str(exc))


def test_outages_are_503_named_as_the_area_does():
    down = RedisConnectionError("Connection refused")
    assert errors.answer_for(down) == (503, "redis unavailable: Connection refused")
    assert errors.answer_for(BrokerError("gone"), errors.TURN_OUTAGE) == (
        503, "broker or nearline store unavailable: gone")
    assert errors.answer_for(ConnectionError("reset"), errors.OPS_OUTAGE) == (
        503, "broker unavailable: reset")
    assert errors.answer_for(ModelError("timeout")) == (503, "model server unavailable: timeout")
    assert errors.answer_for(ValueError("not ours")) is None
