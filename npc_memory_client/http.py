"""The dialogue server over HTTP (httpx), with typed answers (pydantic).

Every call sends ``Authorization: Bearer <api_key>``. A non-2xx answer raises
:class:`ApiError` (``status``, ``detail`` from the server's JSON); 401 is
:class:`Unauthorized`. Transport errors are httpx's (``httpx.HTTPError``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """The server answered an error: ``status`` (HTTP code) and ``detail`` (its message)."""

    def __init__(self, status: int, detail: Any, method: str, path: str):
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Unauthorized(ApiError):
    """401: the API key is missing or not one of the server's ``API_KEYS``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer servers may add fields


class Character(_Model):
    """A character of the session's world: its entry key (``npc_id``) and name."""

    npc_id: str
    name: str


class Session(_Model):
    """``POST /v1/sessions``: the new session and the world's characters."""

    session_id: str
    world: str
    world_id: int
    characters: list[Character]


class TurnReply(_Model):
    """``POST /v1/sessions/{id}/turns``: the NPC's reply; ``latency_ms`` is the server's.
    ``ttft_ms`` (model call to first token) is set on streamed turns only. ``canon`` is the
    server's lore-guard check ``{checked, contradiction, by, regenerated, resolved}``, None
    when its guard is off. ``adapter`` is the archetype's LoRA adapter that answered (None: the
    base model) and ``route`` why that model was chosen."""

    turn_id: str
    seq: int
    npc_id: str
    npc_name: str
    npc_text: str
    retrieved: list[str]
    evidence: list[str] = []
    model: str
    latency_ms: float
    ttft_ms: float | None = None
    canon: dict | None = None
    adapter: str | None = None
    route: str = ""


class Token(_Model):
    """A streamed turn's ``token`` event: the next piece of the NPC's reply."""

    text: str


StreamEvent = Token | TurnReply
"""What :meth:`NpcMemoryClient.turn_stream` yields: tokens, then the final reply."""


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Server-Sent Events from the lines of a ``text/event-stream`` body (line ends already
    removed, as ``httpx.Response.iter_lines`` gives them): ``(event, data)`` per event, as
    the HTML standard parses them: a blank line ends an event; ``:`` starts a comment (the
    server's keep-alive pings); ``field: value`` loses one space after the colon; ``data``
    lines are joined with newlines; the event name defaults to ``message``; an event without
    data is not dispatched; ``id`` and ``retry`` are ignored."""
    event, data = "", []
    for line in lines:
        if line == "":
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    # an event not ended by a blank line (a body cut short) is dropped, as the standard says


class Event(_Model):
    """``POST /v1/sessions/{id}/events``: the recorded turn; ``duplicate`` is true when the
    ``event_id`` had been posted before (nothing new recorded). ``npc_id``/``npc_name`` are
    None for a narration or game event addressed to no NPC; ``witnesses`` are the lore
    entry ids of the characters who witnessed it."""

    turn_id: str
    seq: int
    kind: str = "speech"
    npc_id: str | None
    npc_name: str | None
    speaker: str
    text: str
    npc_text: str | None
    witnesses: list[int] = []
    created_at: float
    duplicate: bool


class DocumentHit(_Model):
    """A composite document (base lore and the session's note) as ``/search`` and
    ``/memory`` answer it; ``turn_ids`` are the turns the session note folds in ([] if
    unknown); ``rank``/``score`` are 0 in ``/memory``."""

    kind: Literal["document"] = "document"
    rank: int
    score: float
    text: str
    lore_entry_id: int
    key: str | None
    title: str | None
    scope: str
    turn_ids: list[str] = []


class EvidenceHit(_Model):
    """An evidence item: one utterance of the session, ``text`` = ``"Speaker: utterance"``;
    ``part`` 0 is what was said to the NPC, 1 the NPC's reply; ``created_at`` unix seconds,
    ``game_minutes`` the session's in-game clock at the turn; ``turn_kind`` the turn's kind
    (speech, narration, game, npc_exchange, told), ``witnesses`` the lore entry ids of the
    characters who witnessed it."""

    kind: Literal["evidence"] = "evidence"
    rank: int
    score: float
    text: str
    turn_id: str
    seq: int
    part: int
    speaker: str
    event_id: str | None = None
    created_at: float
    game_minutes: int
    turn_kind: str = "speech"
    witnesses: list[int] = []


SearchHit = Annotated[DocumentHit | EvidenceHit, Field(discriminator="kind")]
"""One hit of ``/search``: a document or an evidence item (by ``kind``)."""


class SearchResult(_Model):
    """``GET /v1/sessions/{id}/search``: the query and the fused hits in rank order."""

    query: str
    hits: list[SearchHit]


class Memory(_Model):
    """``GET /v1/sessions/{id}/memory``: every composite document visible to the session and
    every evidence item of the session."""

    documents: list[DocumentHit]
    evidence: list[EvidenceHit]


class Tick(_Model):
    """``POST /v1/sessions/{id}/tick``: the tick id and the task that runs it."""

    tick_id: str
    task_id: str


class Reanalysis(_Model):
    """``POST /v1/sessions/{id}/turns/{turn_id}/analyze``: where the turn was found and the
    analysis task sent (``task_name``, ``task_id``)."""

    session_id: str
    turn_id: str
    source: str
    task_name: str = ""
    task_id: str


class Fork(_Model):
    """``POST /v1/sessions/{id}/fork``: the new session (``session_id``) made from
    ``forked_from`` as of turn ``at_turn`` (number ``at_seq``), and what was copied
    (``counts``: turns, notes, entities, card_events, evidence_vectors, summary)."""

    session_id: str
    forked_from: str
    at_turn: str
    at_seq: int
    world_id: int
    player_name: str
    game_minutes: int
    counts: dict[str, int]


class Rollback(_Model):
    """``POST /v1/sessions/{id}/rollback``: the turn kept (``to_turn``, number ``to_seq``), the
    session's ``epoch`` after it, the turns undone and what was undone (``counts``: turns,
    note_revisions, entities, card_events, summaries, evidence_items, tasks_cancelled)."""

    session_id: str
    to_turn: str
    to_seq: int
    epoch: int
    rollback_id: int
    turn_ids: list[str]
    counts: dict[str, int]


class WorldTick(_Model):
    """``POST /v1/world/tick`` / ``/v1/worlds/{key}/tick``: the world tick task sent; ``world``
    and ``world_id`` are None when every world ticks."""

    world: str | None
    world_id: int | None = None
    task_name: str = ""
    task_id: str
    tick_id: str


class NpcMemoryClient:
    """Client of one dialogue server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: one of the server's ``API_KEYS`` (None: send no key, for ``API_AUTH=off``).
        timeout: seconds per request (a turn waits for the model: allow tens of seconds).
        transport: an httpx transport (tests; e.g. an ASGI app).
    """

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> NpcMemoryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        res = self._http.request(method, path, **kwargs)
        if res.status_code >= 400:
            self._raise(res, method, path)
        return res.json()

    @staticmethod
    def _raise(res: httpx.Response, method: str, path: str) -> None:
        try:
            detail = res.json().get("detail", res.text)
        except ValueError:
            detail = res.text
        cls = Unauthorized if res.status_code == 401 else ApiError
        raise cls(res.status_code, detail, method, path)

    def open_session(self, world: str, player_name: str = "player") -> Session:
        """Open a session on an imported world (``world`` is its key).

        Raises:
            ApiError: 404 unknown world, 422 invalid input.
        """
        return Session.model_validate(self._call(
            "POST", "/v1/sessions", json={"world": world, "player_name": player_name}))

    def turn(self, session_id: str, npc_id: str, player_text: str) -> TurnReply:
        """Play one turn: the NPC ``npc_id`` (its entry key) answers ``player_text``.

        Raises:
            ApiError: 404 unknown session or NPC, 422 not a character / invalid input,
                503 model server, Redis or broker unavailable (retry later).
        """
        return TurnReply.model_validate(self._call(
            "POST", f"/v1/sessions/{session_id}/turns",
            json={"npc_id": npc_id, "player_text": player_text}))

    def turn_stream(self, session_id: str, npc_id: str, player_text: str) -> Iterator[StreamEvent]:
        """Play one turn with the reply streamed: yields a :class:`Token` per piece of the
        reply as the model generates it (their texts joined are the reply's ``npc_text``),
        then the :class:`TurnReply` (with ``ttft_ms``). The request is sent when iteration
        starts; stop iterating (or close the generator) to hang up: the server then records
        the turn with what it generated so far.

        Raises:
            ApiError: before the stream: as :meth:`turn` (404, 422, 503 model unavailable);
                during it: the ``error`` event's ``status`` and ``detail`` (503: the model
                failed mid-way and the turn was not recorded, or recording failed).
            httpx.HTTPError: transport failure, or the stream ended without ``done``.
        """
        path = f"/v1/sessions/{session_id}/turns"
        body = {"npc_id": npc_id, "player_text": player_text, "stream": True}
        with self._http.stream("POST", path, json=body,
                               headers={"Accept": "text/event-stream"}) as res:
            if res.status_code >= 400:
                res.read()
                self._raise(res, "POST", path)
            for event, data in sse_events(res.iter_lines()):
                if event == "token":
                    yield Token.model_validate_json(data)
                elif event == "done":
                    yield TurnReply.model_validate_json(data)
                    return
                elif event == "error":
                    err = json.loads(data)
                    raise ApiError(int(err.get("status", 503)), err.get("detail"), "POST", path)
            raise httpx.RemoteProtocolError(f"POST {path}: the stream ended without a reply")

    def post_event(self, session_id: str, npc_id: str | None, text: str, *,
                   speaker: str | None = None, npc_text: str | None = None,
                   event_id: str | None = None, created_at: float | None = None,
                   kind: str = "speech", witnesses: list[str] | None = None,
                   location: str | None = None) -> Event:
        """Record a turn generated elsewhere; it runs through the same memory pipeline.
        Give ``event_id`` when you may retry: the same id is recorded once. ``kind``:
        speech, npc_exchange (``speaker`` an NPC's key), narration or game (``npc_id`` may
        be None); ``witnesses``: entry keys of the characters present; ``location``: the
        entry key of the location where it happens (its occupants witness it too).

        Raises:
            ApiError: 404 unknown session, NPC, witness or location, 422 invalid input, 503 Redis or
                broker down.
        """
        body = {"npc_id": npc_id, "text": text, "speaker": speaker, "npc_text": npc_text,
                "event_id": event_id, "created_at": created_at,
                "kind": None if kind == "speech" else kind, "witnesses": witnesses or None,
                "location": location}
        return Event.model_validate(self._call(
            "POST", f"/v1/sessions/{session_id}/events",
            json={k: v for k, v in body.items() if v is not None}))

    def tick(self, session_id: str) -> Tick:
        """Trigger a world tick for the session now.

        Raises:
            ApiError: 404 unknown session.
        """
        return Tick.model_validate(self._call("POST", f"/v1/sessions/{session_id}/tick"))

    def analyze_turn(self, session_id: str, turn_id: str) -> Reanalysis:
        """Re-analyse a recorded turn (ops); effects it already had are not applied twice.

        Raises:
            ApiError: 404 unknown session or turn, 503 broker or Redis down.
        """
        return Reanalysis.model_validate(self._call(
            "POST", f"/v1/sessions/{session_id}/turns/{turn_id}/analyze"))

    def fork(self, session_id: str, at_turn: str) -> Fork:
        """A new session whose memory is this one's as of turn ``at_turn`` (a save slot);
        the session itself is unchanged.

        Raises:
            ApiError: 404 unknown session or turn, 503 Redis, broker or database down.
        """
        return Fork.model_validate(self._call(
            "POST", f"/v1/sessions/{session_id}/fork", json={"at_turn": at_turn}))

    def rollback(self, session_id: str, to_turn: str) -> Rollback:
        """Undo everything derived from the turns after ``to_turn`` (loading a save); tasks
        still in flight for those turns do not apply afterwards.

        Raises:
            ApiError: 404 unknown session or turn, 503 Redis, broker or database down.
        """
        return Rollback.model_validate(self._call(
            "POST", f"/v1/sessions/{session_id}/rollback", json={"to_turn": to_turn}))

    def tick_world(self, world: str | None = None) -> WorldTick:
        """Run a world tick now for every active session, or those of world key ``world``.

        Raises:
            ApiError: 404 unknown world, 503 broker down.
        """
        path = "/v1/world/tick" if world is None else f"/v1/worlds/{world}/tick"
        return WorldTick.model_validate(self._call("POST", path))

    def search(self, session_id: str, query: str, k: int = 3,
               max_chars: int | None = None,
               npc_id: str | None = None) -> list[DocumentHit | EvidenceHit]:
        """What the session's memory holds for ``query``: composite documents and evidence
        items fused in rank order, at most ``k`` (1..50; 1..200 with ``max_chars``) and,
        with ``max_chars``, within that many characters of ``text``. ``npc_id``: only what
        that NPC witnessed or is public canon (its dialogue's view).

        Raises:
            ApiError: 404 unknown session or NPC, 422 invalid ``query``, ``k`` or
                ``max_chars``.
        """
        params: dict[str, Any] = {"q": query, "k": k}
        if npc_id is not None:
            params["npc_id"] = npc_id
        if max_chars is not None:
            params["max_chars"] = max_chars
        return SearchResult.model_validate(self._call(
            "GET", f"/v1/sessions/{session_id}/search", params=params)).hits

    def memory(self, session_id: str) -> Memory:
        """Everything the session's memory holds (its documents and its evidence).

        Raises:
            ApiError: 404 unknown session.
        """
        return Memory.model_validate(self._call("GET", f"/v1/sessions/{session_id}/memory"))

    def entry(self, session_id: str, key: str) -> dict:
        """An entity as the session sees it (``GET /v1/sessions/{id}/entries/{key}``):
        ``{"lore_entry": {key, title, content, archetype, ...}, "note", "composite_document",
        "revisions"}``.

        Raises:
            ApiError: 404 unknown session or entry.
        """
        return self._call("GET", f"/v1/sessions/{session_id}/entries/{key}")

    def cards(self, session_id: str, npc_id: str) -> dict:
        """An NPC's memory cards in the session (``GET /v1/sessions/{id}/cards/{npc_id}``):
        its relationship and quest cards as the dialogue prompt sees them.

        Raises:
            ApiError: 404 unknown session or NPC.
        """
        return self._call("GET", f"/v1/sessions/{session_id}/cards/{npc_id}")

    def ready(self) -> dict:
        """``GET /readyz`` without raising: ``{"ready": bool, "failed": [...], "checks"}``."""
        res = self._http.get("/readyz")
        return res.json()
