"""Structured JSON logs for every process (python-json-logger), with request and task
context, and secrets scrubbed.

One JSON object per line on stderr: ``time``, ``level``, ``logger``, ``message``,
``process`` (``web``, ``worker``, ``beat``, ...), and when known ``session_id``, ``turn_id``,
``task_id``, ``task_name`` and ``idempotency_key``, plus any ``extra=`` fields.

Context comes from context variables (:func:`bind`, :func:`clear`): the dialogue server binds
the session from the route and the turn once it is recorded; workers bind the task from
Celery's ``task_prerun`` signal (its id, name and the payload's ids) and clear it on
``task_postrun``.

Secrets never reach the output: every formatted line has the values of ``API_KEYS``,
``LLM_API_KEY``, ``MISTRAL_API_KEY``, the password of ``FLOWER_BASIC_AUTH``, URL passwords
(``scheme://user:password@``) and bearer tokens replaced by ``***``, whatever logged them
(messages, arguments, tracebacks, access-log paths).

Every logged value is bounded before it is scrubbed: the message, each ``extra=`` and
context field is cut to :data:`LOG_VALUE_CHARS` characters (with a ``...[N more chars]``
mark), a traceback to its last :data:`LOG_TRACEBACK_CHARS`, and context fields to
:data:`CONTEXT_VALUE_CHARS` when bound. The scrubbing patterns are structurally linear: no
nested repetition, and every repetition is bounded unless the pattern starts with a literal
(the bearer token), so scrubbing costs time proportional to the (bounded) line.

``LOG_FORMAT=text`` keeps plain text lines (same scrubbing); ``LOG_LEVEL`` sets the level.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys

from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("session_id", "turn_id", "task_id", "task_name", "idempotency_key")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"log_{name}", default=None) for name in CONTEXT_FIELDS}

# Linear-time by construction: the URL pattern can start anywhere, so all its repetitions are
# bounded (a scheme of at most 32 characters, a user of at most 256, a password of at most
# 1024); the bearer pattern starts with a literal and its one unbounded run cannot overlap
# another match's run (a token holds no whitespace, the literal needs one after it).
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^:/@\s]{0,256}:)[^@\s/]{1,1024}@")
_BEARER = re.compile(r"(Bearer\s{1,16})[A-Za-z0-9._~+/=-]{8,}")
SCRUB_PATTERNS = (_URL_PASSWORD, _BEARER)
_NOT_SECRETS = {"", "not-needed"}

LOG_VALUE_CHARS = 4096
"""The most characters of a message or of one field that reach a log line."""
LOG_TRACEBACK_CHARS = 16384
"""The most characters of a traceback that reach a log line (its end is kept)."""
CONTEXT_VALUE_CHARS = 200
"""Context fields (ids) are cut to this many characters when bound."""
_SCRUB_MARGIN = 1024
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def bind(**values: str | int | None) -> None:
    """Set context fields (``session_id``, ``turn_id``, ``task_id``, ``task_name``,
    ``idempotency_key``) for this thread or task, each cut to :data:`CONTEXT_VALUE_CHARS`
    characters; None leaves a field as it is.

    Raises:
        KeyError: an unknown field name.
    """
    for name, value in values.items():
        if value is not None:
            _context[name].set(str(value)[:CONTEXT_VALUE_CHARS])


def clear() -> None:
    """Forget every context field."""
    for var in _context.values():
        var.set(None)


def current() -> dict[str, str]:
    """The context fields that are set."""
    return {n: v.get() for n, v in _context.items() if v.get() is not None}


class ContextFilter(logging.Filter):
    """Copies the bound context fields onto each record (a field the call set wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def secret_values() -> list[str]:
    """The secret values of this process's environment, longest first."""
    from settings import get_settings

    s = get_settings()
    found = set(s.api_key_list) | {s.llm_api_key, s.mistral_api_key}
    flower = os.environ.get("FLOWER_BASIC_AUTH", "")
    if ":" in flower:
        found.add(flower.split(":", 1)[1])
    return sorted((v for v in found if v not in _NOT_SECRETS and len(v) >= 4),
                  key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with secrets, URL passwords and bearer tokens replaced by ``***``."""
    for value in secrets:
        text = text.replace(value, "***")
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)
    return _BEARER.sub(r"\1***", text)


def bounded_scrub(text: str, secrets: list[str], limit: int = LOG_VALUE_CHARS, *,
                  keep: str = "head") -> str:
    """``text`` scrubbed (:func:`scrub`) and cut to ``limit`` characters plus a
    ``...[N more chars]`` mark; ``keep="tail"`` keeps the end instead (tracebacks). Only
    ``limit`` characters and a margin (at least the longest secret) are scrubbed, the margin
    so that a secret or token across the cut is replaced before the cut."""
    if len(text) <= limit:
        return scrub(text, secrets)
    margin = max([_SCRUB_MARGIN, *(len(v) for v in secrets)])
    cut = len(text) - limit
    if keep == "tail":
        return f"[{cut} chars before]..." + scrub(text[-(limit + margin):], secrets)[-limit:]
    return scrub(text[:limit + margin], secrets)[:limit] + f"...[{cut} more chars]"


def _bounded_record(record: logging.LogRecord, secrets: list[str]) -> logging.LogRecord:
    """A copy of ``record`` whose message and extra fields are bounded and scrubbed (the
    record itself is left alone for other handlers)."""
    message = record.getMessage()
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
    big = len(message) > LOG_VALUE_CHARS
    bounded = {}
    if record.exc_text and len(record.exc_text) > LOG_TRACEBACK_CHARS:  # cached elsewhere
        bounded["exc_text"] = bounded_scrub(record.exc_text, secrets, LOG_TRACEBACK_CHARS,
                                            keep="tail")
    for key, value in fields.items():
        if isinstance(value, str):
            if len(value) > LOG_VALUE_CHARS:
                bounded[key] = bounded_scrub(value, secrets)
        elif not isinstance(value, (int, float, bool, type(None))):
            try:
                text = json.dumps(value, default=str)
            except (TypeError, ValueError):
                text = repr(value)
            if len(text) > LOG_VALUE_CHARS:
                bounded[key] = bounded_scrub(text, secrets)
    if not big and not bounded:
        return record
    copy = logging.makeLogRecord(record.__dict__)
    if big:
        copy.msg, copy.args = bounded_scrub(message, secrets), None
    copy.__dict__.update(bounded)
    return copy


class _Scrubbing:
    """Mixin: bound each value, then scrub the formatted line (secrets are read once, when
    the handler is made)."""

    secrets: list[str]

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(_bounded_record(record, self.secrets)), self.secrets)

    def formatException(self, ei) -> str:
        return bounded_scrub(super().formatException(ei), self.secrets, LOG_TRACEBACK_CHARS,
                             keep="tail")


class ScrubbingJsonFormatter(_Scrubbing, JsonFormatter):
    """One JSON object per record, secrets scrubbed."""


class ScrubbingTextFormatter(_Scrubbing, logging.Formatter):
    """Plain text, secrets scrubbed."""


def make_handler(process: str, stream=None, fmt: str | None = None) -> logging.Handler:
    """A stream handler (default stderr) with the context filter and the scrubbing
    formatter; ``fmt`` is ``json`` (default, or ``LOG_FORMAT``) or ``text``."""
    fmt = (fmt or os.environ.get("LOG_FORMAT", "json")).lower()
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "text":
        formatter = ScrubbingTextFormatter(
            f"%(asctime)s %(levelname)s {process} %(name)s: %(message)s")
    else:
        formatter = ScrubbingJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"process": process}, timestamp=False)
    formatter.secrets = secret_values()
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    return handler


def json_formatter(process: str = "web") -> logging.Formatter:
    """The scrubbing JSON formatter, for ``logging.config.dictConfig`` (``"()"``): uvicorn's
    ``--log-config workers/uvicorn_logging.json`` uses it so that even uvicorn's start-up
    lines, before the app is loaded, are JSON."""
    return make_handler(process, fmt="json").formatter


def configure_logging(process: str, level: str | int | None = None) -> None:
    """Send every log record of this process (root, uvicorn's and Celery's loggers) through
    one JSON handler on stderr. Idempotent: calling again replaces the handler."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_npc_memory", False) or isinstance(h.formatter, _Scrubbing):
            root.removeHandler(h)  # ours, or uvicorn's --log-config one: replaced
    handler = make_handler(process)
    handler._npc_memory = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # The HTTP clients' per-request INFO lines ("HTTP Request: POST .../chat/completions")
    # repeat what the model-call metrics count, at two JSON lines per turn on the hot path:
    # they are kept for LOG_LEVEL=DEBUG only.
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(quiet)


def install_celery_signals() -> None:
    """Workers and beat: JSON logging instead of Celery's (``setup_logging``), and the task
    context bound from ``task_prerun`` to ``task_postrun``."""
    from celery import signals

    @signals.setup_logging.connect(weak=False)
    def _setup(loglevel=None, **_kw):
        argv = " ".join(sys.argv)
        process = "beat" if " beat" in argv else "flower" if " flower" in argv else "worker"
        configure_logging(os.environ.get("HONCHO_PROCESS_NAME") or process, loglevel)

    task_log = logging.getLogger("npc_memory.task")

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id=None, task=None, kwargs=None, **_kw):
        clear()
        kwargs = kwargs or {}
        turn_id = kwargs.get("turn_id")
        bind(task_id=task_id, task_name=getattr(task, "name", None),
             session_id=kwargs.get("session_id"), turn_id=turn_id,
             idempotency_key=kwargs.get("idempotency_key") or (
                 f"turn:{turn_id}" if turn_id and "seq" in kwargs else None))
        task_log.info("task started")

    @signals.task_postrun.connect(weak=False)
    def _postrun(state=None, **_kw):
        task_log.info("task finished", extra={"state": state})
        clear()
