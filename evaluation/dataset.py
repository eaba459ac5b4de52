"""Multi-session conversation datasets with questions: loading, validation, replay and the
answer-in-context rule of the memory-quality benchmark (``bench/memory_quality.py``).

The format is the JSON layout public long-conversation benchmarks use (LoCoMo's): a list of
conversations, each::

    {"sample_id": str,
     "conversation": {"speaker_a": str, "speaker_b": str,
                      "session_1": [{"speaker": str, "dia_id": "D1:1", "text": str}, ...],
                      "session_1_date_time": "6:40 pm on 3 March, 2025",
                      "session_2": [...], "session_2_date_time": "...", ...},
     "qa": [{"question": str, "answer": str, "evidence": ["D1:3", ...],
             "category": "single-hop" | "multi-hop" | "temporal" | "knowledge-update" | ...}]}

Sessions are numbered from 1 without gaps; every utterance's ``dia_id`` is ``D<session>:<n>``
and unique; its ``speaker`` is ``speaker_a`` or ``speaker_b``; every ``evidence`` id names an
utterance of the conversation. Extra utterance fields (LoCoMo's ``img_url``,
``blip_caption``...) are ignored; a numeric ``answer`` or ``category`` is read as text.
``evaluation/data/npc_conversations.json`` is the project's own dataset in this format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

DEFAULT_DATASET = Path(__file__).resolve().parent / "data" / "npc_conversations.json"
"""The shipped dataset (3 conversations x 4 sessions, 57 questions)."""

CATEGORIES = ("single-hop", "multi-hop", "temporal", "knowledge-update")
"""The categories of the shipped dataset (others, such as LoCoMo's, are accepted)."""

_STOPWORD_TEXT = """
a an the of in on at to for from by with into onto through over under about as and or but nor
is are was were be been being am it its his her hers their theirs he she they them him i
me you your yours we us our ours my mine this that these those there here then than so such
what which who whom whose when where why how do does did done has have had not
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
"""Words dropped from a gold answer before the answer-in-context check. Numbers, names,
modal verbs such as "may" (also a month) and "no" are kept."""

_DIA_ID = re.compile(r"^D(\d+):(\d+)$")
_SESSION_KEY = re.compile(r"^session_(\d+)$")
_DATE_KEY = re.compile(r"^session_(\d+)_date_time$")
_WORD = re.compile(r"[0-9a-z]+(?:['\u2019\-][0-9a-z]+)*")
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%I:%M%p on %d %B, %Y",
                 "%d %B %Y, %H:%M", "%d %B %Y")


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and the bad field as a
    path such as ``[0].conversation.session_2[3].dia_id``."""


class Utterance(BaseModel):
    """One line of a session: who said it, its ``dia_id`` (``D<session>:<n>``) and the text."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    speaker: str = Field(min_length=1)
    dia_id: str = Field(pattern=_DIA_ID.pattern)
    text: str = Field(min_length=1)


class QA(BaseModel):
    """A question with its short gold ``answer``, the ``evidence`` utterance ids and its
    ``category``."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    evidence: list[str] = Field(min_length=1)
    category: str = Field(min_length=1)

    @field_validator("answer", "category", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else value

    @field_validator("evidence")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        for v in value:
            if not _DIA_ID.match(v):
                raise ValueError(f"{v!r} is not a dia id like 'D1:3'")
        return value


class _Header(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sample_id: str = Field(min_length=1)
    conversation: dict[str, Any]
    qa: list[Any]


class _Speakers(BaseModel):
    model_config = ConfigDict(extra="ignore")
    speaker_a: str = Field(min_length=1)
    speaker_b: str = Field(min_length=1)


@dataclass(frozen=True)
class Session:
    """One session: its number (from 1), its ``date_time`` text and its utterances."""

    number: int
    date_time: str
    utterances: tuple[Utterance, ...]

    def started_at(self) -> float:
        """``date_time`` as unix seconds (UTC); formats like LoCoMo's "1:56 pm on 8 May,
        2023" or ISO 8601. Raises ``DatasetError`` for text no format reads."""
        return parse_date_time(self.date_time)


@dataclass(frozen=True)
class Conversation:
    """A validated conversation: ``sessions`` in order and its questions."""

    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: tuple[Session, ...]
    qa: tuple[QA, ...]

    def utterances(self) -> list[Utterance]:
        """Every utterance of every session, in order."""
        return [u for s in self.sessions for u in s.utterances]

    def by_dia_id(self) -> dict[str, Utterance]:
        """``{dia_id: utterance}``."""
        return {u.dia_id: u for u in self.utterances()}

    def truncated(self, n_sessions: int) -> Conversation:
        """The first ``n_sessions`` sessions and only the questions whose evidence all lies in
        them."""
        sessions = self.sessions[:n_sessions]
        ids = {u.dia_id for s in sessions for u in s.utterances}
        return Conversation(self.sample_id, self.speaker_a, self.speaker_b, sessions,
                            tuple(q for q in self.qa if set(q.evidence) <= ids))


@dataclass(frozen=True)
class Event:
    """One event to post to ``POST /v1/sessions/{id}/events``: ``speaker`` said ``text`` to
    ``listener`` (an NPC), who answered ``npc_text`` (None: no answer). ``dia_ids`` are the
    utterance ids it carries (1 or 2, in order: part 0 then part 1); ``created_at`` unix
    seconds."""

    session: int
    speaker: str
    text: str
    listener: str
    npc_text: str | None
    dia_ids: tuple[str, ...]
    created_at: float

    @property
    def event_id(self) -> str:
        """The dia ids joined by ``|`` (the event's idempotency key)."""
        return "|".join(self.dia_ids)


def parse_date_time(text: str) -> float:
    """A session ``date_time`` (e.g. "6:40 pm on 3 March, 2025", or ISO 8601) as unix seconds,
    read as UTC. Raises ``DatasetError`` when no known format reads it."""
    t = " ".join(text.split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(t, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            pass
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise DatasetError(f"unreadable session date_time {text!r} (expected e.g. "
                           f"'6:40 pm on 3 March, 2025' or ISO 8601)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _where(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _validate(adapter_or_model, data: Any, where: str):
    try:
        if isinstance(adapter_or_model, TypeAdapter):
            return adapter_or_model.validate_python(data)
        return adapter_or_model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DatasetError(f"{_where(where, err['loc'])}: {err['msg']}{more}") from None


_UTTERANCES = TypeAdapter(list[Utterance])
_QAS = TypeAdapter(list[QA])


def parse_dataset(data: Any, origin: str = "<dataset>") -> list[Conversation]:
    """Validate parsed JSON ``data`` (see the module docstring) into conversations.

    Raises:
        DatasetError: naming ``origin`` and the bad field, e.g.
            ``data.json: [1].conversation.session_2[4].speaker: 'Bob' is neither speaker_a
            ('Ann') nor speaker_b ('Cy')``.
    """
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{origin}: expected a non-empty JSON list of conversations")
    out: list[Conversation] = []
    seen_samples: set[str] = set()
    for i, raw in enumerate(data):
        where = f"{origin}: [{i}]"
        head = _validate(_Header, raw, where)
        if head.sample_id in seen_samples:
            raise DatasetError(f"{where}.sample_id: duplicate sample_id {head.sample_id!r}")
        seen_samples.add(head.sample_id)
        conv = head.conversation
        speakers = _validate(_Speakers, conv, f"{where}.conversation")
        if speakers.speaker_a == speakers.speaker_b:
            raise DatasetError(f"{where}.conversation.speaker_b: same as speaker_a")
        numbers = sorted(int(m.group(1)) for k in conv if (m := _SESSION_KEY.match(k)))
        if not numbers:
            raise DatasetError(f"{where}.conversation: no session_1")
        if numbers != list(range(1, len(numbers) + 1)):
            raise DatasetError(f"{where}.conversation: sessions must be numbered 1..n without "
                               f"gaps, got {numbers}")
        for k in conv:
            m = _DATE_KEY.match(k)
            if m and int(m.group(1)) not in numbers:
                raise DatasetError(f"{where}.conversation.{k}: no session_{m.group(1)}")
        sessions: list[Session] = []
        ids: set[str] = set()
        for n in numbers:
            key = f"session_{n}"
            utts = _validate(_UTTERANCES, conv[key], f"{where}.conversation.{key}")
            if not utts:
                raise DatasetError(f"{where}.conversation.{key}: empty session")
            for j, u in enumerate(utts):
                at = f"{where}.conversation.{key}[{j}]"
                if u.speaker not in (speakers.speaker_a, speakers.speaker_b):
                    raise DatasetError(f"{at}.speaker: {u.speaker!r} is neither speaker_a "
                                       f"({speakers.speaker_a!r}) nor speaker_b "
                                       f"({speakers.speaker_b!r})")
                if int(_DIA_ID.match(u.dia_id).group(1)) != n:
                    raise DatasetError(f"{at}.dia_id: {u.dia_id!r} is not in session {n} "
                                       f"(expected D{n}:...)")
                if u.dia_id in ids:
                    raise DatasetError(f"{at}.dia_id: duplicate {u.dia_id!r}")
                ids.add(u.dia_id)
            dt_key = f"{key}_date_time"
            date_time = conv.get(dt_key)
            if not isinstance(date_time, str) or not date_time.strip():
                raise DatasetError(f"{where}.conversation.{dt_key}: missing or not a string")
            try:
                parse_date_time(date_time)
            except DatasetError as exc:
                raise DatasetError(f"{where}.conversation.{dt_key}: {exc}") from None
            sessions.append(Session(n, date_time, tuple(utts)))
        qas = _validate(_QAS, head.qa, f"{where}.qa")
        for j, q in enumerate(qas):
            for e in q.evidence:
                if e not in ids:
                    raise DatasetError(f"{where}.qa[{j}].evidence: {e!r} is not a dia_id of "
                                       f"this conversation")
        out.append(Conversation(head.sample_id, speakers.speaker_a, speakers.speaker_b,
                                tuple(sessions), tuple(qas)))
    return out


def load_dataset(path: str | Path = DEFAULT_DATASET) -> list[Conversation]:
    """Read and validate a dataset file (UTF-8 JSON, see the module docstring).

    Raises:
        DatasetError: the file is missing, not JSON, or a field is invalid (the message names
            the file and the field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not JSON: {exc}") from None
    return parse_dataset(data, str(path))


def replay_events(conv: Conversation) -> list[Event]:
    """The conversation as events, in order. Consecutive utterances by different speakers
    pair up: the first is ``text`` said by its ``speaker`` to the other speaker's NPC, the
    second is that NPC's ``npc_text``; an utterance with no answering one (the next line is by
    the same speaker, or the session ends) is an event without ``npc_text``. The session's
    ``date_time`` is the first utterance's time; each later utterance is 60 s after the one
    before (``created_at`` of an event: its first utterance's)."""
    events: list[Event] = []
    for s in conv.sessions:
        t0 = s.started_at()
        utts = s.utterances
        i = 0
        while i < len(utts):
            u = utts[i]
            other = conv.speaker_b if u.speaker == conv.speaker_a else conv.speaker_a
            reply = utts[i + 1] if i + 1 < len(utts) and utts[i + 1].speaker == other else None
            events.append(Event(s.number, u.speaker, u.text, other,
                                reply.text if reply else None,
                                (u.dia_id, reply.dia_id) if reply else (u.dia_id,),
                                t0 + 60.0 * i))
            i += 2 if reply else 1
    return events


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``: runs of letters and digits; an apostrophe or
    hyphen inside a word joins it (``Rosa's`` -> ``rosas``, ``D-3`` -> ``d3``); every other
    character separates."""
    return [re.sub(r"['\u2019\-]", "", w) for w in _WORD.findall(text.lower())]


def content_tokens(answer: str) -> list[str]:
    """The tokens of ``answer`` that must be found: :func:`tokens` minus :data:`STOPWORDS`
    (all tokens when every one is a stopword)."""
    toks = tokens(answer)
    return [t for t in toks if t not in STOPWORDS] or toks


def answer_in_context(answer: str, context: str) -> bool:
    """True when every content token of the gold ``answer`` (:func:`content_tokens`) is a
    token of ``context`` (:func:`tokens`); False for an empty context."""
    have = set(tokens(context))
    return all(t in have for t in content_tokens(answer)) if have else False
