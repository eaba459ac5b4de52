"""Input rules shared by every HTTP request model and every task payload, and the JSON-safe
copies that the task ledger and the dead-letter store keep.

PostgreSQL ``text`` columns cannot hold NUL (U+0000), its ``json`` columns reject NaN and
Infinity, and a lone UTF-16 surrogate (``"\\ud800"`` in a JSON document) cannot be encoded as
UTF-8 at all. Anything of that kind is refused at the edge or made storable before it is
written:

- :data:`SafeStr`: a ``str`` that must not contain NUL or an unpaired surrogate (pydantic
  error types ``nul_character`` / ``surrogate_character``); every string field of the HTTP
  request models uses it, and the id fields of the task payloads;
- :data:`NonBlankStr`: a :data:`SafeStr` that is not blank (whitespace only);
- :data:`CleanStr`: a ``str`` in which NUL and unpaired surrogates are replaced by U+FFFD
  before validation
  (free text of task payloads: a message queued before these rules still gets archived);
- :data:`FiniteFloat`: a float that is neither NaN nor infinite;
- :class:`RequestModel`: base of the HTTP request bodies (unknown fields and non-finite
  numbers rejected);
- :func:`json_safe` / :func:`storable`: a copy of any value that ``json.dumps(...,
  allow_nan=False)`` and PostgreSQL's ``json`` accept; :func:`preview`: the same, bounded,
  for echoing input in error bodies.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
PREVIEW_CHARS = 200
"""How much of a rejected input an error body echoes."""


def find_problem(value: str) -> str | None:
    """Why ``value`` may not be stored as text: ``"nul_character"``,
    ``"surrogate_character"`` or None when it is fine."""
    if "\x00" in value:
        return "nul_character"
    if _SURROGATE.search(value):
        return "surrogate_character"
    return None


MESSAGES = {
    "nul_character": "text must not contain NUL (U+0000) characters",
    "surrogate_character": "text must not contain unpaired UTF-16 surrogates (U+D800-U+DFFF)",
}


def check_text(value: str) -> str:
    """``value`` unchanged.

    Raises:
        PydanticCustomError: ``nul_character`` or ``surrogate_character``.
    """
    problem = find_problem(value)
    if problem:
        raise PydanticCustomError(problem, MESSAGES[problem])
    return value


def clean_text(value: str) -> str:
    """``value`` with NUL and unpaired surrogates replaced by U+FFFD (same length)."""
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    return _SURROGATE.sub(REPLACEMENT, value)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank_string", "text must not be blank")
    return value


SafeStr = Annotated[str, AfterValidator(check_text)]
NonBlankStr = Annotated[str, AfterValidator(check_text), AfterValidator(_not_blank)]
CleanStr = Annotated[str, BeforeValidator(lambda v: clean_text(v) if isinstance(v, str) else v)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class RequestModel(BaseModel):
    """Base of the HTTP request bodies: unknown fields and NaN/Infinity are rejected (string
    fields use :data:`SafeStr` or :data:`NonBlankStr`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def json_safe(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` made of dicts with string keys, lists, finite numbers, bools, None
    and strings without NUL or unpaired surrogates: NaN and infinities become the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; integers beyond 64 bits their decimal string; NUL is removed and surrogates become U+FFFD;
    tuples and sets become lists; anything else (or anything nested deeper than 64 levels)
    its ``repr``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else _short_repr(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return _SURROGATE.sub(REPLACEMENT, value.replace("\x00", ""))
    if _depth >= 64:
        return json_safe(_short_repr(value))
    if isinstance(value, dict):
        return {json_safe(k if isinstance(k, str) else str(k), _depth + 1):
                json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, _depth + 1) for v in value]
    return json_safe(_short_repr(value))


def _short_repr(value: Any, limit: int = 2000) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ (or an int over the digit limit)
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def storable(payload: Any) -> dict:
    """``payload`` as the ledger and the dead-letter store keep it: :func:`json_safe`, and
    if that still does not serialise (``json.dumps(allow_nan=False)``), or is not a dict,
    ``{"unserialisable": <repr, at most 2000 chars>}``. Never raises."""
    try:
        safe = json_safe(payload)
        json.dumps(safe, allow_nan=False)
        if isinstance(safe, dict):
            return safe
    except Exception:  # e.g. an int beyond the str conversion limit
        pass
    return {"unserialisable": json_safe(_short_repr(payload))}


def preview(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """``value`` JSON-safe and bounded for an error body: short strings (NUL and unpaired
    surrogates shown as U+FFFD), numbers, bools and None as they are (non-finite floats and
    integers beyond 64 bits as strings); anything longer than ``limit`` characters as a
    string cut to ``limit`` with a ``...`` mark."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return json_safe(value)
    if isinstance(value, str):
        return clean_text(value if len(value) <= limit else value[:limit] + "...")
    if isinstance(value, (dict, list, tuple)):
        try:
            safe = json_safe(value)
            text = json.dumps(safe, ensure_ascii=False, allow_nan=False)
        except Exception:
            return json_safe(_short_repr(value, limit))
        return safe if len(text) <= limit else json_safe(text[:limit] + "...")
    return json_safe(_short_repr(value, limit))
