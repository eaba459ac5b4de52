"""The dialogue server's edge against hostile input (``install(app)``).

- :func:`safe_params`, an app-wide dependency: a path or query parameter (name or value) with
  NUL (``%00``) or an unpaired surrogate answers 422 before any route reads it; request bodies
  get the same rule from their models (``memory.safe_input.SafeStr``).
- :func:`validation_error_handler`: every 422 of request validation has a bounded,
  encodable body: ``{"detail": [{"type", "loc", "msg", "input", "ctx"?}]}`` with at most
  :data:`MAX_ERRORS` errors, each ``input`` cut to ``memory.safe_input.PREVIEW_CHARS``
  characters and made JSON-safe (NaN and infinities as strings, unpaired surrogates as
  U+FFFD). FastAPI's default handler echoes the whole input and answers 500 when it cannot
  encode it (a lone surrogate, NaN, 1e309).
- :func:`data_error_handler`: a value the database refuses (``sqlalchemy.exc.DataError``,
  e.g. an integer out of range) answers 422 instead of 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from memory.safe_input import MESSAGES, find_problem, json_safe, preview

log = logging.getLogger(__name__)

MAX_ERRORS = 20
"""The most validation errors a 422 body lists."""
INT_PATH_MAX = 2**31 - 1
"""The largest integer id a path parameter takes (PostgreSQL ``integer`` columns)."""


def safe_params(request: Request) -> None:
    """Dependency: refuse path and query parameters that hold NUL or unpaired surrogates.

    Raises:
        RequestValidationError: one error per offending parameter, ``loc`` ``["path",
            name]`` or ``["query", name]``, type ``nul_character`` or
            ``surrogate_character``.
    """
    errors = []
    params = [("path", k, v) for k, v in request.path_params.items()]
    params += [("query", k, v) for k, v in request.query_params.multi_items()]
    for where, name, value in params:
        for text in (name, value):
            problem = find_problem(str(text))
            if problem:
                errors.append({"type": problem, "loc": (where, name), "msg": MESSAGES[problem],
                               "input": value})
                break
    if errors:
        raise RequestValidationError(errors)


def _error(err: dict) -> dict:
    out = {"type": str(err.get("type", "")), "loc": [preview(p) for p in err.get("loc", ())],
           "msg": json_safe(str(err.get("msg", ""))[:1000]), "input": preview(err.get("input"))}
    ctx = err.get("ctx")
    if ctx:
        out["ctx"] = {str(k): (json_safe(str(v)[:200]) if isinstance(v, Exception) else preview(v))
                      for k, v in ctx.items()}
    return out


async def validation_error_handler(_request: Request, exc: RequestValidationError
                                   ) -> JSONResponse:
    """422 ``{"detail": [...]}``: bounded and always encodable (see the module docstring)."""
    errors = list(exc.errors())
    detail = [_error(e) for e in errors[:MAX_ERRORS]]
    body: dict = {"detail": detail}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return JSONResponse(status_code=422, content=body)


async def data_error_handler(_request: Request, exc: DataError) -> JSONResponse:
    """422: the database refused a value of the request (out of range, invalid text)."""
    log.warning("database refused a request value: %s", str(exc.orig)[:300])
    return JSONResponse(status_code=422, content={
        "detail": "invalid input: a value is out of range or not storable"})


def install(app: FastAPI) -> None:
    """Register the handlers above on ``app`` (the dependency is given to ``FastAPI(...)``)."""
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(DataError, data_error_handler)
