"""The error answers of the dialogue server as its OpenAPI document declares them.

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
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
