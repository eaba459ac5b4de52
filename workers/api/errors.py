"""The error answers of the dialogue server: how they are declared, and how errors map to them.

Every error body is JSON with a ``detail``:

- :class:`ErrorOut` ``{"detail": "<message>"}``: 400 (a request body that cannot be decoded:
  not UTF-8; routes with a body only), 401 (missing or invalid API key, with
  ``WWW-Authenticate: Bearer``), 404 (unknown session, NPC, world, entry, task, dead letter,
  archetype), 409 (a conflict: a task still running, a note changing under the write, a task
  with no queue), 500 (a stored memory card is corrupt), 503 (Redis, the broker, the database
  or the model server unreachable; the client may retry).
- :class:`UnprocessableOut` for 422: ``detail`` is the list of request-validation errors
  (``workers.input_guard``: at most 20, each ``input`` cut to 200 characters, with
  ``more_errors`` counting those left out), or one message when the request was well formed
  but refused by the route (a target that is not a character, a ``root`` outside
  ``ADAPTERS_ROOT``, a value the database cannot store).

:func:`responses` gives the ``responses=`` mapping a route or router declares.

The domain errors the routes let through are mapped to HTTP here, once, by the exception
handlers :func:`install` registers (:func:`answer_for` is the table): unknown session, NPC,
ops object or archetype character 404; a target, witness or location of the wrong kind, or
adapters that cannot be provisioned, 422; a busy task, a task
with no queue or a note that kept changing 409; a corrupt stored card 500; Redis, the
broker, the database or the model server unreachable 503. The 503 message of a Redis or
broker outage names the store as the route's area does (:func:`outage_detail`). Request
validation's 422 handlers are ``workers.input_guard``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseError

from inference.llm import ModelError
from inference.lora import registry
from memory import ops, turns
from memory.cards import CardCorrupt
from memory.notes import NoteConflict

log = logging.getLogger(__name__)


class ErrorOut(BaseModel):
    """An error answer other than request validation's."""

    detail: str = Field(description="what went wrong, for a person to read")


class FieldError(BaseModel):
    """One request-validation error (pydantic's error, bounded)."""

    type: str = Field(description="pydantic error type, e.g. missing, string_too_long, "
                                  "nul_character")
    loc: list[str | int] = Field(description="where: body/query/path, then field names")
    msg: str
    input: Any = Field(None, description="the refused value, at most 200 characters")
    ctx: dict[str, Any] | None = Field(None, description="the constraint, e.g. max_length")


class UnprocessableOut(BaseModel):
    """A 422 answer: the request's validation errors, or the route's one message."""

    detail: list[FieldError] | str = Field(description=(
        "the validation errors (at most 20), or one message when the route refused a "
        "well-formed request"))
    more_errors: int | None = Field(None, description="validation errors left out of detail")


_DESCRIPTIONS = {
    400: "the request body could not be decoded (not UTF-8 JSON)",
    401: "missing or invalid API key (`Authorization: Bearer <key>`)",
    404: "unknown session, NPC, world, entry, task or other named thing",
    409: "conflict: the task is still running, the note kept changing, or the task has no "
         "queue",
    422: "invalid request: validation errors, or the route's reason",
    500: "a stored memory card is corrupt",
    503: "Redis, the broker, the database or the model server is unavailable; retry later",
}


def responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of ``codes`` (422 with :class:`UnprocessableOut`,
    the others with :class:`ErrorOut`); ``descriptions`` (``e404="unknown session"``)
    replace the default description of a code."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": UnprocessableOut if code == 422 else ErrorOut,
                     "description": descriptions.get(f"e{code}", _DESCRIPTIONS[code])}
    return out


STORE_OUTAGE = "redis unavailable"
"""The 503 message's prefix for a Redis or broker outage on routes that name no other."""
TURN_OUTAGE = "broker or nearline store unavailable"
"""The prefix on the turn and event routes (recording a turn touches both)."""
OPS_OUTAGE = "broker unavailable"
"""The prefix on the operator routes (``workers.ops_api``: they send tasks)."""

_BY_TYPE: list[tuple[tuple[type[Exception], ...], int]] = [
    ((turns.UnknownSession, turns.UnknownNpc, ops.NotFound, registry.UnknownCharacter), 404),
    ((turns.NotACharacter, turns.NotALocation, registry.ProvisionError), 422),
    ((ops.TaskBusy, ops.NotReplayable, NoteConflict), 409),
    ((CardCorrupt,), 500),
]
_OUTAGES = (RedisError, BrokerError, ConnectionError)
HANDLED: tuple[type[Exception], ...] = (
    *(t for types, _ in _BY_TYPE for t in types), *_OUTAGES, DatabaseError, ModelError)
"""The exception types :func:`install` maps."""


def answer_for(exc: BaseException, outage: str = STORE_OUTAGE) -> tuple[int, str] | None:
    """The HTTP status and ``detail`` message of a domain error, or None when ``exc`` is none
    of :data:`HANDLED`. The message is the error's own text, prefixed for outages: ``outage``
    for Redis, the broker or a lost connection, ``database unavailable`` (with the driver's
    reason) and ``model server unavailable``."""
    for types, status in _BY_TYPE:
        if isinstance(exc, types):
            return status, str(exc)
    if isinstance(exc, _OUTAGES):
        return 503, f"{outage}: {exc}"
    if isinstance(exc, DatabaseError):
        return 503, f"database unavailable: {exc.orig}"
    if isinstance(exc, ModelError):
        return 503, f"model server unavailable: {exc}"
    return None


def outage_detail(prefix: str) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency that makes a Redis or broker outage on its routes answer ``"<prefix>:
    <reason>"`` (the default is :data:`STORE_OUTAGE`). It reads nothing from the request, so
    the OpenAPI document does not change."""

    async def _outage(request: Request) -> None:
        request.state.outage = prefix

    return _outage


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The JSON answer ``{"detail": ...}`` of a domain error (:func:`answer_for`); outages
    are logged as warnings."""
    status, detail = answer_for(exc, getattr(request.state, "outage", STORE_OUTAGE))
    if status == 503:
        log.warning("%s", detail[:300])
    return JSONResponse(status_code=status, content={"detail": detail})


def install(app: FastAPI) -> None:
    """Register :func:`domain_error_handler` on ``app`` for every type of :data:`HANDLED`."""
    for exc_type in HANDLED:
        app.add_exception_handler(exc_type, domain_error_handler)
