"""Replaying recorded dialogue into a session as events (``POST /v1/sessions/{id}/events``),
so the memory pipeline runs on real conversations without generating anything.

:func:`conversation_events` turns Smallville conversations
(:func:`memory.importers.smallville.load_smallville_conversations`) into events;
:func:`replay_events` posts them one by one through a ``post`` callable, usually
:func:`http_poster` over an ``httpx.Client`` (FastAPI's ``TestClient`` is one too).

Replay goes over HTTP to the dialogue server rather than calling :mod:`memory.turns`
directly: the server owns the session's nearline state and its Celery app, validates every
event like any client's, and keeps its hot path free of database queries; a replay then
exercises exactly what a game backend would. Every event carries an ``event_id`` derived
from the conversation, so replaying again into the same session records nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx

from memory.importers.smallville import Conversation
from memory.importers.spec import WorldSpec


@dataclass(frozen=True)
class Event:
    """One turn to post: ``speaker`` said ``text`` to the NPC ``npc_id`` (an entry key), who
    answered ``npc_text`` (None: no answer). ``event_id`` is unique per replayed turn;
    ``created_at`` is unix seconds."""

    npc_id: str
    speaker: str
    text: str
    npc_text: str | None
    event_id: str
    created_at: float | None = None

    def body(self) -> dict:
        """The JSON body of ``POST /v1/sessions/{id}/events``."""
        out = {"npc_id": self.npc_id, "speaker": self.speaker, "text": self.text,
               "event_id": self.event_id}
        if self.npc_text is not None:
            out["npc_text"] = self.npc_text
        if self.created_at is not None:
            out["created_at"] = self.created_at
        return out


def conversation_events(conversations: Iterable[Conversation],
                        world: WorldSpec | None = None) -> list[Event]:
    """Events for recorded conversations, in order.

    Each utterance answered by the other participant becomes one event: the first speaker's
    line is ``text`` and the next speaker (the NPC addressed) answers with ``npc_text``. An
    utterance not followed by another speaker's (the last one of an odd conversation, or a
    speaker talking twice) is an event without an answer, addressed to the other
    participant. ``event_id`` is ``"smallville:<created ISO>:<participants>:<n>"``.

    Raises:
        ValueError: with ``world`` given, a speaker or addressee that is not one of its
            characters; or a conversation with fewer than two participants.
    """
    characters = {c.key for c in world.characters()} if world is not None else None
    out: list[Event] = []
    for conv in conversations:
        if len(conv.participants) < 2:
            raise ValueError(f"conversation at {conv.created.isoformat()} has fewer than two "
                             f"participants: {conv.participants!r}")
        prefix = f"smallville:{conv.created.isoformat()}:{'+'.join(conv.participants)}"
        lines = conv.utterances
        i = n = 0
        while i < len(lines):
            speaker, text = lines[i]
            if i + 1 < len(lines) and lines[i + 1][0] != speaker:
                npc, answer = lines[i + 1]
                i += 2
            else:
                npc = next(p for p in conv.participants if p != speaker)
                answer = None
                i += 1
            if characters is not None:
                for who in (speaker, npc):
                    if who not in characters:
                        raise ValueError(f"{who!r} is not a character of world {world.key!r}")
            out.append(Event(npc_id=npc, speaker=speaker, text=text, npc_text=answer,
                             event_id=f"{prefix}:{n}", created_at=conv.created.timestamp()))
            n += 1
    return out


class ReplayError(RuntimeError):
    """The server refused an event; ``status`` is the HTTP status, the message its detail."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


Post = Callable[[dict], tuple[int, dict]]
"""``(event body) -> (HTTP status, response JSON)``; raises :class:`ReplayError` on refusal."""


def _detail(res: httpx.Response) -> str:
    try:
        detail = res.json().get("detail", res.text)
    except ValueError:
        detail = res.text
    return detail if isinstance(detail, str) else str(detail)


def open_session(client: httpx.Client, world_key: str, player_name: str = "replay") -> str:
    """Open a session on ``world_key`` (``POST /v1/sessions``); returns its id.

    Raises:
        ReplayError: the server refused (e.g. 404: the world was never imported).
    """
    res = client.post("/v1/sessions", json={"world": world_key, "player_name": player_name})
    if res.status_code != 201:
        raise ReplayError(f"opening a session on {world_key!r}: HTTP {res.status_code}: "
                          f"{_detail(res)}", res.status_code)
    return res.json()["session_id"]


def http_poster(client: httpx.Client, session_id: str) -> Post:
    """A :data:`Post` sending events to ``/v1/sessions/{session_id}/events`` on ``client``;
    a status other than 200/201 raises :class:`ReplayError` with the server's detail."""

    def post(body: dict) -> tuple[int, dict]:
        res = client.post(f"/v1/sessions/{session_id}/events", json=body)
        if res.status_code not in (200, 201):
            raise ReplayError(f"event {body.get('event_id')!r}: HTTP {res.status_code}: "
                              f"{_detail(res)}", res.status_code)
        return res.status_code, res.json()

    return post


@dataclass
class ReplayResult:
    """What a replay did: events ``recorded`` (new turns) and ``duplicates`` (event ids the
    session had already), and the turn ids in order."""

    recorded: int = 0
    duplicates: int = 0
    turn_ids: list[str] = field(default_factory=list)


def replay_events(post: Post, events: Sequence[Event],
                  on_event: Callable[[Event, dict], None] | None = None) -> ReplayResult:
    """Post ``events`` in order; ``on_event(event, response)`` after each (progress bars).

    Raises:
        ReplayError: at the first refused event; the events before it stay recorded, and
            replaying again skips them (same event ids).
    """
    result = ReplayResult()
    for event in events:
        _, out = post(event.body())
        if out.get("duplicate"):
            result.duplicates += 1
        else:
            result.recorded += 1
        result.turn_ids.append(out["turn_id"])
        if on_event is not None:
            on_event(event, out)
    return result


__all__ = ["Event", "Post", "ReplayError", "ReplayResult", "conversation_events",
           "http_poster", "open_session", "replay_events"]
